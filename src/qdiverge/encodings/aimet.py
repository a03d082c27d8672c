"""Read AIMET encodings JSON (versions 0.6.1, 1.0.0, 2.0.0 and 2.1.0) into an unbound ``EncodingSet``.

"Unbound" means the file has been checked on its own, without the model: per-channel entries of
0.6.1/1.0.0 have no axis yet, 1.0.0 blockwise scales are still the flat (out, block) list, 2.0.0
blockwise scales are still in ONNX's blocked layout, and 2.0.0 entries all sit in ``activations``
(the format has no param/activation split). ``bind.bind_encodings`` settles all of that against the
model. 2.0.0 ``int32`` entries are exported biases the sim never applied: they go to ``int32_bias``.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any

import numpy as np

from qdiverge.encodings.qdq import encoding_from_zero_point
from qdiverge.encodings.schema import Encoding, EncodingSet, validate_encoding
from qdiverge.errors import InputError, UnsupportedError
from qdiverge.fileio import read_json

VERSIONS = ("0.6.1", "1.0.0", "2.0.0", "2.1.0")
ENC_TYPES_100 = ("PER_TENSOR", "PER_CHANNEL", "PER_BLOCK", "LPBQ")
_ONNX_INT = re.compile(r"^(u?)int(\d+)$")


class _Entry:
    """Error context for one entry: every message names the file, the section and the tensor."""

    def __init__(self, path: Path, section: str, name: str):
        self.path, self.section, self.name = path, section, name

    def fail(self, problem: str, error: type[InputError] = InputError) -> InputError:
        return error(f"{self.path}: {self.section} entry {self.name!r}: {problem}")

    def field(self, obj: dict, key: str, default: Any = ...) -> Any:
        if key in obj:
            return obj[key]
        if default is ...:
            raise self.fail(f"missing field {key!r}")
        return default

    def integer(self, value: Any, what: str) -> int:
        if isinstance(value, bool) or not isinstance(value, int | float) or not float(value).is_integer():
            raise self.fail(f"{what} must be an integer, got {value!r}")
        return int(value)

    def boolean(self, value: Any, what: str) -> bool:
        # 0.6.1 writes the strings "True"/"False"; later writers use JSON booleans
        if isinstance(value, bool):
            return value
        if value in ("True", "False"):
            return value == "True"
        raise self.fail(f'{what} must be true/false or "True"/"False", got {value!r}')

    def numbers(self, value: Any, what: str) -> np.ndarray:
        """A JSON number or (nested) list of numbers as a float64 array."""
        for x in _flatten(value):
            if isinstance(x, bool) or not isinstance(x, int | float):
                raise self.fail(f"{what} must hold numbers, got {x!r}")
        try:
            return np.asarray(value, dtype=np.float64)
        except ValueError:
            raise self.fail(f"{what} is a ragged list") from None


def _flatten(value: Any) -> Any:
    if isinstance(value, list):
        for item in value:
            yield from _flatten(item)
    else:
        yield value


def read_encodings_json(path: str | Path) -> EncodingSet:
    """Parse and check an AIMET encodings file; raise ``InputError`` naming the entry on any problem."""
    path = Path(path)
    data, raw = read_json(path, "encodings file")
    if not isinstance(data, dict):
        raise InputError(f"{path}: expected a JSON object at the top level, got {type(data).__name__}")
    version = detect_version(data, path)
    encset = EncodingSet(source=str(path), version=version, sha256=hashlib.sha256(raw).hexdigest())
    if version in ("0.6.1", "1.0.0"):
        if "activation_encodings" not in data and "param_encodings" not in data:
            raise InputError(f"{path}: version {version} needs 'activation_encodings' or 'param_encodings'")
        for section, is_param in (("activation_encodings", False), ("param_encodings", True)):
            entries = data.get(section, {} if version == "0.6.1" else [])
            for enc in _read_legacy_section(path, version, section, entries, is_param):
                _add(encset, enc, path, section, encset.params if is_param else encset.activations)
    else:
        entries = data.get("encodings")
        if not isinstance(entries, list):
            raise InputError(f"{path}: version {version} needs an 'encodings' list")
        for i, entry in enumerate(entries):
            enc = _read_200(path, i, entry)
            target = encset.int32_bias if enc.bitwidth == 32 else encset.activations
            _add(encset, enc, path, "encodings", target)
    return encset


def detect_version(data: dict, path: Path) -> str:
    """The ``version`` key, else AIMET's own rule: dict sections are 0.6.1, lists of 1.0.0 entries 1.0.0."""
    if "version" in data:
        version = data["version"]
        if version not in VERSIONS:
            raise InputError(
                f"{path}: unknown encodings version {version!r}; supported: {', '.join(VERSIONS)}"
            )
        return version
    if "encodings" in data:
        return "2.0.0"
    sections = [data[k] for k in ("activation_encodings", "param_encodings") if k in data]
    if not sections:
        raise InputError(
            f"{path}: no 'version', 'encodings', 'activation_encodings' or 'param_encodings' key;"
            " not an AIMET encodings file"
        )
    if all(isinstance(s, dict) for s in sections):
        return "0.6.1"
    first = next((s[0] for s in sections if isinstance(s, list) and s), None)
    if isinstance(first, dict) and "y_scale" in first:
        return "2.0.0"
    if all(isinstance(s, list) for s in sections):
        return "1.0.0"
    raise InputError(
        f"{path}: cannot tell the encodings version (mixed dict/list sections, no 'version' key)"
    )


