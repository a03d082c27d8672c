"""Data-movement kernels: codes pass through unchanged and so do encodings.

A target executes these ops on the stored integers without touching scale or zero point; the graph
runner gives their outputs the input's encoding. Only when the binding declares a *different* output
encoding (the export quantized the output on its own) are the moved codes rescaled to it
(``moves_codes``). ``Concat`` requantizes each input whose encoding differs from the output's, as a
target must, and ``Pad`` quantizes its constant pad value once, at prepare.
Index-like inputs (shapes, starts, indices, pads) are read from constants at prepare time when
they are initializers, else taken from the int64 arrays the runner passes at run time.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from qdiverge.engines.emulator.fixed_point import round_to_int
from qdiverge.engines.emulator.kernels.rescale import (
    RescaleParams,
    encoding_of,
    prepare_rescale,
    rescale,
    same_encoding,
)
from qdiverge.engines.emulator.registry import Binding, Unsupported, kernel


def moves_codes(cls: type) -> type:
    """Wrap a data-movement kernel: rescale its output(s) when an output encoding differs from the input's."""
    inner_prepare, inner_run = cls.prepare, cls.run

    def prepare(b: Binding) -> tuple[Any, tuple[RescaleParams | None, ...]]:
        enc_in = encoding_of(b, 0)
        after = tuple(
            None
            if enc_in is None or out is None or same_encoding(enc_in, out)
            else prepare_rescale(enc_in, out, b.profile)
            for out in b.output_encodings
        )
        return inner_prepare(b), after

    def run(params: tuple[Any, tuple[RescaleParams | None, ...]], *inputs: np.ndarray | None) -> Any:
        inner, after = params
        y = inner_run(inner, *inputs)
        outs = y if isinstance(y, tuple) else (y,)
        moved = tuple(o if a is None else rescale(a, o) for o, a in zip(outs, after, strict=True))
        return moved if isinstance(y, tuple) else moved[0]

    cls.prepare, cls.run = staticmethod(prepare), staticmethod(run)
    return cls


def _const_ints(b: Binding, i: int) -> list[int] | None:
    """Input ``i`` as a list of ints when it is a constant, else ``None`` (absent inputs too)."""
    if i >= len(b.constants) or b.constants[i] is None:
        return None
    return [int(v) for v in np.asarray(b.constants[i]).reshape(-1)]


def _ints(prepared: list[int] | None, runtime: np.ndarray | None) -> list[int] | None:
    if prepared is not None:
        return prepared
    return None if runtime is None else [int(v) for v in np.asarray(runtime).reshape(-1)]


def _axes_param(b: Binding, input_index: int) -> list[int] | None:
    """Axes from the attribute (older opsets) or from a constant input (opset 13+)."""
    attr = b.node.attr("axes")
    return list(attr) if attr is not None else _const_ints(b, input_index)


@kernel("Identity")
@moves_codes
class Identity:
    @staticmethod
    def prepare(b: Binding) -> None:
        return None

    @staticmethod
    def run(params: None, x: np.ndarray) -> np.ndarray:
        return x


@kernel("Reshape")
@moves_codes
class Reshape:
    @staticmethod
    def prepare(b: Binding) -> tuple[list[int] | None, bool]:
        return _const_ints(b, 1), bool(b.node.attr("allowzero", 0))

    @staticmethod
    def run(
        params: tuple[list[int] | None, bool], x: np.ndarray, shape: np.ndarray | None = None
    ) -> np.ndarray:
        target, allowzero = params
        dims = _ints(target, shape)
        assert dims is not None, "Reshape needs a shape"
        if not allowzero:
            dims = [x.shape[i] if d == 0 else d for i, d in enumerate(dims)]
        return x.reshape(dims)


@kernel("Flatten")
@moves_codes
class Flatten:
    @staticmethod
    def prepare(b: Binding) -> int:
        return int(b.node.attr("axis", 1))

    @staticmethod
    def run(axis: int, x: np.ndarray) -> np.ndarray:
        axis = axis % x.ndim if x.ndim else 0
        return x.reshape(int(np.prod(x.shape[:axis])), -1)


