"""The compiled kernels (numba, the fast extra) against their numpy forms, bit for bit."""

from __future__ import annotations

import os
import re
import signal
import time
from pathlib import Path

import numpy as np
import pytest

from qdiverge.encodings.schema import make_encoding
from qdiverge.engines.emulator import compiled
from qdiverge.engines.emulator.requant import quantize_float
from qdiverge.engines.emulator.runner import Emulator
from qdiverge.loading.inputs import input_source
from qdiverge.pipeline import open_workspace

if compiled.numba is None:  # not installed, or QDIVERGE_JIT=0
    pytest.skip("the compiled kernels are off", allow_module_level=True)
numba = compiled.numba

F32 = np.float32


def _tail_args(kind: str) -> tuple:
    acc = np.zeros((2, 3, 4), F32)
    per_channel = np.ones(3, F32)
    last = (F32(3), F32(0), F32(255), np.empty(acc.shape, np.uint8))
    if kind == "prescaled":
        return (acc, per_channel, per_channel, *last)
    if kind == "hardswish":
        return (acc, per_channel, F32(0.1), *last)
    return (acc, per_channel, *last)


@pytest.mark.parametrize("kind", sorted(compiled.TAILS))
def test_tails_compute_in_float32_without_fast_math(kind):
    """No float64 arithmetic, no fast-math flags, no fused multiply-add in the tails' machine code: each
    operation rounds as numpy's float32 operation does. (The cached parallel kernel cannot be inspected, so a
    serial copy of the same source is.)"""
    serial = numba.njit(parallel=False)(compiled.TAILS[kind].py_func)
    serial(*_tail_args(kind))
    ir = "\n".join(serial.inspect_llvm().values())
    arithmetic = re.findall(r"= (?:fmul|fadd|fsub|fdiv)[^\n]*", ir)
    assert arithmetic and not any("double" in op for op in arithmetic)
    assert not re.search(r"(fmul|fadd|fsub|fdiv) (fast|contract|reassoc|afn|nnan|ninf|nsz|arcp)", ir)
    assert "llvm.fma" not in ir and "fpext" not in ir


def _each_nearest_float16(values, out):
    for i in range(values.size):
        out[i] = compiled._nearest_float16(values[i])


def _nearest_float16(values: np.ndarray) -> np.ndarray:
    out = np.empty(values.size, np.float64)
    numba.njit(_each_nearest_float16)(values, out)
    return out


def test_nearest_float16_equals_numpy_astype():
    """Every float16 value, its float32 neighbours, the exact midpoints between float16 values and theirs,
    the overflow edge and 10^6 random float32 values of every exponent round as ``astype(float16)`` does."""
    h = np.arange(1 << 16, dtype=np.uint16).view(np.float16)
    h = h[np.isfinite(h)].astype(np.float32)
    ordered = np.unique(h.astype(np.float64))
    mids = ((ordered[:-1] + ordered[1:]) / 2).astype(np.float32)  # exact in float32: 12 significant bits
    rng = np.random.default_rng(0)
    random = (rng.uniform(-1, 1, 10**6) * 2.0 ** rng.integers(-30, 18, 10**6)).astype(np.float32)
    edge = np.array([65504, 65519.996, 65520, 65536, 1e30, 2.0**-25, 2.0**-24, 3 * 2.0**-26], np.float32)
    base = np.concatenate([h, mids, random, edge, -edge])
    values = np.concatenate(
        [np.nextafter(base, np.float32(np.inf)), base, np.nextafter(base, -np.float32(np.inf))]
    )
    with np.errstate(over="ignore"):  # beyond 65520: infinity, on both sides
        want = values.astype(np.float16).astype(np.float64)
    np.testing.assert_array_equal(_nearest_float16(values), want)


@pytest.mark.parametrize("rounding", sorted(compiled.ROUNDING_RULES))
@pytest.mark.parametrize("signed", [False, True])
def test_quantize_fp16_equals_numpy(rounding, signed):
    rng = np.random.default_rng(1)
    enc = make_encoding("x", 8, 0.0173, -128 if signed else -37, signed=signed)
    x = (rng.normal(0, 3, (4, 3, 50, 50)) * rng.choice([1, 0.01, 10], (4, 3, 50, 50))).astype(np.float32)
    compiled.set_enabled(False)
    try:
        want = quantize_float(x, enc, rounding, fp16=True)
    finally:
        compiled.set_enabled(True)
    np.testing.assert_array_equal(quantize_float(x, enc, rounding, fp16=True), want)


