"""The sim graph's quantize-dequantize (ONNX ops on onnxruntime) equals AIMET's kernel (``quant.aimet_qdq``)
on the values where rounding is delicate: exact ties, values just below a tie, NaN, infinities."""

from __future__ import annotations

import numpy as np
import pytest
from onnx_builders import GraphBuilder, save

from qdiverge.encodings.schema import EncodingSet, make_encoding
from qdiverge.engines.sim import sim_engine
from qdiverge.loading.model import load_model
from qdiverge.quant import aimet_qdq


def _delicate_values(scale: float, offset: float, steps: int) -> np.ndarray:
    k = np.arange(-2, steps + 2, dtype=np.float64)
    ties = (k + offset + 0.5) * scale
    below = np.nextafter(ties.astype(np.float32), np.float32(-np.inf))
    above = np.nextafter(ties.astype(np.float32), np.float32(np.inf))
    # v = x / s - o just below 0.5: the float32 sum v + 0.5 would round up to 1
    near_half = np.float32((offset + 0.5) * scale) * (
        1 - np.float32(2.0**-24) * np.arange(1, 6, dtype=np.float32)
    )
    special = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, 1e30, -1e30], dtype=np.float32)
    return np.concatenate([ties.astype(np.float32), below, above, near_half, special]).astype(np.float32)


@pytest.mark.parametrize(
    ("scale", "offset", "bitwidth", "signed"),
    [
        (2.0**-6, -128.0, 8, True),
        (0.0372, -97.0, 8, False),
        (1 / 255, 0.0, 8, False),
        (3e-4, -32768.0, 16, True),
    ],
)
def test_sim_qdq_equals_aimet_kernel_at_ties(tmp_path, scale, offset, bitwidth, signed):
    values = _delicate_values(scale, offset, (1 << bitwidth) - 1 if bitwidth == 8 else 300)
    g = GraphBuilder()
    x = g.input("x", (1, values.size))
    g.output(g.act("Relu", x, "relu"))
    model = load_model(save(g.build(), tmp_path))
    enc = make_encoding("x", bitwidth, scale, offset, signed=signed, symmetric=signed)
    encodings = EncodingSet("test", "1.0.0", activations={"x": enc})
    got = sim_engine(model, encodings).run({"x": values[None]}, capture=["x"])["x"][0]
    np.testing.assert_array_equal(got, aimet_qdq(values, enc))