@kernel("Transpose")
@moves_codes
class Transpose:
    @staticmethod
    def prepare(b: Binding) -> list[int] | None:
        perm = b.node.attr("perm")
        return None if perm is None else list(perm)

    @staticmethod
    def run(perm: list[int] | None, x: np.ndarray) -> np.ndarray:
        return np.transpose(x, perm)


class _AxesInput:
    """Squeeze/Unsqueeze: axes from the attribute or constant input 1 at prepare, else input 1 at run time."""

    @staticmethod
    def prepare(b: Binding) -> list[int] | None:
        return _axes_param(b, 1)


@kernel("Squeeze")
@moves_codes
class Squeeze(_AxesInput):
    @staticmethod
    def run(axes: list[int] | None, x: np.ndarray, runtime_axes: np.ndarray | None = None) -> np.ndarray:
        axes = _ints(axes, runtime_axes)
        if axes is None:
            return np.squeeze(x)
        return np.squeeze(x, axis=tuple(a % x.ndim for a in axes))


@kernel("Unsqueeze")
@moves_codes
class Unsqueeze(_AxesInput):
    @staticmethod
    def run(axes: list[int] | None, x: np.ndarray, runtime_axes: np.ndarray | None = None) -> np.ndarray:
        axes = _ints(axes, runtime_axes)
        assert axes is not None, "Unsqueeze needs axes"
        rank = x.ndim + len(axes)
        return np.expand_dims(x, tuple(sorted(a % rank for a in axes)))


@dataclass(frozen=True)
class SliceParams:
    starts: list[int] | None
    ends: list[int] | None
    axes: list[int] | None
    steps: list[int] | None


@kernel("Slice")
@moves_codes
class Slice:
    @staticmethod
    def prepare(b: Binding) -> SliceParams:
        if b.node.attr("starts") is not None:  # opset < 10: attributes
            return SliceParams(
                list(b.node.attr("starts")), list(b.node.attr("ends")), b.node.attr("axes"), None
            )
        return SliceParams(_const_ints(b, 1), _const_ints(b, 2), _const_ints(b, 3), _const_ints(b, 4))

    @staticmethod
    def run(p: SliceParams, x: np.ndarray, *runtime: np.ndarray | None) -> np.ndarray:
        extra = [*runtime, None, None, None, None]
        starts, ends = _ints(p.starts, extra[0]), _ints(p.ends, extra[1])
        axes, steps = _ints(p.axes, extra[2]), _ints(p.steps, extra[3])
        assert starts is not None and ends is not None, "Slice needs starts and ends"
        axes = list(range(len(starts))) if axes is None else axes
        steps = [1] * len(starts) if steps is None else steps
        index = [slice(None)] * x.ndim
        for start, end, axis, step in zip(starts, ends, axes, steps, strict=True):
            # Python slicing clamps out-of-range starts/ends exactly as ONNX specifies
            # (INT64_MAX / INT64_MIN included), for positive and negative steps alike.
            index[axis % x.ndim] = slice(start, end, step)
        return x[tuple(index)]


