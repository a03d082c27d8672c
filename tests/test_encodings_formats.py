"""AIMET encodings JSON: every version, granularity and dtype, read and bound to a model."""

from __future__ import annotations

import numpy as np
import pytest
from encodings_fixtures import SMALL_NET, encoding_fields, v061, v100, v100_per_block, v200, write
from onnx_builders import GraphBuilder, save, small_net

from qdiverge.encodings.aimet import read_encodings_json
from qdiverge.encodings.bind import bind_encodings
from qdiverge.encodings.load import load_encodings
from qdiverge.loading.model import load_model


@pytest.fixture
def net(tmp_path):
    return load_model(save(small_net(), tmp_path))


def _bound(tmp_path, data, model):
    encset, warnings = bind_encodings(read_encodings_json(write(data, tmp_path)), model)
    return encset, warnings


@pytest.mark.parametrize("writer", [v061, v100, v200])
def test_each_version_gives_the_hand_written_encodings(tmp_path, net, writer):
    encset, _ = _bound(tmp_path, writer(SMALL_NET), net)
    for name, (bw, signed, scales, offsets, is_param) in SMALL_NET.items():
        enc = (encset.params if is_param else encset.activations)[name]
        assert (enc.bitwidth, enc.signed, enc.is_param) == (bw, signed, is_param)
        assert enc.scale.tolist() == scales and enc.offset.tolist() == offsets
    assert encset.params["conv1.weight"].axis == 0  # Conv: output channels on axis 0
    assert encset.params["fc.weight"].axis == 0  # Gemm transB=1: [out, in]
    assert encset.activations["input"].zero_point.tolist() == [136]
    assert encset.params["conv1.weight"].zero_point.tolist() == [0] * 4


def test_three_versions_are_equivalent(tmp_path, net):
    results = [encoding_fields(_bound(tmp_path, w(SMALL_NET), net)[0]) for w in (v061, v100, v200)]
    assert results[0] == results[1] == results[2]


def test_version_is_detected_without_the_key(tmp_path, net):
    for writer, version in ((v061, "0.6.1"), (v100, "1.0.0"), (v200, "2.0.0")):
        data = writer(SMALL_NET)
        del data["version"]
        assert read_encodings_json(write(data, tmp_path)).version == version


def test_061_strings_and_int_offsets(tmp_path):
    data = {
        "activation_encodings": {
            "x": [
                {
                    "bitwidth": 8,
                    "dtype": "int",
                    "is_symmetric": "False",
                    "offset": -3,
                    "scale": 0.5,
                    "min": -1.5,
                    "max": 126.0,
                }
            ]
        },
        "param_encodings": {},
    }
    enc = read_encodings_json(write(data, tmp_path)).activations["x"]
    assert (enc.signed, enc.offset.tolist(), enc.min.tolist(), enc.max.tolist()) == (
        False,
        [-3.0],
        [-1.5],
        [126.0],
    )


def test_fp16_entries(tmp_path):
    data = {
        "version": "0.6.1",
        "activation_encodings": {"x": [{"bitwidth": 16, "dtype": "float"}]},
        "param_encodings": {},
    }
    assert read_encodings_json(write(data, tmp_path)).activations["x"].is_float
    data = {
        "version": "1.0.0",
        "activation_encodings": [{"name": "y", "bw": 16, "dtype": "FLOAT", "enc_type": "PER_TENSOR"}],
        "param_encodings": [],
    }
    enc = read_encodings_json(write(data, tmp_path)).activations["y"]
    assert enc.is_float and enc.bitwidth == 16


def test_strict_symmetric_100_and_200_agree(tmp_path):
    v1 = {
        "version": "1.0.0",
        "param_encodings": [],
        "activation_encodings": [
            {
                "name": "x",
                "bw": 8,
                "dtype": "INT",
                "enc_type": "PER_TENSOR",
                "is_sym": True,
                "scale": [0.5],
                "offset": [-127.0],
            }
        ],
    }
    v2 = {
        "version": "2.0.0",
        "encodings": [{"name": "x", "output_dtype": "int8", "y_scale": 0.5, "y_zero_point": -1}],
    }
    a = read_encodings_json(write(v1, tmp_path, "a")).activations["x"]
    b = read_encodings_json(write(v2, tmp_path, "b")).activations["x"]
    for enc in (a, b):
        assert (
            enc.signed
            and enc.symmetric
            and enc.offset.tolist() == [-127.0]
            and enc.zero_point.tolist() == [-1]
        )
        # the sim that loads a strict file clamps at [-127, +128] steps (aimet_formats.md §3.5)
        assert enc.min.tolist() == [-63.5] and enc.max.tolist() == [64.0]


def _block_net(trans_b: int):
    g = GraphBuilder()
    g.output(g.gemm(g.input("input", (1, 256)), "fc", 256, 2, trans_b=trans_b))
    return g.build()


