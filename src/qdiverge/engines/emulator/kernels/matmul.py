"""Gemm and MatMul on integer codes.

    acc[..., m, n] = sum_k (a_q[..., m, k] - z_a) * (b_q[k, n] - z_b[n])

``B`` is a constant weight (per-tensor or per-column encoding) or, for MatMul, a second activation. Gemm's
``alpha`` joins the real multiplier and ``beta * C`` is the bias, quantized at ``alpha * s_a * s_b``. A
constant Add the profile fuses after a MatMul or a bias-less Gemm (``profiles.fusion.bias_of_add``) is that
bias too: the converter's FullyConnected, int32 bias at ``s_a * s_b`` in the accumulator. The
sum is exact (under the ``linear`` float32 bound on an onnxruntime Gemm/MatMul, ``accumulate``; else float64
numpy BLAS); output channels are the last axis.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from qdiverge.encodings.schema import Encoding
from qdiverge.engines.emulator.accumulate import OrtSum, matmul_sum
from qdiverge.engines.emulator.linear import (
    Epilogue,
    WeightKernel,
    activation_encoding,
    code_radius,
    compact_ints,
    prepare_accumulation,
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


def _constant_b(b: Binding, channel_axis: int) -> tuple[np.ndarray, np.ndarray]:
    """(``B - z_b`` as (K, N) int64, scales) of the constant weight input 1."""
    w = b.constants[1]
    assert w is not None
    if w.ndim != 2:
        raise Unsupported(f"{b.node.op_type} with a {w.ndim}-D constant weight")
    wz, scale = quantized_weights(b, 1, channel_axis)
    return (wz.T if channel_axis == 0 else wz), scale


def _fused_bias(b: Binding) -> tuple[np.ndarray | None, Binding]:
    """(The constant of a fused bias Add, flattened; the binding without that Add, later activations kept)."""
    if not b.fused or b.fused[0].op_type != "Add":
        return None, b
    const = next((c for c in b.fused_constants[0] if c is not None), None)
    if const is None:
        raise Unsupported("fused Add without a constant bias")
    bias = np.asarray(const, dtype=np.float64).reshape(-1)
    return bias, replace(b, fused=b.fused[1:], fused_constants=b.fused_constants[1:])


def _columns(bias: np.ndarray | None, n: int) -> np.ndarray | None:
    """``bias`` (one value or ``n``) broadcast to the ``n`` output columns."""
    if bias is None:
        return None
    if bias.size not in (1, n):
        raise Unsupported(f"bias of {bias.size} values for {n} output columns")
    return np.broadcast_to(bias, (n,))


def _constant_b_params(
    b: Binding,
    a_enc: Encoding,
    wz: np.ndarray,
    scale: np.ndarray,
    bias: np.ndarray | None,
    alpha: float,
    trans_a: bool | None,
) -> MatMulParams:
    """Params of ``A @ B`` with the constant ``B - z_b`` = ``wz`` (K, N); ``trans_a`` None for a MatMul."""
    bound = code_radius(a_enc) * float(np.abs(wz).sum(axis=0).max())
    dtype, epilogue = prepare_accumulation(b, a_enc, scale, bias, bound, alpha)
    a_zero = int(a_enc.zero_point[0])
    fast = dtype is np.float32
    return MatMulParams(
        weights=compact_ints(wz) if fast else wz.astype(dtype),
        a_zero=a_zero,
        b_zero=0,
        trans_a=bool(trans_a),
        dtype=dtype,
        bound_per_k=0.0,
        epilogue=epilogue,
        ort=matmul_sum(wz.astype(np.float32), a_zero, (a_enc.qmin, a_enc.qmax), epilogue, trans_a)
        if fast
        else None,
    )


@kernel("Gemm")
class Gemm(WeightKernel):
    @staticmethod
    def prepare(b: Binding) -> MatMulParams:
        node = b.node
        a_enc = activation_encoding(b.input_encodings[0], "input A")
        if b.constants[1] is None:
            raise Unsupported("Gemm with a non-constant B")
        alpha, beta = float(node.attr("alpha", 1.0)), float(node.attr("beta", 1.0))
        if alpha <= 0:
            raise Unsupported("Gemm with alpha <= 0")
        wz, scale = _constant_b(b, 0 if node.attr("transB", 0) else 1)
        bias, b = _fused_bias(b)
        bias = _columns(bias, wz.shape[1])  # a real addend, quantized at alpha * s_a * s_b like beta * C
        if len(node.inputs) > 2 and node.inputs[2]:
            c = b.constants[2]
            if c is None or (c.size > 1 and c.reshape(-1).size != wz.shape[1]):
                raise Unsupported("Gemm C is not a constant per-column bias")
            c_bias = np.broadcast_to(beta * np.asarray(c, dtype=np.float64).reshape(-1), (wz.shape[1],))
            bias = c_bias if bias is None else bias + c_bias
        return _constant_b_params(b, a_enc, wz, scale, bias, alpha, bool(node.attr("transA", 0)))

    @staticmethod
    def run(p: MatMulParams, a: np.ndarray, *_constants: np.ndarray) -> np.ndarray:
        if p.ort is not None:
            return p.ort.codes(a, p.epilogue, axis=-1)
        af = (a.T if p.trans_a else a).astype(p.dtype)
        af -= p.dtype(p.a_zero)
        return p.epilogue(af @ p.weights, axis=-1)


@kernel("MatMul")
class MatMul(WeightKernel):
    @staticmethod
    def prepare(b: Binding) -> MatMulParams:
        a_enc = activation_encoding(b.input_encodings[0], "input A")
        if b.constants[0] is not None:
            raise Unsupported("MatMul with a constant left operand")
        bias, b = _fused_bias(b)
        if b.constants[1] is not None:
            wz, scale = _constant_b(b, 1)
            return _constant_b_params(b, a_enc, wz, scale, _columns(bias, wz.shape[1]), 1.0, None)
        b_enc = activation_encoding(b.input_encodings[1], "input B")
        shape = b.input_shapes[0]
        per_k = float(code_radius(a_enc) * code_radius(b_enc))
        # K unknown at bind time: float64 and a run-time check of the bound
        bound = per_k * shape[-1] if shape else float(1 << 52)
        if bias is not None:
            raise Unsupported("fused bias Add on an activation x activation MatMul")
        dtype, epilogue = prepare_accumulation(b, a_enc, b_enc.scale, None, bound)
        return MatMulParams(
            weights=None,
            a_zero=int(a_enc.zero_point[0]),
            b_zero=int(b_enc.zero_point[0]),
            trans_a=False,
            dtype=dtype,
            bound_per_k=per_k,
            epilogue=epilogue,
        )

    @staticmethod
    def run(p: MatMulParams, a: np.ndarray, b: np.ndarray | None = None) -> np.ndarray:
        if p.ort is not None:
            return p.ort.codes(a, p.epilogue, axis=-1)
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