@kernel("Split")
@moves_codes
class Split:
    @staticmethod
    def prepare(b: Binding) -> tuple[int, list[int] | None, int]:
        split = b.node.attr("split")
        sizes = list(split) if split is not None else _const_ints(b, 1)
        return int(b.node.attr("axis", 0)), sizes, len(b.node.outputs)

    @staticmethod
    def run(
        params: tuple[int, list[int] | None, int], x: np.ndarray, runtime_split: np.ndarray | None = None
    ) -> tuple[np.ndarray, ...]:
        axis, sizes, outputs = params
        sizes = _ints(sizes, runtime_split)
        axis %= x.ndim
        if sizes is None:  # equal parts; the last one smaller when not divisible (opset 18)
            chunk = -(-x.shape[axis] // outputs)
            sizes = [min(chunk, x.shape[axis] - i * chunk) for i in range(outputs)]
        return tuple(np.split(x, np.cumsum(sizes)[:-1], axis=axis))


@kernel("Gather")
@moves_codes
class Gather:
    @staticmethod
    def prepare(b: Binding) -> tuple[int, list[int] | None, tuple[int, ...]]:
        indices = b.constants[1] if len(b.constants) > 1 else None
        values = None if indices is None else [int(v) for v in np.asarray(indices).reshape(-1)]
        shape = () if indices is None else np.asarray(indices).shape
        return int(b.node.attr("axis", 0)), values, shape

    @staticmethod
    def run(
        params: tuple[int, list[int] | None, tuple[int, ...]],
        x: np.ndarray,
        indices: np.ndarray | None = None,
    ) -> np.ndarray:
        axis, values, shape = params
        idx = np.asarray(values, dtype=np.int64).reshape(shape) if values is not None else np.asarray(indices)
        axis %= x.ndim
        idx = np.where(idx < 0, idx + x.shape[axis], idx)  # ONNX allows negative indices
        return np.take(x, idx, axis=axis)


@dataclass(frozen=True)
class PadParams:
    mode: str
    pads: list[int] | None
    axes: list[int] | None
    pad_code: int


def _pad_code(b: Binding, value: float) -> int:
    """Code of the constant pad value in the data encoding: the zero point for 0, else z + R(v/s)."""
    enc = b.input_encodings[0]
    if enc is None:
        raise Unsupported("Pad: data input has no encoding")
    if enc.per_channel:
        raise Unsupported("Pad: per-channel data encoding")
    zero = int(enc.zero_point.reshape(-1)[0])
    if value == 0.0:
        return zero
    v = np.array([value / float(enc.scale.reshape(-1)[0])], dtype=np.float64)
    code = int(round_to_int(v, b.profile.rescale.rounding)[0]) + zero
    return int(np.clip(code, enc.qmin, enc.qmax))


@kernel("Pad")
@moves_codes
class Pad:
    @staticmethod
    def prepare(b: Binding) -> PadParams:
        mode = b.node.attr("mode", "constant")
        if isinstance(mode, bytes):
            mode = mode.decode()
        if mode not in ("constant", "edge", "reflect", "wrap"):
            raise Unsupported(f"Pad mode {mode!r}")
        pads = b.node.attr("pads")
        pads = list(pads) if pads is not None else _const_ints(b, 1)
        value = b.node.attr("value")
        if value is None and len(b.constants) > 2 and b.constants[2] is not None:
            value = float(np.asarray(b.constants[2]).reshape(-1)[0])
        elif value is None and len(b.node.inputs) > 2 and b.node.inputs[2]:
            raise Unsupported("Pad: constant_value computed at run time")
        axes = _const_ints(b, 3)
        return PadParams(mode, pads, axes, _pad_code(b, float(value or 0.0)) if mode == "constant" else 0)

    @staticmethod
    def run(p: PadParams, x: np.ndarray, *runtime: np.ndarray | None) -> np.ndarray:
        extra = [*runtime, None, None, None]
        pads = _ints(p.pads, extra[0])
        assert pads is not None, "Pad needs pads"
        axes = _ints(p.axes, extra[2])
        axes = list(range(x.ndim)) if axes is None else [a % x.ndim for a in axes]
        n = len(axes)
        widths = [(0, 0)] * x.ndim
        for k, axis in enumerate(axes):
            widths[axis] = (pads[k], pads[k + n])
        # Negative pads crop: pad with the positive parts, then slice the negative parts off.
        grow = [(max(lo, 0), max(hi, 0)) for lo, hi in widths]
        if p.mode == "constant":
            y = np.pad(x, grow, mode="constant", constant_values=p.pad_code)
        else:
            y = np.pad(x, grow, mode=p.mode)
        crop = tuple(slice(-min(lo, 0), y.shape[i] + min(hi, 0)) for i, (lo, hi) in enumerate(widths))
        return y[crop]


@kernel("Concat")
class Concat:
    @staticmethod
    def prepare(b: Binding) -> tuple[int, list[RescaleParams | None]]:
        out = b.output_encodings[0]
        if out is None:
            raise Unsupported("Concat: output has no encoding")
        steps = [
            prepare_rescale(encoding_of(b, i), out, b.profile, b.profile.concat_method)
            for i in range(len(b.node.inputs))
        ]
        return int(b.node.attr("axis")), steps

    @staticmethod
    def run(params: tuple[int, Sequence[RescaleParams | None]], *xs: np.ndarray) -> np.ndarray:
        axis, steps = params
        parts = [x if step is None else rescale(step, x) for step, x in zip(steps, xs, strict=True)]
        return np.concatenate(parts, axis=axis % parts[0].ndim)
