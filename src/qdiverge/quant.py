"""Quantize / dequantize arithmetic shared by every engine.

``aimet_qdq`` is AIMET's C++ fake-quant kernel (``trim_functions.cpp``) written out in float32 numpy:
replace NaN by min, clamp to [min, max], divide by scale, subtract offset, round half away from
zero, add offset, multiply by scale. ``dequantize`` is the second half of it, so a code dequantized
here lands on exactly the float the sim would hold.
"""

from __future__ import annotations

import numpy as np

from qdiverge.encodings.schema import Encoding


def _per_element(enc: Encoding, values: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    if enc.block_size:
        return enc.block_expand(values, shape)
    return enc.broadcast(values, len(shape))


def float32_params(enc: Encoding, shape: tuple[int, ...]) -> tuple[np.ndarray, ...]:
    """(scale, offset, min, max) as float32, broadcast against ``shape`` (min/max from float64)."""
    scale = _per_element(enc, enc.scale, shape).astype(np.float32)
    offset = _per_element(enc, enc.offset, shape).astype(np.float32)
    vmin = _per_element(enc, enc.min, shape).astype(np.float32)
    vmax = _per_element(enc, enc.max, shape).astype(np.float32)
    return scale, offset, vmin, vmax


def round_half_away(v: np.ndarray) -> np.ndarray:
    """C ``round``/``roundf``: ties away from zero, in the dtype of ``v``.

    Written with ``rint`` plus a tie fix-up because ``floor(v + 0.5)`` rounds twice in float32.
    """
    floor = np.floor(v)
    tie = v == floor + v.dtype.type(0.5)  # exact test; ``v - floor`` can round to 0.5 for v near -0.5
    return np.where(tie, np.where(v >= 0, floor + 1, floor), np.rint(v)).astype(v.dtype)


def aimet_qdq(x: np.ndarray, enc: Encoding) -> np.ndarray:
    """AIMET QuantSim fake-quant of ``x`` (float32 in, float32 out), bit-exact with aimet-onnx."""
    x = np.asarray(x, dtype=np.float32)
    if enc.is_float:
        return x.astype(np.float16).astype(np.float32)
    scale, offset, vmin, vmax = float32_params(enc, x.shape)
    v = np.where(np.isnan(x), vmin, x)
    v = np.maximum(np.minimum(v, vmax), vmin)
    v = v / scale - offset
    q = round_half_away(v)
    return (scale * (q + offset)).astype(np.float32)


def quantize_aimet(x: np.ndarray, enc: Encoding) -> np.ndarray:
    """Storage-domain integer codes the AIMET sim would hold for ``x`` (int64)."""
    x = np.asarray(x, dtype=np.float32)
    scale, offset, vmin, vmax = float32_params(enc, x.shape)
    v = np.where(np.isnan(x), vmin, x)
    v = np.maximum(np.minimum(v, vmax), vmin)
    q_u = round_half_away(v / scale - offset).astype(np.int64)
    return q_u + enc.qmin


def dequantize(codes: np.ndarray, enc: Encoding) -> np.ndarray:
    """Float32 value of storage-domain ``codes``, computed as the sim computes it."""
    if enc.is_float:
        return np.asarray(codes, dtype=np.float32)
    q_u = (np.asarray(codes, dtype=np.int64) - enc.qmin).astype(np.float32)
    scale, offset, _, _ = float32_params(enc, q_u.shape)
    return (scale * (q_u + offset)).astype(np.float32)