def _add(encset: EncodingSet, enc: Encoding, path: Path, section: str, target: dict[str, Encoding]) -> None:
    if enc.name in encset.all_names:
        raise InputError(f"{path}: {section}: tensor {enc.name!r} has more than one encoding")
    validate_encoding(enc, f"{path}: {section}")
    target[enc.name] = enc


def _read_legacy_section(
    path: Path, version: str, section: str, entries: Any, is_param: bool
) -> list[Encoding]:
    if version == "0.6.1":
        if not isinstance(entries, dict):
            raise InputError(f"{path}: '{section}' must be an object keyed by tensor name in version 0.6.1")
        return [_read_061(_Entry(path, section, name), value, is_param) for name, value in entries.items()]
    if not isinstance(entries, list):
        raise InputError(f"{path}: '{section}' must be a list of entries in version 1.0.0")
    out = []
    for i, entry in enumerate(entries):
        name = entry.get("name") if isinstance(entry, dict) else None
        if not isinstance(name, str) or not name:
            raise InputError(f"{path}: {section}[{i}] has no 'name' string")
        out.append(_read_100(_Entry(path, section, name), entry, is_param))
    return out


def _fp16(ctx: _Entry, bitwidth: int, is_param: bool) -> Encoding:
    if bitwidth != 16:
        raise ctx.fail(
            f"float encoding with bitwidth {bitwidth} is not supported (only fp16)", UnsupportedError
        )
    return Encoding(ctx.name, 16, np.ones(1), np.zeros(1), dtype="float", is_param=is_param)


def _integral_offsets(ctx: _Entry, offset: np.ndarray) -> None:
    if offset.size and not np.all(np.isfinite(offset)):
        raise ctx.fail("offset is not finite")
    if not np.all(offset == np.round(offset)):
        bad = offset[offset != np.round(offset)][0]
        raise ctx.fail(f"offset {bad!r} is not an integer")


