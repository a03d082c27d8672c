"""Gemm and MatMul on integer codes.

    acc[..., m, n] = sum_k (a_q[..., m, k] - z_a) * (b_q[k, n] - z_b[n])

``B`` is a constant weight (per-tensor or per-column encoding) or, for MatMul, a second activation. Gemm's
``alpha`` joins the real multiplier and ``beta * C`` is the bias, quantized at ``alpha * s_a * s_b``. The
sum is exact (under the ``linear`` float32 bound on an onnxruntime Gemm/MatMul, ``accumulate``; else float64
numpy BLAS); output channels are the last axis.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from qdiverge.engines.emulator.accumulate import OrtSum, matmul_sum
from qdiverge.engines.emulator.linear import (
    Epilogue,
    accumulator_dtype,
    activation_encoding,
    code_radius,
    compact_ints,
    make_epilogue,
    quantized_weights,
)
from qdiverge.engines.emulator.registry import Binding, Unsupported, kernel


@dataclass(frozen=True)
class MatMulParams:
    weights: np.ndarray | None  # (K, N) ``b - z_b`` in acc dtype (unused compact ints when ``ort`` is set);
    # None when B is an activation
    a_zero: int
    b_zero: int
    trans_a: bool
    dtype: type
    bound_per_k: float  # max|a - z_a| * max|b - z_b|: the bound is this times K (activation x activation)
    epilogue: Epilogue
    ort: OrtSum | None = None  # the float32 fast path of a constant weight


def _run_ort(p: MatMulParams, a: np.ndarray) -> np.ndarray:
    assert p.ort is not None
    y = p.ort(a)
    return y if p.ort.requantizes else p.epilogue(y, axis=-1)


def _constant_b(b: Binding, channel_axis: int) -> tuple[np.ndarray, np.ndarray, float]:
    """(``B - z_b`` as (K, N) int64, scales, bound per unit |a - z_a|) of the constant weight input 1."""
    w = b.constants[1]
    assert w is not None
    if w.ndim != 2:
        raise Unsupported(f"{b.node.op_type} with a {w.ndim}-D constant weight")
    wz, scale = quantized_weights(b, 1, channel_axis)
    if channel_axis == 0:
        wz = wz.T
    return wz, scale, float(np.abs(wz).sum(axis=0).max())


@kernel("Gemm")
class Gemm:
    fuses = True  # applies Binding.fused activations in its epilogue
    reads_constants = False  # weights and bias are prepared from the binding
    narrow_inputs = True  # any integer dtype: the input is converted to float once anyway

    @staticmethod
    def prepare(b: Binding) -> MatMulParams:
        node = b.node
        a_enc = activation_encoding(b.input_encodings[0], "input A")
        if b.constants[1] is None:
            raise Unsupported("Gemm with a non-constant B")
        alpha, beta = float(node.attr("alpha", 1.0)), float(node.attr("beta", 1.0))
        if alpha <= 0:
            raise Unsupported("Gemm with alpha <= 0")
        wz, scale, per_a = _constant_b(b, 0 if node.attr("transB", 0) else 1)
        bias = None
        if len(node.inputs) > 2 and node.inputs[2]:
            c = b.constants[2]
            if c is None or (c.size > 1 and c.reshape(-1).size != wz.shape[1]):
                raise Unsupported("Gemm C is not a constant per-column bias")
            bias = np.broadcast_to(beta * np.asarray(c, dtype=np.float64).reshape(-1), (wz.shape[1],))
        bound = code_radius(a_enc) * per_a
        dtype = accumulator_dtype(bound, node.name)
        a_zero, trans_a = int(a_enc.zero_point[0]), bool(node.attr("transA", 0))
        epilogue = make_epilogue(b, a_enc, scale, bias, bound, alpha)
        fast = dtype is np.float32
        return MatMulParams(
            weights=compact_ints(wz) if fast else wz.astype(dtype),
            a_zero=a_zero,
            b_zero=0,
            trans_a=trans_a,
            dtype=dtype,
            bound_per_k=0.0,
            epilogue=epilogue,
            ort=matmul_sum(wz.astype(np.float32), a_zero, epilogue, trans_a) if fast else None,
        )

    @staticmethod
    def run(p: MatMulParams, a: np.ndarray, *_constants: np.ndarray) -> np.ndarray:
        if p.ort is not None:
            return _run_ort(p, a)
        af = (a.T if p.trans_a else a).astype(p.dtype)
        af -= p.dtype(p.a_zero)
        return p.epilogue(af @ p.weights, axis=-1)


@kernel("MatMul")
class MatMul:
    fuses = True  # applies Binding.fused activations in its epilogue
    reads_constants = False  # weights and bias are prepared from the binding
    narrow_inputs = True  # any integer dtype: the input is converted to float once anyway

    @staticmethod
    def prepare(b: Binding) -> MatMulParams:
        a_enc = activation_encoding(b.input_encodings[0], "input A")
        radius = code_radius(a_enc)
        if b.constants[0] is not None:
            raise Unsupported("MatMul with a constant left operand")
        if b.constants[1] is not None:
            wz, scale, per_a = _constant_b(b, 1)
            bound = radius * per_a
            dtype = accumulator_dtype(bound, b.node.name)
            a_zero, epilogue = int(a_enc.zero_point[0]), make_epilogue(b, a_enc, scale, None, bound)
            fast = dtype is np.float32
            return MatMulParams(
                weights=compact_ints(wz) if fast else wz.astype(dtype),
                a_zero=a_zero,
                b_zero=0,
                trans_a=False,
                dtype=dtype,
                bound_per_k=0.0,
                epilogue=epilogue,
                ort=matmul_sum(wz.astype(np.float32), a_zero, epilogue, None) if fast else None,
            )
        b_enc = activation_encoding(b.input_encodings[1], "input B")
        shape = b.input_shapes[0]
        per_k = float(radius * code_radius(b_enc))
        # K unknown at bind time: float64 and a run-time check of the bound
        bound = per_k * shape[-1] if shape else float(1 << 52)
        return MatMulParams(
            weights=None,
            a_zero=int(a_enc.zero_point[0]),
            b_zero=int(b_enc.zero_point[0]),
            trans_a=False,
            dtype=accumulator_dtype(bound, b.node.name),
            bound_per_k=per_k,
            epilogue=make_epilogue(b, a_enc, b_enc.scale, None, bound),
        )

    @staticmethod
    def run(p: MatMulParams, a: np.ndarray, b: np.ndarray | None = None) -> np.ndarray:
        if p.ort is not None:
            return _run_ort(p, a)
        af = a.astype(p.dtype)
        af -= p.dtype(p.a_zero)
        if p.weights is not None:  # one 2-D BLAS call: numpy's stacked matmul is slow on broadcasts
            acc = (af.reshape(-1, af.shape[-1]) @ p.weights).reshape(*af.shape[:-1], p.weights.shape[1])
            return p.epilogue(acc, axis=-1)
        assert b is not None
        exact = 1 << 24 if p.dtype is np.float32 else 1 << 53
        assert p.bound_per_k * a.shape[-1] < exact, "activation MatMul accumulator bound exceeded"
        bf = b.astype(p.dtype)
        bf -= p.dtype(p.b_zero)
        return p.epilogue(af @ bf, axis=-1)