@pytest.mark.parametrize("trans_b", [1, 0])
def test_blockwise_100_and_200_agree(tmp_path, trans_b):
    model = load_model(save(_block_net(trans_b), tmp_path))
    scales = [[0.01, 0.02, 0.03, 0.04], [0.05, 0.06, 0.07, 0.08]]  # (out channel, block)
    v1 = v100_per_block("fc.weight", [s for row in scales for s in row], 64)
    onnx_layout = scales if trans_b else np.asarray(scales).T.tolist()  # weight [out,in] or [in,out]
    v2 = {
        "version": "2.0.0",
        "encodings": [
            {
                "name": "fc.weight",
                "output_dtype": "int4",
                "y_scale": onnx_layout,
                "axis": 1 if trans_b else 0,
                "block_size": 64,
            }
        ],
    }
    a = bind_encodings(read_encodings_json(write(v1, tmp_path, "a")), model)[0].params["fc.weight"]
    b = bind_encodings(read_encodings_json(write(v2, tmp_path, "b")), model)[0].params["fc.weight"]
    for enc in (a, b):
        assert enc.scale.tolist() == scales and enc.offset.tolist() == [[-8.0] * 4] * 2
        assert (enc.axis, enc.block_axis, enc.block_size, enc.bitwidth) == ((0, 1) if trans_b else (1, 0)) + (
            64,
            4,
        )


def test_lpbq_100_and_200_agree(tmp_path):
    model = load_model(save(_block_net(1), tmp_path))
    floats, ints = [0.002, 0.001], [[16, 16, 12, 16], [16, 14, 16, 12]]
    v1 = {
        "version": "1.0.0",
        "activation_encodings": [],
        "param_encodings": [
            {
                "name": "fc.weight",
                "bw": 8,
                "compressed_bw": 4,
                "dtype": "INT",
                "enc_type": "LPBQ",
                "is_sym": True,
                "block_size": 64,
                "scale": floats,
                "offset": [-128, -128],
                "per_block_int_scale": [i for row in ints for i in row],
            }
        ],
    }
    v2 = {
        "version": "2.0.0",
        "encodings": [
            {
                "name": "fc.weight",
                "output_dtype": "int4",
                "axis": 1,
                "block_size": 64,
                "per_block_int_scale": ints,
                "per_channel_float_scale": [[f] for f in floats],
            }
        ],
    }
    expected = [[i * f for i in row] for row, f in zip(ints, floats, strict=True)]
    for data in (v1, v2):
        enc = bind_encodings(read_encodings_json(write(data, tmp_path)), model)[0].params["fc.weight"]
        assert enc.scale.tolist() == expected and enc.offset.tolist() == [[-8.0] * 4] * 2
        assert (enc.bitwidth, enc.signed, enc.qmin, enc.qmax) == (4, True, -8, 7)


def test_zero_point_shift(tmp_path):
    data = v100({"x": (8, False, [0.5], [-10], False)})
    data["activation_encodings"][0]["zero_point_shift"] = [0.5]
    assert read_encodings_json(write(data, tmp_path)).activations["x"].offset.tolist() == [-9.5]


def test_200_int32_bias_derived_and_real_data_movement_quantizers(tmp_path, net):
    data = v200(SMALL_NET)
    data["encodings"] += [
        {"name": "conv1.bias", "output_dtype": "int32", "y_scale": [1e-4, 2e-4, 3e-4, 4e-4], "axis": 0},
        {"name": "flat_out", "output_dtype": "uint8", "y_scale": 0.0625},  # copies relu1_out: derived
    ]
    encset, _ = _bound(tmp_path, data, net)
    bias = encset.int32_bias["conv1.bias"]
    assert (bias.bitwidth, bias.signed, bias.zero_point.tolist(), bias.axis) == (32, True, [0] * 4, 0)
    assert "conv1.bias" not in encset.params and set(encset.derived) == {"flat_out"}
    assert encset.params.keys() == {"conv1.weight", "fc.weight"}
    assert "addconst" in encset.activations  # a constant consumed by Add is an activation
    data["encodings"][-1]["y_scale"] = 0.125  # a different grid: the sim had a quantizer there
    encset, _ = _bound(tmp_path, data, net)
    assert "flat_out" in encset.activations and not encset.derived


def test_missing_encodings_are_warned(tmp_path, net):
    encs = {k: v for k, v in SMALL_NET.items() if k != "fc_out"}
    _, warnings = _bound(tmp_path, v100(encs), net)
    # conv1_out sits inside the Conv+Relu supergroup; excluding it is the caller's job
    assert [w.split()[0] for w in warnings] == ["'conv1_out'", "'fc_out'"]
    assert "Gemm 'fc'" in warnings[1]


def test_load_encodings_json_path(tmp_path, net):
    model, encset, warnings = load_encodings(write(v100(SMALL_NET), tmp_path), net)
    assert model is net and encset.version == "1.0.0" and encset.sha256
    assert warnings == ["'conv1_out' (output of Conv 'conv1') has no encoding"]