def _read_061(ctx: _Entry, value: Any, is_param: bool) -> Encoding:
    if isinstance(value, dict) and value and set(value) <= {"input", "output"}:
        raise ctx.fail(
            "entries keyed by module with input/output slots are aimet-torch's <prefix>_torch.encodings;"
            " give the <prefix>.encodings written next to it (keyed by ONNX tensor names)"
        )
    if not isinstance(value, list) or not value or not all(isinstance(c, dict) for c in value):
        raise ctx.fail("expected a non-empty list of per-channel objects")
    dtype = ctx.field(value[0], "dtype", "int")
    bitwidth = ctx.integer(ctx.field(value[0], "bitwidth"), "bitwidth")
    if dtype == "float":
        return _fp16(ctx, bitwidth, is_param)
    if dtype != "int":
        raise ctx.fail(f'dtype must be "int" or "float", got {dtype!r}')
    if any(ctx.integer(ctx.field(c, "bitwidth"), "bitwidth") != bitwidth for c in value):
        raise ctx.fail("channels have different bitwidths")
    sym = {ctx.boolean(ctx.field(c, "is_symmetric"), "is_symmetric") for c in value}
    if len(sym) != 1:
        raise ctx.fail("channels disagree on is_symmetric")
    # min/max are ignored: aimet-onnx 2.x recomputes them from scale/offset on load
    scale = ctx.numbers([ctx.field(c, "scale") for c in value], "scale")
    offset = ctx.numbers([ctx.field(c, "offset") for c in value], "offset")
    _integral_offsets(ctx, offset)
    signed = sym.pop()
    return Encoding(ctx.name, bitwidth, scale, offset, signed=signed, symmetric=signed, is_param=is_param)


def _read_100(ctx: _Entry, entry: dict, is_param: bool) -> Encoding:
    dtype = ctx.field(entry, "dtype")
    bitwidth = ctx.integer(ctx.field(entry, "bw"), "bw")
    if dtype == "FLOAT":
        return _fp16(ctx, bitwidth, is_param)
    if dtype != "INT":
        raise ctx.fail(f'dtype must be "INT" or "FLOAT", got {dtype!r}')
    enc_type = ctx.field(entry, "enc_type")
    if enc_type == "VECTOR":
        raise ctx.fail("VECTOR (GPTVQ) encodings are not supported", UnsupportedError)
    if enc_type not in ENC_TYPES_100:
        raise ctx.fail(f"enc_type {enc_type!r} is not one of {', '.join(ENC_TYPES_100)}")
    sym = ctx.boolean(ctx.field(entry, "is_sym"), "is_sym")
    scale = ctx.numbers(ctx.field(entry, "scale"), "scale")
    offset = ctx.numbers(ctx.field(entry, "offset"), "offset")
    if scale.ndim != 1 or offset.ndim != 1 or scale.size == 0:
        raise ctx.fail("scale and offset must be non-empty flat lists")
    if scale.size != offset.size:
        raise ctx.fail(f"has {scale.size} scales but {offset.size} offsets")
    _integral_offsets(ctx, offset)
    if "zero_point_shift" in entry:
        offset = offset + ctx.numbers(entry["zero_point_shift"], "zero_point_shift")
    if enc_type == "PER_TENSOR" and scale.size != 1:
        raise ctx.fail(f"PER_TENSOR entry has {scale.size} scales")
    block_size = None
    if enc_type in ("PER_BLOCK", "LPBQ"):
        block_size = ctx.integer(ctx.field(entry, "block_size"), "block_size")
        if block_size <= 0:
            raise ctx.fail(f"block_size must be positive, got {block_size}")
    if enc_type == "LPBQ":
        return _lpbq_100(ctx, entry, bitwidth, sym, scale, block_size, is_param)
    return Encoding(
        ctx.name, bitwidth, scale, offset, signed=sym, symmetric=sym, block_size=block_size, is_param=is_param
    )


