"""One in-memory form for every encodings source (AIMET 0.6.1 / 1.0.0 / 2.0.0 JSON, QDQ models).

Convention (AIMET and QNN ``Qnn_ScaleOffset_t``): ``real = scale * (q_u + offset)`` with the unsigned
code ``q_u`` in ``[0, 2^bw - 1]`` and ``offset <= 0``. A signed tensor stores ``q_s = q_u - 2^(bw-1)``;
its ONNX zero point is ``-(offset + 2^(bw-1))``. Per-tensor is per-channel with one channel.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from qdiverge.errors import InputError

INT_BITWIDTHS = range(2, 33)
FLOAT_BITWIDTHS = (8, 16, 32)


@dataclass(frozen=True, eq=False)
class Encoding:
    """A quantizer as the encodings file declares it.

    ``scale`` and ``offset`` are float64 arrays: shape ``(1,)`` per tensor, ``(C,)`` per channel along
    ``axis``, or ``(C, B)`` per block (``B`` blocks of ``block_size`` along ``block_axis``).
    """

    name: str
    bitwidth: int
    scale: np.ndarray = field(repr=False)
    offset: np.ndarray = field(repr=False)
    signed: bool = False
    symmetric: bool = False
    dtype: str = "int"
    axis: int | None = None
    block_size: int | None = None
    block_axis: int | None = None
    is_param: bool = False

    @property
    def is_float(self) -> bool:
        return self.dtype == "float"

    @property
    def per_channel(self) -> bool:
        return self.scale.size > 1 or self.axis is not None

    @property
    def channels(self) -> int:
        return int(self.scale.shape[0]) if self.scale.ndim else 1

    @property
    def num_steps(self) -> int:
        return (1 << self.bitwidth) - 1

    @property
    def qmin(self) -> int:
        """Smallest code of the storage dtype (``-2^(bw-1)`` when signed, else 0)."""
        return -(1 << (self.bitwidth - 1)) if self.signed else 0

    @property
    def qmax(self) -> int:
        return self.qmin + self.num_steps

    @property
    def zero_point(self) -> np.ndarray:
        """Zero point in the storage dtype's own domain (ONNX convention)."""
        return self.qmin - self.offset

    @property
    def min(self) -> np.ndarray:
        return self.offset * self.scale

    @property
    def max(self) -> np.ndarray:
        return (self.offset + self.num_steps) * self.scale

    @property
    def storage_dtype(self) -> np.dtype:
        bits = 8 if self.bitwidth <= 8 else 16 if self.bitwidth <= 16 else 32
        return np.dtype(f"{'int' if self.signed else 'uint'}{bits}")

    @property
    def granularity(self) -> str:
        if self.is_float:
            return "float"
        if self.block_size:
            return "per-block"
        return "per-channel" if self.per_channel else "per-tensor"

    def broadcast(self, values: np.ndarray, rank: int) -> np.ndarray:
        """Reshape per-channel ``values`` (shape ``(C,)``) to broadcast against a rank-``rank`` tensor."""
        if not self.per_channel or self.block_size:
            return values.reshape(-1) if values.size == 1 else values
        axis = self.axis % rank if self.axis is not None else 0
        shape = [1] * rank
        shape[axis] = values.size
        return values.reshape(shape)

    def block_expand(self, values: np.ndarray, tensor_shape: tuple[int, ...]) -> np.ndarray:
        """Expand ``(C, B)`` per-block ``values`` to a full array of ``tensor_shape``."""
        assert self.block_size and self.block_axis is not None and self.axis is not None
        rank = len(tensor_shape)
        c_axis, b_axis = self.axis % rank, self.block_axis % rank
        expanded = np.repeat(values, self.block_size, axis=1)
        order = sorted([c_axis, b_axis])
        if order[0] != c_axis:
            expanded = expanded.T
        shape = [1] * rank
        shape[c_axis], shape[b_axis] = tensor_shape[c_axis], tensor_shape[b_axis]
        return np.broadcast_to(expanded.reshape(shape), tensor_shape)

    def describe(self) -> str:
        if self.is_float:
            return f"fp{self.bitwidth}"
        kind = "sym" if self.symmetric else "asym"
        sign = "int" if self.signed else "uint"
        return f"{sign}{self.bitwidth} {kind} {self.granularity}"