@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.uint16, np.int64])
def test_row_sums_equal_numpy(dtype):
    rng = np.random.default_rng(2)
    info = np.iinfo(dtype)
    x = rng.integers(max(info.min, -40000), min(info.max, 40000), size=(37, 4097)).astype(dtype)
    np.testing.assert_array_equal(compiled.row_sums(x), x.astype(np.int64).sum(axis=1))


def test_pair_and_table_lookup_equal_numpy_indexing():
    rng = np.random.default_rng(3)
    table = rng.integers(0, 256, 1 << 16).astype(np.uint8)
    for a_shape, b_shape in (((3, 5, 7, 9), (3, 5, 1, 1)), ((5, 1, 9), (3, 5, 7, 9)), ((9,), (4, 9))):
        a = rng.integers(-128, 128, a_shape).astype(np.int8)
        b = rng.integers(0, 256, b_shape).astype(np.uint8)
        want = table[((a.astype(np.int64) + 128) << 8) | b]
        np.testing.assert_array_equal(compiled.pair_lookup(a, b, table, -128, 0), want)
    codes = rng.integers(-128, 128, (6, 70000)).astype(np.int8)
    np.testing.assert_array_equal(
        compiled.lookup(codes, table[:256], -128), table[:256][codes.astype(np.int64) + 128]
    )


EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "mobilenetv3"


@pytest.mark.parametrize("target", ["htp", "onnx"])
def test_emulator_compiled_and_numpy_forms_agree_on_every_tensor(target):
    """The bundled example, 4 samples: every tensor's codes identical with and without the compiled kernels."""
    ws = open_workspace(
        EXAMPLE / "model.onnx", EXAMPLE / "model.encodings", EXAMPLE / "quantsim_config.json", target=target
    )
    source = input_source(ws.model, EXAMPLE / "inputs.npy", 1, 0, ws.encodings)
    samples = [sample for _, sample in zip(range(4), source, strict=False)]
    runs = {}
    for on in (False, True):
        previous = compiled.set_enabled(on)
        try:
            emulator = Emulator(
                ws.model,
                ws.encodings,
                ws.profile,
                supergroup_internal=ws.supergroup_internal,
                calibrate=ws.calibrator(source),
            )
            runs[on] = [emulator.run(sample, keep="all") for sample in samples]
        finally:
            compiled.set_enabled(previous)
    for numpy_run, compiled_run in zip(runs[False], runs[True], strict=True):
        assert numpy_run.keys() == compiled_run.keys() and len(numpy_run) > 50
        for name, tensor in numpy_run.items():
            np.testing.assert_array_equal(compiled_run[name].codes, tensor.codes, err_msg=name)


@pytest.mark.parametrize(
    "dtype, qmin, size",
    [
        (np.uint8, 0, 256),
        (np.int8, -128, 256),
        (np.uint16, 0, 1 << 16),
        (np.int16, -32768, 1 << 16),
        (np.int8, -128, 200),
    ],
)
def test_table_lookup_by_bit_pattern_equals_offset_indexing(dtype, qmin, size):
    """A table over every code of the storage type is indexed by the codes' bit patterns (rotated table);
    other tables by the offset code. Both equal ``table[q - qmin]``."""
    rng = np.random.default_rng(4)
    table = rng.integers(0, 256, size).astype(np.uint8)
    x = rng.integers(qmin, qmin + size, (3, 20000)).astype(dtype)
    np.testing.assert_array_equal(compiled.lookup(x, table, qmin), table[x.astype(np.int64) - qmin])


def test_ctrl_c_during_a_compiled_call_is_held_then_raised():
    """A KeyboardInterrupt raised inside an LLVM callback while numba compiles would be dropped; during a
    compiled call Ctrl-C is held, the call completes, and the interrupt is raised after it."""
    finished = []

    def kernel() -> None:
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.05)  # the signal arrives here; the kernel must still finish
        finished.append(True)

    inherited = signal.signal(
        signal.SIGINT, signal.default_int_handler
    )  # even when started with SIGINT ignored
    try:
        with pytest.raises(KeyboardInterrupt):
            compiled._call(kernel)
        assert finished == [True]
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handler restored
    finally:
        signal.signal(signal.SIGINT, inherited)
