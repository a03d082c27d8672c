"""Compiled one-pass forms of the emulator's element-wise hot spots (numba, the optional ``fast`` extra).

Each kernel performs the same operations, in the same order and precision, as the numpy / onnxruntime form it
replaces (numba compiles without fast-math: no contraction into FMAs, no reassociation), so results are
bit-identical; what changes is that a requantization tail of four or five passes over a float32 tensor, or a
table lookup that needs index arrays, becomes one multi-threaded pass. Tests run both forms.

Without numba, or with ``QDIVERGE_JIT=0`` in the environment, ``enabled()`` is False and callers keep their
onnxruntime / numpy forms. Compiled code is cached on disk (numba's ``cache=True``), so only the first run on
a machine pays the compilation (a few seconds).
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

numba: Any = None
if os.environ.get("QDIVERGE_JIT", "1") != "0":  # not even imported when disabled: it costs ~120 MB resident
    try:
        import numba
    except Exception:  # the optional ``fast`` extra is not installed (or cannot load: same results, slower)
        numba = None

_ON = numba is not None


def enabled() -> bool:
    """Whether the compiled kernels are in use (numba installed and not disabled)."""
    return _ON


def set_enabled(on: bool) -> bool:
    """Switch the compiled kernels on or off (tests compare both forms); returns the previous state.

    Requantization tails are chosen when a kernel is bound, lookups on each call. Cannot switch on without
    numba."""
    global _ON
    previous, _ON = _ON, bool(on) and numba is not None
    return previous


@contextlib.contextmanager
def _interrupts_deferred() -> Iterator[None]:
    """Hold Ctrl-C until the block ends, then raise it.

    numba compiles a kernel on its first call (and loads it from the cache through LLVM callbacks); a
    KeyboardInterrupt raised inside such a ctypes callback is printed and dropped, and the run would go on."""
    handler = signal.getsignal(signal.SIGINT)
    if threading.current_thread() is not threading.main_thread() or handler in (signal.SIG_IGN, None):
        yield
        return
    pending: list[int] = []
    signal.signal(signal.SIGINT, lambda signum, _frame: pending.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, handler)
        if pending:
            raise KeyboardInterrupt


def _call(kernel: Callable[..., Any], *args: Any) -> None:
    """Run a compiled kernel (compiling it first if need be) with Ctrl-C held until it returns."""
    with _interrupts_deferred():
        kernel(*args)


def _jit(fn: Any) -> Any:
    return numba.njit(parallel=True, cache=True, nogil=True)(fn) if numba is not None else fn


def _inline(fn: Any) -> Any:
    """A scalar helper compiled into the kernels that call it."""
    return numba.njit(cache=True, inline="always")(fn) if numba is not None else fn


# ---- requantization tails: acc (outer, C, inner) float32 -> codes, per-channel parameters of shape (C,) ----


@_jit
def _prescaled_tail(acc, mq2, mq, zp, qmin, qmax, out):  # pragma: no cover - compiled
    # k = floor((acc + bias) * 2^-g); y = R((2k + 1) mq / 2^16) + zp  (see accumulate: exact in float32)
    outer, channels, inner = acc.shape
    for t in numba.prange(outer * channels):
        i, c = t // channels, t % channels
        for j in range(inner):
            u = np.floor(acc[i, c, j]) * mq2[c] + mq[c]
            y = np.rint(u * np.float32(1.0 / 65536.0)) + zp
            out[i, c, j] = min(max(y, qmin), qmax)


@_jit
def _float_tail(acc, m, zp, qmin, qmax, out):  # pragma: no cover - compiled
    # ORT-style: R_even(fl32((acc + bias) * m)) + zp, clamped
    outer, channels, inner = acc.shape
    for t in numba.prange(outer * channels):
        i, c = t // channels, t % channels
        for j in range(inner):
            y = np.rint(acc[i, c, j] * m[c]) + zp
            out[i, c, j] = min(max(y, qmin), qmax)


@_jit
def _hardswish_tail(acc, acc_scale, out_scale, zp, qmin, qmax, out):  # pragma: no cover - compiled
    # real = (acc + bias) * s_acc; real * clip(real + 3, 0, 6) / 6 / s_out; R_even; + zp; clamp (float32)
    outer, channels, inner = acc.shape
    three, six, zero = np.float32(3.0), np.float32(6.0), np.float32(0.0)
    for t in numba.prange(outer * channels):
        i, c = t // channels, t % channels
        for j in range(inner):
            v = acc[i, c, j] * acc_scale[c]
            gate = min(max(v + three, zero), six)
            y = np.rint(v * gate / six / out_scale) + zp
            out[i, c, j] = min(max(y, qmin), qmax)


@_jit
def _pair_lookup(a, b, table, a_min, b_min, out):  # pragma: no cover - compiled
    # a, b: 4-D views broadcast to out's shape; table[(a - a_min) << 8 | (b - b_min)]
    n0, n1, n2, n3 = out.shape
    for t in numba.prange(n0 * n1):
        i, k = t // n1, t % n1
        for p in range(n2):
            for q in range(n3):
                # unsigned indices: no negative-index wraparound test in the loop
                out[i, k, p, q] = table[np.uint32(((a[i, k, p, q] - a_min) << 8) | (b[i, k, p, q] - b_min))]


@_jit
def _row_pair_lookup(a, b, table, a_min, b_min, out):  # pragma: no cover - compiled
    # a (R, P) contiguous, b (R,): one code of b per row (b broadcast over a row), so each row reads one
    # 256-entry slice of the table stored b-major: table[(b - b_min) << 8 | (a - a_min)]
    rows, inner = a.shape
    for i in numba.prange(rows):
        base = (b[i] - b_min) << 8
        for j in range(inner):
            out[i, j] = table[np.uint32(base + a[i, j] - a_min)]


@_jit
def _lookup(x, table, qmin, out):  # pragma: no cover - compiled
    n = x.size
    chunk = 1 << 16
    for t in numba.prange((n + chunk - 1) // chunk):
        for j in range(t * chunk, min(n, (t + 1) * chunk)):
            out[j] = table[np.uint32(x[j] - qmin)]


@_inline
def _nearest_float16(v):  # pragma: no cover - compiled
    # the float16 value nearest to float32 v, ties to even (numpy's astype(float16)), as a float32: the
    # mantissa rounded to 10 bits on the bit pattern (a carry moves into the exponent); a fixed 2^-24 step
    # below 2^-14 (float16 subnormals); infinity from 65520 on
    u = np.float32(v).view(np.uint32)
    magnitude = u & np.uint32(0x7FFFFFFF)
    if magnitude > np.uint32(0x7F800000):  # NaN stays NaN
        return np.float32(v)
    if magnitude >= np.uint32(0x477FF000):  # 65520.0
        return np.uint32((u & np.uint32(0x80000000)) | np.uint32(0x7F800000)).view(np.float32)
    if magnitude < np.uint32(0x38800000):  # 2^-14
        return np.rint(np.float32(v) * np.float32(2.0**24)) * np.float32(2.0**-24)
    odd = (u >> np.uint32(13)) & np.uint32(1)
    return np.uint32((u + np.uint32(0x0FFF) + odd) & np.uint32(0xFFFFE000)).view(np.float32)


@_jit
def _quantize_fp16(x, inv_scale, offset, steps, qmin, rule, out):  # pragma: no cover - compiled
    # HTP graph input: R(fp16(x * (1/s))) - offset, clamped to [0, steps], + qmin; rule 0 even, 1 up, 2 away
    n = x.size
    chunk = 1 << 16
    for t in numba.prange((n + chunk - 1) // chunk):
        for j in range(t * chunk, min(n, (t + 1) * chunk)):
            h = _nearest_float16(x[j] * inv_scale)
            if rule == 0:
                r = np.rint(h)
            elif rule == 1:
                r = np.floor(h + np.float32(0.5))
            else:
                r = np.copysign(np.floor(np.abs(h) + np.float32(0.5)), h)
            out[j] = min(max(r - offset, np.float32(0.0)), steps) + qmin


@_jit
def _row_sums(x, out):  # pragma: no cover - compiled
    rows, inner = x.shape
    for i in numba.prange(rows):
        total = 0
        for j in range(inner):
            total += x[i, j]
        out[i] = total


@_jit
def _lookup_raw(x, table, out):  # pragma: no cover - compiled
    # x unsigned: its values index the table directly (no offset, no wraparound test)
    n = x.size
    chunk = 1 << 16
    for t in numba.prange((n + chunk - 1) // chunk):
        for j in range(t * chunk, min(n, (t + 1) * chunk)):
            out[j] = table[x[j]]


TAILS = {"prescaled": _prescaled_tail, "float": _float_tail, "hardswish": _hardswish_tail}


def requant_tail(kind: str, acc: np.ndarray, params: tuple[Any, ...], out_dtype: Any) -> np.ndarray:
    """Codes of ``acc`` (outer, C, inner) float32 through tail ``kind`` with ``params`` (see ``TAILS``)."""
    out = np.empty(acc.shape, dtype=out_dtype)
    _call(TAILS[kind], acc, *params, out)
    return out


def row_pair_lookup(
    a: np.ndarray, b: np.ndarray, b_major: np.ndarray, a_min: int, b_min: int
) -> np.ndarray | None:
    """``b_major[(b - b_min) << 8 | (a - a_min)]`` when ``b`` holds one code per leading index of ``a`` (an
    SE block's (N, C, 1, 1) scale times (N, C, H, W) features), else None."""
    if a.ndim != b.ndim or a.ndim < 2:
        return None
    lead = next((k for k in range(a.ndim) if b.shape[k] == 1 and a.shape[k] != 1), a.ndim)
    if b.shape[:lead] != a.shape[:lead] or any(n != 1 for n in b.shape[lead:]):
        return None
    rows = int(np.prod(a.shape[:lead]))
    a2 = np.ascontiguousarray(a).reshape(rows, -1)
    out = np.empty(a2.shape, dtype=b_major.dtype)
    _call(_row_pair_lookup, a2, np.ascontiguousarray(b).reshape(rows), b_major, a_min, b_min, out)
    return out.reshape(a.shape)


def pair_lookup(a: np.ndarray, b: np.ndarray, table: np.ndarray, a_min: int, b_min: int) -> np.ndarray:
    """``table[(a - a_min) << 8 | (b - b_min)]`` with numpy broadcasting (at most 4 dimensions)."""
    shape = np.broadcast_shapes(a.shape, b.shape)
    if len(shape) > 4:
        raise ValueError("more than 4 dimensions")
    full = (1,) * (4 - len(shape)) + shape
    out = np.empty(full, dtype=table.dtype)
    views = [np.broadcast_to(x.reshape((1,) * (4 - x.ndim) + x.shape), full) for x in (a, b)]
    _call(_pair_lookup, views[0], views[1], table, a_min, b_min, out)
    return out.reshape(shape)


def lookup(x: np.ndarray, table: np.ndarray, qmin: int) -> np.ndarray:
    """``table[x - qmin]`` in one parallel pass."""
    flat = np.ascontiguousarray(x).reshape(-1)
    out = np.empty(flat.shape, dtype=table.dtype)
    if x.dtype.itemsize <= 2 and table.size == 1 << (8 * x.dtype.itemsize):
        # a table over every code of the storage type: index it by the codes' unsigned bit patterns, with
        # the table rotated so that pattern p finds table[q - qmin] for the code q stored as p
        unsigned = flat.view(np.uint8 if x.dtype.itemsize == 1 else np.uint16)
        _call(_lookup_raw, unsigned, np.roll(table, qmin), out)
    else:
        _call(_lookup, flat, table, qmin, out)
    return out.reshape(x.shape)


ROUNDING_RULES = {"half_even": 0, "half_up": 1, "half_away": 2}


def quantize_fp16(
    x: np.ndarray,
    inv_scale: np.float32,
    offset: float,
    steps: int,
    qmin: int,
    rounding: str,
    dtype: type = np.int64,
) -> np.ndarray:
    """``clamp(R(fp16(x * inv_scale)) - offset, 0, steps) + qmin`` as ``dtype``, per-tensor parameters."""
    flat = np.ascontiguousarray(x, dtype=np.float32).reshape(-1)
    out = np.empty(flat.shape, dtype=dtype)
    rule = ROUNDING_RULES[rounding]
    _call(_quantize_fp16, flat, inv_scale, np.float32(offset), np.float32(steps), qmin, rule, out)
    return out.reshape(x.shape)


def row_sums(x: np.ndarray) -> np.ndarray:
    """Exact int64 sums of the rows of the 2-D integer array ``x``."""
    out = np.empty(x.shape[0], dtype=np.int64)
    _call(_row_sums, np.ascontiguousarray(x), out)
    return out