def validate_encoding(enc: Encoding, where: str) -> None:
    """Raise ``InputError`` naming ``where`` and the tensor if ``enc`` cannot be used."""
    prefix = f"{where}: {enc.name!r}"
    if enc.is_float:
        if enc.bitwidth not in FLOAT_BITWIDTHS:
            raise InputError(f"{prefix} float bitwidth {enc.bitwidth} not in {FLOAT_BITWIDTHS}")
        return
    if enc.bitwidth not in INT_BITWIDTHS:
        raise InputError(f"{prefix} bitwidth {enc.bitwidth} not in 2..32")
    if enc.scale.size == 0:
        raise InputError(f"{prefix} has no scale")
    if enc.scale.shape != enc.offset.shape:
        raise InputError(f"{prefix} has {enc.scale.size} scales but {enc.offset.size} offsets")
    if not np.all(np.isfinite(enc.scale)) or np.any(enc.scale <= 0):
        bad = float(enc.scale[~(np.isfinite(enc.scale) & (enc.scale > 0))].ravel()[0])
        raise InputError(f"{prefix} has scale {bad!r}; scales must be finite and > 0")
    # the sim and the targets hold scales as float32: one that rounds to 0 or inf there is unusable
    lo, hi = float(np.finfo(np.float32).tiny), float(np.finfo(np.float32).max)
    if np.any(enc.scale < lo) or np.any(enc.scale > hi):
        bad = float(enc.scale[(enc.scale < lo) | (enc.scale > hi)].ravel()[0])
        raise InputError(f"{prefix} has scale {bad!r}, outside float32's normal range [{lo:.3g}, {hi:.3g}]")
    if not np.all(np.isfinite(enc.offset)):
        raise InputError(f"{prefix} has a non-finite offset")
    # zero must be representable: offset in [-(2^bw - 1), 0] (AIMET gates min/max to include 0)
    lo, hi = float(enc.offset.min()), float(enc.offset.max())
    if lo < -enc.num_steps or hi > 0:
        raise InputError(
            f"{prefix} offset {lo if lo < -enc.num_steps else hi:g} is outside [-{enc.num_steps}, 0]"
            f" for {enc.bitwidth} bits"
        )
    if enc.bitwidth > 16 and not enc.is_param:
        raise InputError(f"{prefix} activation bitwidth {enc.bitwidth} > 16 is not supported")


def make_encoding(
    name: str,
    bitwidth: int,
    scale: float | list[float] | np.ndarray,
    offset: float | list[float] | np.ndarray,
    **kwargs: object,
) -> Encoding:
    """Build an ``Encoding`` from plain values (float64 arrays, per-tensor as shape ``(1,)``)."""
    s = np.atleast_1d(np.asarray(scale, dtype=np.float64))
    o = np.atleast_1d(np.asarray(offset, dtype=np.float64))
    if o.size == 1 and s.size > 1:
        o = np.full_like(s, o.item())
    return Encoding(name=name, bitwidth=bitwidth, scale=s, offset=o, **kwargs)  # type: ignore[arg-type]


def encoding_from_range(
    name: str, vmin: float, vmax: float, bitwidth: int = 8, symmetric: bool = False
) -> Encoding:
    """Derive an encoding from an observed range the way QNN's ``tf`` calibration does.

    The range is widened to include 0 and to at least 1e-4 (QNN's minimum range), then
    ``scale = (max - min) / (2^bw - 1)`` and ``offset = round(min / scale)``.
    """
    vmin, vmax = min(float(vmin), 0.0), max(float(vmax), 0.0)
    steps = (1 << bitwidth) - 1
    if symmetric:
        bound = max(abs(vmin), abs(vmax), 1e-4)
        scale = bound / (steps // 2)
        offset = -float((steps + 1) // 2)
        return make_encoding(name, bitwidth, scale, offset, signed=True, symmetric=True)
    vmax = max(vmax, vmin + 1e-4)
    scale = (vmax - vmin) / steps
    offset = float(max(-steps, min(0, math.floor(vmin / scale + 0.5))))
    return make_encoding(name, bitwidth, scale, offset)


@dataclass
class EncodingSet:
    """All encodings of one model, by tensor name.

    ``activations`` and ``params`` are the quantizers the sim applies. ``int32_bias`` holds exported
    bias encodings the sim never ran with; ``derived`` holds 2.0.0 data-movement entries that had no
    quantizer in the sim. Both are kept so the target side and reports can use them.
    """

    source: str
    version: str
    activations: dict[str, Encoding] = field(default_factory=dict)
    params: dict[str, Encoding] = field(default_factory=dict)
    int32_bias: dict[str, Encoding] = field(default_factory=dict)
    derived: dict[str, Encoding] = field(default_factory=dict)
    sha256: str = ""

    def get(self, name: str) -> Encoding | None:
        return self.activations.get(name) or self.params.get(name)

    def __contains__(self, name: str) -> bool:
        return name in self.activations or name in self.params

    @property
    def all_names(self) -> set[str]:
        return set(self.activations) | set(self.params) | set(self.int32_bias) | set(self.derived)
