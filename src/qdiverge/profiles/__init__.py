"""Load target profiles: YAML (``yaml.safe_load`` only) validated into the frozen ``Profile`` dataclasses.

``load_profile("htp")`` reads ``targets/htp.yaml`` next to this file; any other argument naming an existing
file (or ending in ``.yaml``/``.yml``) is read as a path. Unknown keys, values outside a field's choices and
wrong types raise ``InputError`` naming the file and the dotted key.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import yaml

from qdiverge.errors import InputError
from qdiverge.fileio import not_found
from qdiverge.profiles.schema import MULTIPLIERS, ROUNDINGS, LutSpec, Profile, RequantSpec

TARGETS_DIR = Path(__file__).parent / "targets"

# allowed values per field name (a field not listed is only type-checked)
CHOICES: dict[str, tuple[Any, ...]] = {
    "accumulator": ("wrap", "saturate"),
    "weight_rounding": ROUNDINGS,
    "bias_rounding": ROUNDINGS,
    "input_rounding": ROUNDINGS,
    "bias_bits": (8, 32),
    "rounding": ROUNDINGS,
    "zero_point_rounding": ROUNDINGS,
    "multiplier": MULTIPLIERS,
    "zero_point": ("after", "folded"),
    "scale_precision": ("float32", "float64"),
    "compute": ("float32", "float64"),
    "eltwise_method": ("tflite", "hexagon_nn", "float"),
    "concat_method": ("requant", "lut", "hexagon_nn"),
    "pool_method": ("requant", "tflite", "hexagon_nn", "float"),
    "resize_method": ("q10", "exact"),
    "derive_missing": ("minmax",),
}


def available_profiles() -> list[str]:
    return sorted(p.stem for p in TARGETS_DIR.glob("*.yaml"))


def _resolve(name_or_path: str | Path) -> Path:
    path = Path(name_or_path)
    if path.is_file() or path.suffix in (".yaml", ".yml"):
        if not path.is_file():
            raise not_found(path, "profile file")
        return path
    candidate = TARGETS_DIR / f"{name_or_path}.yaml"
    if not candidate.is_file():
        raise InputError(
            f"unknown target profile {str(name_or_path)!r}; available: {', '.join(available_profiles())}"
        )
    return candidate


def _check_scalar(value: Any, expected: type, where: str) -> Any:
    # bool is a subclass of int in Python; a YAML `true` must not pass as an integer (or the reverse)
    ok = isinstance(value, expected) and (expected is bool or not isinstance(value, bool))
    if not ok:
        raise InputError(f"{where}: expected {expected.__name__}, got {type(value).__name__} {value!r}")
    return value


def _build(cls: type, data: Any, path: Path, prefix: str) -> Any:
    if not isinstance(data, dict):
        raise InputError(f"{path}: {prefix or 'the profile'} must be a mapping, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    values: dict[str, Any] = {}
    for key, value in data.items():
        where = f"{path}: key '{prefix}{key}'"
        if key not in fields:
            raise InputError(f"{where} is not a known field (known: {', '.join(sorted(fields))})")
        values[key] = _convert(key, fields[key], value, path, f"{prefix}{key}.", where)
        allowed = CHOICES.get(key)
        if allowed is not None and values[key] not in allowed:
            raise InputError(f"{where}: {value!r} is not one of {', '.join(map(str, allowed))}")
    return cls(**values)


def _convert(key: str, f: dataclasses.Field, value: Any, path: Path, prefix: str, where: str) -> Any:
    if f.default is not dataclasses.MISSING:
        default = f.default
    elif f.default_factory is not dataclasses.MISSING:
        default = f.default_factory()
    else:
        default = ""  # required fields (``name``) are strings
    if isinstance(default, (RequantSpec, LutSpec)):
        return _build(type(default), value, path, prefix)
    if isinstance(default, tuple):
        if not isinstance(value, list):
            raise InputError(f"{where}: expected a list, got {type(value).__name__}")
        if key == "fusions":
            out = []
            for item in value:
                if not isinstance(item, list) or len(item) < 2 or not all(isinstance(s, str) for s in item):
                    raise InputError(f"{where}: each fusion must be a list of >= 2 op types, got {item!r}")
                out.append(tuple(item))
            return tuple(out)
        for item in value:
            _check_scalar(item, str, where)
        return tuple(value)
    return _check_scalar(value, type(default), where)


def load_profile(name_or_path: str | Path) -> Profile:
    """The ``Profile`` named (``htp``, ``hexagon-nn``, ``tflite``, ``onnx``) or stored at a path."""
    path = _resolve(name_or_path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: cannot read profile ({exc})") from exc
    except RecursionError:
        raise InputError(f"{path}: YAML nested too deeply to be a profile") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark is not None else ""
        raise InputError(f"{path}: not valid YAML{at}") from exc
    if not isinstance(data, dict):
        raise InputError(f"{path}: a profile must be a YAML mapping")
    data = dict(data)
    data.setdefault("name", path.stem)
    return _build(Profile, data, path, "")
