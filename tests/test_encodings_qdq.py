"""QDQ models: JSON -> write_qdq_model -> read back gives the same encodings and the same float graph."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from encodings_fixtures import SMALL_NET, encoding_fields, v100, v200, write
from onnx import numpy_helper
from onnx_builders import GraphBuilder, save, small_net

from qdiverge.encodings.aimet import read_encodings_json
from qdiverge.encodings.bind import bind_encodings
from qdiverge.encodings.load import load_encodings
from qdiverge.encodings.qdq import read_qdq_model
from qdiverge.encodings.qdq_writer import write_qdq_model
from qdiverge.engines.sim import sim_engine
from qdiverge.errors import InputError
from qdiverge.loading.model import load_model
from qdiverge.quant import aimet_qdq


def _bound(tmp_path, model, data):
    return bind_encodings(read_encodings_json(write(data, tmp_path)), model)[0]


def _f32(encset):
    """What the sim uses: QDQ models store float32 scales."""
    return {
        n: (
            e.scale.astype(np.float32).tolist(),
            e.offset.tolist(),
            e.axis,
            e.block_axis,
            e.bitwidth,
            e.signed,
        )
        for n, e in {**encset.activations, **encset.params}.items()
    }


def _graph(proto):
    g = proto.graph
    nodes = [
        (n.op_type, n.name, list(n.input), list(n.output), sorted(a.SerializeToString() for a in n.attribute))
        for n in g.node
    ]
    inits = {t.name: numpy_helper.to_array(t) for t in g.initializer}
    return nodes, inits, [i.name for i in g.input], [o.name for o in g.output]


def _assert_same_graph(a, b):
    na, ia, ina, outa = _graph(a)
    nb, ib, inb, outb = _graph(b)
    assert (na, ina, outa) == (nb, inb, outb)
    assert ia.keys() == ib.keys()
    for name in ia:
        assert ia[name].dtype == ib[name].dtype and np.array_equal(ia[name], ib[name]), name


def _round_trip(tmp_path, model, encset, **kwargs):
    path = tmp_path / "qdq.onnx"
    write_qdq_model(model, encset, path, **kwargs)
    qdq = load_model(path)
    float_model, back, warnings = load_encodings(None, qdq)
    return float_model, back, warnings, path


@pytest.mark.parametrize("writer", [v100, v200])
def test_json_qdq_round_trip(tmp_path, writer):
    model = load_model(save(small_net(), tmp_path))
    data = writer(SMALL_NET)
    if writer is v200:  # a derived data-movement entry survives the trip as derived
        data["encodings"].append({"name": "flat_out", "output_dtype": "uint8", "y_scale": 0.0625})
    encset = _bound(tmp_path, model, data)
    float_model, back, _, _ = _round_trip(tmp_path, model, encset)
    assert encoding_fields(back) == encoding_fields(encset)
    _assert_same_graph(float_model.proto, model.proto)


def test_written_model_runs_on_onnxruntime_close_to_the_sim(tmp_path):
    model = load_model(save(small_net(), tmp_path))
    encset = _bound(tmp_path, model, v100(SMALL_NET))
    proto = write_qdq_model(model, encset, int_weights=True)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # literal Q/DQ, no fusion
    session = ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(1).uniform(-3, 3, (1, 3, 8, 8)).astype(np.float32)
    ours = session.run(["add_out"], {"input": x})[0]
    sim = sim_engine(model, encset).run({"input": x})["add_out"]
    # ONNX rounds ties to even, AIMET away from zero: allow one output step at a tie, nothing more
    step = SMALL_NET["add_out"][2][0]
    assert np.max(np.abs(ours - sim)) <= step


def test_int_weights_hold_the_sims_weights(tmp_path):
    model = load_model(save(small_net(), tmp_path))
    encset = _bound(tmp_path, model, v100(SMALL_NET))
    float_model, back, _, path = _round_trip(tmp_path, model, encset, int_weights=True)
    stored = {t.name: t.data_type for t in onnx.load(str(path)).graph.initializer}
    assert stored["conv1.weight_quantized"] == onnx.TensorProto.INT8
    assert encoding_fields(back) == encoding_fields(encset)
    for name in ("conv1.weight", "fc.weight"):
        expected = aimet_qdq(model.initializers[name], encset.params[name])
        assert np.array_equal(float_model.initializers[name], expected)


def test_int32_bias_at_input_times_weight_scale(tmp_path):
    model = load_model(save(small_net(), tmp_path))
    encset = _bound(tmp_path, model, v100(SMALL_NET))
    float_model, back, _, _ = _round_trip(tmp_path, model, encset, int32_bias=True)
    for bias, weight, src in (("conv1.bias", "conv1.weight", "input"), ("fc.bias", "fc.weight", "relu1_out")):
        s_in = SMALL_NET[src][2][0]  # fc reads flat_out, a Reshape of relu1_out: same grid
        expected = np.float32(np.asarray(SMALL_NET[weight][2]) * s_in)
        enc = back.int32_bias[bias]
        assert np.array_equal(enc.scale.astype(np.float32), expected) and not enc.zero_point.any()
        codes = np.round(model.initializers[bias].astype(np.float64) / enc.scale.astype(np.float32))
        assert np.array_equal(float_model.initializers[bias], (codes * expected).astype(np.float32))


def test_blockwise_int4_and_16bit_round_trip(tmp_path):
    g = GraphBuilder()
    g.output(g.gemm(g.input("input", (1, 256)), "fc", 256, 2, trans_b=0))
    model = load_model(save(g.build(opset=21), tmp_path))
    data = {
        "version": "2.0.0",
        "encodings": [
            {
                "name": "fc.weight",
                "output_dtype": "int4",
                "axis": 0,
                "block_size": 64,
                "y_scale": [[0.01, 0.02], [0.03, 0.04], [0.05, 0.06], [0.07, 0.08]],
            },
            {"name": "input", "output_dtype": "uint16", "y_scale": 0.001, "y_zero_point": 30000},
            {"name": "fc_out", "output_dtype": "int16", "y_scale": 0.002},
        ],
    }
    encset = _bound(tmp_path, model, data)
    for int_weights in (False, True):
        _, back, _, _ = _round_trip(tmp_path, model, encset, int_weights=int_weights)
        assert _f32(back) == _f32(encset)
    proto = write_qdq_model(model, encset)
    ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {"input": np.ones((1, 256), np.float32)}
    )


def test_16bit_on_old_opset_uses_the_contrib_domain(tmp_path):
    model = load_model(save(small_net(), tmp_path))
    encset = _bound(tmp_path, model, v100(SMALL_NET))
    proto = write_qdq_model(model, encset)
    assert {n.domain for n in proto.graph.node if n.name.startswith("QcQuantizeOp_add_out")} == {
        "com.microsoft"
    }
    back_proto, _ = read_qdq_model(proto)
    assert all(o.domain != "com.microsoft" for o in back_proto.opset_import)


def test_fp16_round_trip(tmp_path):
    model = load_model(save(small_net(), tmp_path))
    data = v100({k: v for k, v in SMALL_NET.items() if k != "fc_out"})
    data["activation_encodings"].append(
        {"name": "fc_out", "bw": 16, "dtype": "FLOAT", "enc_type": "PER_TENSOR"}
    )
    encset = _bound(tmp_path, model, data)
    float_model, back, _, _ = _round_trip(tmp_path, model, encset)
    assert back.activations["fc_out"].is_float and encoding_fields(back) == encoding_fields(encset)
    _assert_same_graph(float_model.proto, model.proto)


def test_qdq_model_with_mismatched_q_and_dq(tmp_path):
    model = load_model(save(small_net(), tmp_path))
    encset = _bound(tmp_path, model, v100(SMALL_NET))
    proto = write_qdq_model(model, encset)
    q = next(n for n in proto.graph.node if n.op_type == "QuantizeLinear")
    scale = next(t for t in proto.graph.initializer if t.name == q.input[1])
    q.input[1] = "other_scale"
    proto.graph.initializer.append(numpy_helper.from_array(numpy_helper.to_array(scale) * 2, "other_scale"))
    with pytest.raises(InputError, match="disagree on scale/zero point"):
        read_qdq_model(proto, "m.onnx")


@pytest.mark.aimet
def test_reads_aimets_own_qdq_export(tmp_path):
    """aimet-onnx's encodings_to_onnx_qdq is the oracle for the AIMET naming and conventions."""
    quantsim = pytest.importorskip("aimet_onnx.quantsim")
    model = load_model(save(small_net(), tmp_path))
    path = write(v100(SMALL_NET), tmp_path)
    expected = bind_encodings(read_encodings_json(path), model)[0]
    qdq = quantsim.encodings_to_onnx_qdq(
        onnx.load(str(tmp_path / "model.onnx")), str(path), force_activation_as=None
    )
    proto, encset = read_qdq_model(qdq, "aimet")
    back = bind_encodings(encset, load_model(save(proto, tmp_path, "float.onnx")))[0]
    assert _f32(back) == _f32(expected)
    _assert_same_graph(proto, model.proto)
