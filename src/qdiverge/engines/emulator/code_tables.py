"""Kernels as tables from input codes to output codes, and the index arithmetic they share.

Unary activations are tables by definition (``kernels.activation``). Two-input kernels on 8-bit codes are
tables of their own integer arithmetic: an 8-bit Add / Sub / Mul / Div output code depends on nothing but the
two input codes, so the kernel's arithmetic evaluated once on all ``2^8 x 2^8`` code pairs *is* that function.
Indexing the table gives the same codes bit for bit, at the cost of one 16-bit index pass and a gather instead
of several int64 passes per element (the arithmetic stays the single definition; the table is only how it is
evaluated).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from qdiverge.encodings.schema import Encoding
from qdiverge.engines.emulator import compiled
from qdiverge.engines.emulator.row_blocks import in_row_blocks

_BITS = 8  # codes per input: 2^8, so a pair is a 16-bit index


def code_dtype(lo: int, hi: int) -> type:
    """The narrowest integer dtype holding ``[lo, hi]``."""
    for dtype in (np.uint8, np.int8, np.uint16, np.int16, np.int32):
        info = np.iinfo(dtype)
        if info.min <= lo and hi <= info.max:
            return dtype
    return np.int64


def code_offsets(x: np.ndarray, lo: int) -> np.ndarray:
    """``x - lo`` (codes of an encoding whose lowest code is ``lo``, at most 16 bits) as a new uint16 array."""
    if x.dtype == np.uint8 and lo == 0:
        return x.astype(np.uint16)
    if x.dtype == np.int8 and lo == -128:
        return (x.view(np.uint8) ^ np.uint8(0x80)).astype(np.uint16)
    return (np.asarray(x, dtype=np.int64) - lo).astype(np.uint16)


@dataclass(frozen=True)
class PairTable:
    """``values[(a - a_min) << 8 | (b - b_min)]`` is the kernel's output code for input codes ``(a, b)``."""

    values: np.ndarray
    a_min: int
    b_min: int
    b_major: np.ndarray  # the same table indexed ``(b - b_min) << 8 | (a - a_min)``

    @classmethod
    def build(
        cls,
        kernel: Callable[[np.ndarray, np.ndarray], np.ndarray],
        enc_a: Encoding | None,
        enc_b: Encoding | None,
    ) -> PairTable | None:
        """The table of ``kernel`` (int64 codes -> codes) when both inputs are integer codes of at most 8 bits."""
        if any(e is None or e.is_float or e.bitwidth > _BITS for e in (enc_a, enc_b)):
            return None
        assert enc_a is not None and enc_b is not None
        a = np.arange(enc_a.qmin, enc_a.qmax + 1, dtype=np.int64)[:, None]
        b = np.arange(enc_b.qmin, enc_b.qmin + (1 << _BITS), dtype=np.int64)[None, :]
        b = np.minimum(b, enc_b.qmax)  # the unused columns of a narrower b repeat its top code
        codes = np.broadcast_to(kernel(a, b), (a.shape[0], b.shape[1]))
        dtype = code_dtype(int(codes.min()), int(codes.max()))
        square = np.zeros((1 << _BITS, 1 << _BITS), dtype=dtype)
        square[: codes.shape[0]] = codes
        return cls(
            np.ascontiguousarray(codes, dtype=dtype).reshape(-1),
            enc_a.qmin,
            enc_b.qmin,
            np.ascontiguousarray(square.T).reshape(-1),
        )

    def __call__(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        if compiled.enabled():
            rows = compiled.row_pair_lookup(a, b, self.b_major, self.a_min, self.b_min)
            if rows is not None:
                return rows
            if max(a.ndim, b.ndim) <= 4:
                return compiled.pair_lookup(a, b, self.values, self.a_min, self.b_min)
        shape = np.broadcast_shapes(a.shape, b.shape)
        return in_row_blocks(self._lookup, shape, self.values.dtype, a, b)

    def _lookup(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        index = code_offsets(a, self.a_min)
        index <<= _BITS
        b_offsets = code_offsets(b, self.b_min)
        in_place = index.shape == np.broadcast_shapes(index.shape, b_offsets.shape)
        index = np.bitwise_or(index, b_offsets, out=index if in_place else None)
        return self.values.take(index)
