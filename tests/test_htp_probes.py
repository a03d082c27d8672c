"""Measured facts about Qualcomm's HTP backend (onnxruntime-qnn), asserted so a regression fails.

Each assertion compares HTP's integer codes with an independent exact rational model (``probes.arith``).
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest

pytest.importorskip("onnxruntime_qnn")

from qdiverge.engines.qnn_htp import QnnHtpEngine, check_capture_neutral, make_htp_session
from qdiverge.errors import InputError
from qdiverge.probes import arith, bias, conv, eltwise, fusion, inputs, lut, rescale
from qdiverge.probes.graph import QdqGraph, QParams

pytestmark = pytest.mark.htp


@pytest.fixture(scope="module")
def ties():
    return {r.name.split(": ", 1)[1]: r for r in conv.probe_conv_ties(73)}


def test_conv_requant_ties_round_half_up_when_signedness_is_kept(ties):
    for label in (
        "int8 in, int8 out zp 0",
        "uint8 in zp 128, uint8 out zp 128",
        "uint8 in zp 128, uint8 out zp 37, M=1/2",
    ):
        result = ties[label]
        assert result.compare("exact/RHU").match == 1.0, label
        assert result.compare("q12 prescaled/RHU").match == 1.0, label  # the emulator's htp form
        assert result.compare("exact/RNE").match < 1.0, label  # the probe really hits ties


def test_conv_requant_through_float16_when_signedness_changes(ties):
    for label in ("int8 in, uint8 out zp 127", "uint8 in zp 128, int8 out zp 0"):
        result = ties[label]
        assert result.compare("fp16 product/RHAZ").match == 1.0, label
        assert result.compare("exact/RHU").match < 0.99, label


def test_bias_requantized_at_s_in_s_w_with_ties_to_even():
    half, _, double, _ = conv.probe_bias(73)
    assert half.compare("honoured/RNE").match == 1.0
    assert half.compare("honoured/RHU").match < 0.8
    assert double.compare("honoured/RNE").match == 1.0
    assert double.compare("declared scale ignored").match < 0.6


def test_8bit_conv_requant_is_a_12_bit_multiplier_on_a_shifted_accumulator():
    # (2*floor(acc/2^g) + 1) * mq / 2^16, mq = 12-bit mantissa of M*2^g in [1/16, 1/8): every code
    for result in conv.probe_multiplier(73):
        assert result.compare("q12 prescaled/RHU").match == 1.0, result.name
        assert result.compare("exact/RHU").match < 0.99, result.name
    chans = len(conv.PRESCALE_M)
    for result in conv.probe_prescale(73):
        got = result.got.reshape(chans, -1)
        want = result.candidates["q12 prescaled/RHU"].reshape(chans, -1)
        # channel 0: g = 4, no bias; channel 2: mq rounds up to 2^12, bias -1000 (a multiple of 2^(g-1))
        np.testing.assert_array_equal(got[[0, 2]], want[[0, 2]], err_msg=result.name)
        assert result.compare("exact/RHU").match < 0.995, result.name
        assert result.compare("q12 prescaled/RHU").match > 0.995, result.name  # the rest: bias (open)


def test_8bit_conv_bias_depends_on_the_whole_bias_tensor():
    # each channel is q12_prescaled(acc + c) for one integer c (the effective bias), which is the declared
    # bias or one step toward zero; which channels move depends on the other channels' biases
    acc, m, out, _ = bias.bias_window()
    effective = []
    for result in bias.probe_bias_tensor(73):
        declared = [*bias.SMALL_BIASES, int(result.name.rsplit(" ", 1)[1])]
        got = result.got.reshape(len(declared), -1)
        eff = bias.effective_biases(got, acc, m, out, np.array(declared))
        assert all(len(c) == 1 for c in eff), result.name
        for b, (c,) in zip(declared, eff, strict=True):
            assert c == b or (c == b - np.sign(b) and b != 0), (result.name, b, c)
        assert result.compare("q12 prescaled, declared bias").match < 1.0, result.name
        effective.append([c for (c,) in eff[: len(bias.SMALL_BIASES)]])
    alone, beside_12345 = effective
    assert alone != beside_12345  # same channels, same biases: another channel's bias moved them
    assert alone[bias.SMALL_BIASES.index(1)] == 1 and beside_12345[bias.SMALL_BIASES.index(1)] == 0


def _relu_conv() -> onnx.ModelProto:
    g = QdqGraph()
    x = g.code_input("x", (1, 4, 4, 4), QParams(0.05, 128, "uint8"))
    w = g.const("w", np.arange(-8, 8, dtype=np.int8).reshape(4, 4, 1, 1), QParams(0.02, 0, "int8"))
    c = g.requant(g.op("Conv", [x, w], "c"), QParams(0.01, 128, "uint8"))
    g.output(g.op("Relu", [c], "r"), QParams(0.01, 0, "uint8"))
    return g.model()


def test_engine_exposes_codes_and_checks_neutrality():
    engine = QnnHtpEngine(_relu_conv())
    feeds = {"x": np.random.default_rng(0).integers(0, 256, (1, 4, 4, 4)).astype(np.uint8)}
    result = engine.run_quantized(feeds, ["c"])
    assert result.codes["c"].dtype == np.uint8
    np.testing.assert_array_equal(
        result.values["c"], (result.codes["c"].astype(np.float32) - 128) * np.float32(0.01)
    )
    assert isinstance(bool(check_capture_neutral(engine, feeds, ["c"])), bool)
    with pytest.raises(InputError, match="no QuantizeLinear"):
        engine.run(feeds, ["x"])


def test_cpu_fallback_is_disabled():
    g = QdqGraph()
    x = g.float_input("x", (4, 4))
    g.outputs.append(onnx.helper.make_tensor_value_info(g.op("Det", [x], "d"), onnx.TensorProto.FLOAT, None))
    with pytest.raises(InputError, match="assigned to the default CPU EP"):
        make_htp_session(g.model())


def _by_name(results):
    return {r.name: r for r in results}


@pytest.fixture(scope="module")
def luts():
    return _by_name(lut.probe_luts(73))


def test_8bit_activations_are_tables_of_f_rounded_half_even(luts):
    for name, result in luts.items():
        if result.question == "rejected":
            assert name.startswith("Erf"), name  # standalone Erf is not taken by HTP
            continue
        best = "exact/RNE" if "exact/RNE" in result.candidates else "f64 y/s/RNE"
        if name.startswith("HardSigmoid"):
            best = "f32 y/s/RNE"  # alpha*x + beta evaluated in float32
        assert result.compare(best).match == 1.0, name
    dyadic = luts["HardSwish u8 dyadic 2^-5 -> 2^-4 zp 8"]
    assert dyadic.compare("exact/RHU").match < 1.0  # ties with an even floor are hit: not half up
    assert dyadic.compare("exact/RHAZ").match < 1.0


def test_a16_hardsigmoid_ignores_its_output_encoding():
    gate = lut.probe_act(
        lut.ACTS["HardSigmoid"],
        lut.range_qparams(-6.4, 6.35, "uint16"),
        QParams(float(np.float32(0.588 / 65535)), 0, "uint16"),
        73,
        "gate",
    )
    assert gate.compare("fixed scale 1/65536/RNE").match > 0.999
    assert gate.compare("exact/RNE").match < 0.6


@pytest.fixture(scope="module")
def elt():
    return _by_name(eltwise.probe_eltwise(73))


def test_eltwise_ties_round_half_up_and_errors_stay_near_ties(elt):
    for op in ("Add", "Sub", "Mul"):
        dyadic = elt[f"{op} dyadic"]
        assert dyadic.compare("exact/RHU").match == 1.0, op
        assert dyadic.compare("exact/RNE").match < 1.0, op
        mixed = elt[f"{op} mixed"].compare("exact/RHU")
        assert mixed.max_diff == 1 and mixed.widest < 0.02, op
    mul = elt["Mul mixed"]
    lo, hi = arith.offset_bounds(mul.got, mul.exact_lsb, eltwise.ENCODINGS["mixed"][2]["Mul"])
    assert 0 < lo < hi < 0.01  # Mul: one small constant offset explains every code


@pytest.fixture(scope="module")
def resc():
    return _by_name(rescale.probe_rescale(73))


def test_rescale_ops(resc):
    expect = {
        "Concat dyadic": "exact/RHU",
        "AveragePool 2x2 s_in 0.0625 -> s_out 0.0625": "exact/RHU",
        "GlobalAveragePool 7x7 mixed": "exact/RHU",
        "ReduceMean 7x7 mixed": "exact/RHU",
        "MaxPool 1x2 dyadic": "exact/RHAZ",
        "Clip [0, 2.5] s_in 0.0625": "exact/RNE",
        "Resize nearest same enc": "exact/RNE",
        "Resize linear same enc": "exact/RNE",
    }
    for name, cand in expect.items():
        assert resc[name].compare(cand).match == 1.0, name
    assert resc["MaxPool 1x2 dyadic"].compare("exact/RHU").match < 1.0
    assert resc["Clip [0, 2.5] s_in 0.0625"].compare("exact/RHU").match < 1.0


def test_conv_activation_fusion():
    res = _by_name(fusion.probe_fusion(73))
    for name in ("1x1 conv -> HardSwish", "dw 3x3 stride 1 -> HardSwish", "1x1 conv -> Relu"):
        assert res[name].compare("fused/RNE").match > 0.98, name
        assert res[name].compare("unfused (conv RHU, then table RNE)").match < 0.9, name
    assert res["dw 3x3 stride 2 -> HardSwish"].compare("unfused (conv RHU, then table RNE)").match == 1.0
    assert res["dw 3x3 stride 2 -> Relu"].compare("fused/RNE").match == 1.0


def test_graph_input_quantization():
    res = _by_name(inputs.probe_input_quant(73))
    for label in ("uint8 s=0.0213 zp 100", "uint8 s=2^-4 zp 128", "int8 s=0.0173 zp 0"):
        result = res[f"input quantize {label}"]
        assert result.compare("fp16(x*f32(1/s))/RHAZ").match == 1.0, label
        assert result.compare("f32 y/s/RNE").match < 0.97, label  # ONNX QuantizeLinear differs
    wide = res["input quantize uint16 s=3.1e-4 zp 30000"]
    assert wide.compare("x*f32(1/s) unrounded/RNE").match == 1.0


def test_depthwise_per_channel_has_no_scale_clamp():
    (result,) = conv.probe_depthwise(73)
    exact = result.compare("exact per-channel/RHU")
    assert exact.match > 0.97 and exact.max_diff == 1
    assert result.compare("scales clamped to s_max/1024/RHU").match < 0.8
    want = result.candidates["exact per-channel/RHU"].reshape(10, -1)
    got = result.got.reshape(10, -1)
    np.testing.assert_array_equal(got[[0, 1, 6]], want[[0, 1, 6]])  # tiny and dead channels: bias exact