def _lpbq_100(
    ctx: _Entry,
    entry: dict,
    bitwidth: int,
    sym: bool,
    scale: np.ndarray,
    block_size: int | None,
    is_param: bool,
) -> Encoding:
    """LPBQ: per-block integer scale times per-channel float scale, on the *compressed* signed grid."""
    compressed = ctx.integer(ctx.field(entry, "compressed_bw"), "compressed_bw")
    if not sym:
        raise ctx.fail("LPBQ entries must have is_sym true")
    if not 2 <= compressed <= bitwidth:
        raise ctx.fail(f"compressed_bw {compressed} must be in 2..bw ({bitwidth})")
    ints = ctx.numbers(ctx.field(entry, "per_block_int_scale"), "per_block_int_scale")
    if ints.ndim != 1 or ints.size == 0 or ints.size % scale.size:
        raise ctx.fail(
            f"per_block_int_scale has {ints.size} values, not a multiple of the {scale.size} channels"
        )
    if not np.all(ints == np.round(ints)) or np.any(ints < 1):
        raise ctx.fail("per_block_int_scale must hold positive integers")
    effective = (ints.reshape(scale.size, -1) * scale[:, None]).reshape(-1)  # float64, as AIMET does
    offset = np.full_like(effective, -float(1 << (compressed - 1)))
    return Encoding(
        ctx.name,
        compressed,
        effective,
        offset,
        signed=True,
        symmetric=True,
        block_size=block_size,
        is_param=is_param,
    )


def _read_200(path: Path, index: int, entry: Any) -> Encoding:
    name = entry.get("name") if isinstance(entry, dict) else None
    if not isinstance(name, str) or not name:
        raise InputError(f"{path}: encodings[{index}] has no 'name' string")
    ctx = _Entry(path, "encodings", name)
    dtype = ctx.field(entry, "output_dtype")
    match = _ONNX_INT.match(dtype) if isinstance(dtype, str) else None
    if match is None:
        if isinstance(dtype, str) and dtype.startswith(("float", "bfloat")):
            raise ctx.fail(f"output_dtype {dtype!r} (scaled float) is not supported", UnsupportedError)
        raise ctx.fail(f"output_dtype must look like int8/uint16/..., got {dtype!r}")
    signed, bitwidth = match.group(1) == "", int(match.group(2))
    y_scale = ctx.field(entry, "y_scale", None)
    if isinstance(y_scale, dict):  # 2.1.0 LPBQ: {"x": int scales, "x_scale": float scales, "axis": ...}
        scale = ctx.numbers(ctx.field(y_scale, "x"), "y_scale.x") * ctx.numbers(
            ctx.field(y_scale, "x_scale"), "y_scale.x_scale"
        )
    elif "per_block_int_scale" in entry:
        ints = ctx.numbers(entry["per_block_int_scale"], "per_block_int_scale")
        floats = ctx.numbers(ctx.field(entry, "per_channel_float_scale"), "per_channel_float_scale")
        try:
            scale = ints * floats
        except ValueError:
            raise ctx.fail(
                f"per_block_int_scale {ints.shape} and per_channel_float_scale {floats.shape}"
                " do not broadcast"
            ) from None
    elif y_scale is None:
        raise ctx.fail("missing field 'y_scale'")
    else:
        scale = ctx.numbers(y_scale, "y_scale")
    if scale.size == 0:
        raise ctx.fail("y_scale is empty")
    zp = ctx.numbers(entry["y_zero_point"], "y_zero_point") if "y_zero_point" in entry else None
    if zp is not None and not np.all(zp == np.round(zp)):
        raise ctx.fail("y_zero_point must hold integers")
    axis = ctx.integer(entry["axis"], "axis") if entry.get("axis") is not None else None
    block_size = (
        ctx.integer(entry["block_size"], "block_size") if entry.get("block_size") is not None else None
    )
    if block_size is not None and (block_size <= 0 or axis is None):
        raise ctx.fail("blockwise entries need a positive block_size and an axis")
    try:
        return encoding_from_zero_point(
            name, bitwidth, signed, scale, zp, axis=axis, block_size=block_size, is_param=bitwidth == 32
        )
    except ValueError as exc:
        raise ctx.fail(str(exc)) from None
