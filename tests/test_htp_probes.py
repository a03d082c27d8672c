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
from qdiverge.probes import conv
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


def test_multiplier_is_far_finer_than_q15():
    narrow, _ = conv.probe_multiplier(73)
    assert narrow.compare("exact/RHU").match > 0.98
    assert narrow.compare("exact/RHU").widest < 1e-3
    assert narrow.compare("q15 mantissa/RHU").match < narrow.compare("exact/RHU").match


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
