"""Look-up-table activations: one table per node over every input code, then ``np.take``.

``table[q] = clamp(R(f(s_in * (q - z_in)) / s_out) + z_out)`` for all ``2^bw`` input codes (8 or 16
bit). The dequantize, ``f`` and the division run in ``profile.lut.compute`` (float32 or float64);
``R`` is ``profile.lut.rounding``. With float32 / half_even this is exactly how ONNX Runtime's
QLinearLookupBase (QLinearLeakyRelu, QLinearSigmoid) and QLinearConcat build their tables:
float32 ``X_scale * (x - X_zp)``, the transform, then ``MlasQuantizeLinear`` (``x / y_scale``, RNE).
Hexagon NN builds HardSwish the same way in float32 with ``roundf`` (half_away) (§4.8).

Functions without a float32 numpy implementation (``erf``) are evaluated in float64 and rounded to
the compute precision. Out-of-domain inputs are clamped into the domain (``Sqrt`` of a negative code
is 0, ``Log`` of a non-positive code is ``-inf``, which saturates to the lowest code).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from qdiverge.encodings.schema import Encoding
from qdiverge.engines.emulator import compiled
from qdiverge.engines.emulator.code_tables import code_dtype, code_offsets
from qdiverge.engines.emulator.fixed_point import round_to_int
from qdiverge.engines.emulator.registry import Binding, Unsupported, kernel
from qdiverge.engines.emulator.row_blocks import in_row_blocks
from qdiverge.profiles.schema import LutSpec

Function = Callable[[np.ndarray, Mapping[str, Any]], np.ndarray]

_erf64 = np.vectorize(math.erf, otypes=[np.float64])


def _erf(x: np.ndarray) -> np.ndarray:
    return _erf64(x.astype(np.float64)).astype(x.dtype)


def _gelu(x: np.ndarray, attrs: Mapping[str, Any]) -> np.ndarray:
    t = x.dtype.type
    if attrs.get("approximate", "none") in ("tanh", b"tanh"):
        inner = t(math.sqrt(2.0 / math.pi)) * (x + t(0.044715) * x * x * x)
        return t(0.5) * x * (t(1.0) + np.tanh(inner))
    return t(0.5) * x * (t(1.0) + _erf(x / t(math.sqrt(2.0))))


def _hard_sigmoid(x: np.ndarray, attrs: Mapping[str, Any]) -> np.ndarray:
    t = x.dtype.type
    alpha, beta = t(attrs.get("alpha", 0.2)), t(attrs.get("beta", 0.5))
    return np.clip(alpha * x + beta, t(0.0), t(1.0))


def _elu(x: np.ndarray, attrs: Mapping[str, Any]) -> np.ndarray:
    t = x.dtype.type
    return np.where(x > 0, x, t(attrs.get("alpha", 1.0)) * (np.exp(x) - t(1.0)))


def _log(x: np.ndarray, attrs: Mapping[str, Any]) -> np.ndarray:
    with np.errstate(divide="ignore"):
        return np.where(x > 0, np.log(np.where(x > 0, x, x.dtype.type(1.0))), x.dtype.type(-np.inf))


FUNCTIONS: dict[str, Function] = {
    "Identity": lambda x, a: x,
    "HardSwish": lambda x, a: x * np.clip(x + x.dtype.type(3.0), 0, 6) / x.dtype.type(6.0),
    "HardSigmoid": _hard_sigmoid,
    "Sigmoid": lambda x, a: x.dtype.type(1.0) / (x.dtype.type(1.0) + np.exp(-x)),
    "Tanh": lambda x, a: np.tanh(x),
    "Erf": lambda x, a: _erf(x),
    "Gelu": _gelu,
    "Exp": lambda x, a: np.exp(x),
    "Elu": _elu,
    "Softplus": lambda x, a: np.logaddexp(x.dtype.type(0.0), x),
    "Sqrt": lambda x, a: np.sqrt(np.maximum(x, x.dtype.type(0.0))),
    "Log": _log,
    "LeakyRelu": lambda x, a: np.where(x >= 0, x, x * x.dtype.type(a.get("alpha", 0.01))),
}


@dataclass(frozen=True)
class Table:
    """``values[q - qmin]`` is the output code of input code ``q``."""

    values: np.ndarray
    qmin: int


def _scalar(enc: Encoding | None, what: str) -> tuple[float, int]:
    if enc is None or enc.is_float:
        raise Unsupported(f"{what} has no integer encoding")
    if enc.per_channel:
        raise Unsupported(f"{what} has a per-channel encoding")
    if enc.bitwidth > 16:
        raise Unsupported(f"{what}: a table over {enc.bitwidth}-bit codes is too large")
    return float(enc.scale.reshape(-1)[0]), int(enc.zero_point.reshape(-1)[0])


def build_table(
    fn: Function, attrs: Mapping[str, Any], enc_in: Encoding, enc_out: Encoding, lut: LutSpec
) -> Table:
    """The table of ``fn`` from ``enc_in`` codes to ``enc_out`` codes (see the module docstring)."""
    s_in, z_in = _scalar(enc_in, f"input {enc_in.name}")
    s_out, z_out = _scalar(enc_out, f"output {enc_out.name}")
    dt = np.float32 if lut.compute == "float32" else np.float64
    codes = np.arange(enc_in.qmin, enc_in.qmax + 1, dtype=np.int64)
    x = dt(s_in) * (codes - z_in).astype(dt)
    with np.errstate(over="ignore", invalid="ignore"):
        v = (fn(x, attrs).astype(dt) / dt(s_out)).astype(dt)
    # saturate before rounding so that inf (exp overflow, log 0) lands on the range ends
    v = np.clip(v, enc_out.qmin - z_out - 1, enc_out.qmax - z_out + 1)
    q = np.clip(round_to_int(v, lut.rounding) + z_out, enc_out.qmin, enc_out.qmax)
    return Table(q.astype(code_dtype(enc_out.qmin, enc_out.qmax)), enc_in.qmin)


def lookup(table: Table, codes: np.ndarray) -> np.ndarray:
    """The output codes (the table's narrow dtype) of ``codes`` (any integer dtype)."""
    if compiled.enabled():
        return compiled.lookup(codes, table.values, table.qmin)
    return in_row_blocks(
        lambda x: table.values.take(code_offsets(x, table.qmin)), codes.shape, table.values.dtype, codes
    )


def prepare_table(b: Binding) -> Table:
    """The table of the node's own op from its input encoding to its output encoding."""
    op = b.node.op_type
    enc_in, enc_out = b.input_encodings[0], b.output_encodings[0]
    _scalar(enc_in, f"{op} input")
    _scalar(enc_out, f"{op} output")
    assert enc_in is not None and enc_out is not None
    return build_table(FUNCTIONS[op], dict(b.node.attrs), enc_in, enc_out, b.profile.lut)


@kernel("HardSwish", "HardSigmoid", "Sigmoid", "Tanh", "Erf", "Gelu", "Exp", "Elu", "Softplus", "Sqrt", "Log")
class LutActivation:
    """Every op here is a table; ``profile.lut`` says how the table is built (there is no other scheme).

    An op the profile does not list in ``lut.ops`` has no integer form on that target: it runs in float
    between dequantize and quantize, and is flagged."""

    @staticmethod
    def prepare(b: Binding) -> Table:
        if b.node.op_type not in b.profile.lut.ops:
            raise Unsupported(
                f"{b.node.op_type} is not a table activation on target {b.profile.name} (lut.ops)"
            )
        return prepare_table(b)

    narrow_inputs = True

    @staticmethod
    def run(table: Table, x: np.ndarray) -> np.ndarray:
        return lookup(table, x)
