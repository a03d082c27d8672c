"""Per-tensor dumps of a device run (``qnn-net-run``/``snpe-net-run --debug``), mapped to ONNX names.

Layout (docs/compare.md has the sources): ``OUTPUT_DIR/Result_N/<tensor>.raw``, one directory per line of the
input list, one flat binary file per tensor: float32 by default, the tensor's native dtype with
``--use_native_output_files``. A name with ``/`` may come out as subdirectories, so the path below
``Result_N`` (without ``.raw``) is the dumped name. The QNN converter's generated model code sanitizes names
(every run of non-word characters becomes ``_``, and a name not starting with a letter gets a ``_`` prefix);
SNPE's DLC keeps them. Names are matched exactly first, then in sanitized form.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from qdiverge.encodings.schema import Encoding
from qdiverge.errors import InputError

RESULT_DIR = re.compile(r"^Result_(\d+)$")


def qnn_sanitize(name: str) -> str:
    """The name QNN's converter gives a tensor in the generated model (and so in the dump file names)."""
    clean = re.sub(r"\W+", "_", name)
    return clean if clean[:1].isalpha() else "_" + clean


def result_dirs(root: Path) -> list[Path]:
    """``Result_0, Result_1, ...`` under ``root``, in sample order; InputError if there are none."""
    if not root.is_dir():
        raise InputError(f"{root}: device output directory not found")
    found = sorted(
        (int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := RESULT_DIR.match(p.name))
    )
    if not found:
        raise InputError(f"{root}: no Result_N directories (expected qnn-net-run/snpe-net-run --output_dir)")
    return [p for _, p in found]


def dumped_names(result: Path) -> dict[str, Path]:
    """Dumped tensor name -> file, for one ``Result_N`` directory."""
    return {p.relative_to(result).with_suffix("").as_posix(): p for p in sorted(result.rglob("*.raw"))}


@dataclass
class NameMap:
    """Dumped name -> ONNX tensor, plus what did not match."""

    tensors: dict[str, str] = field(default_factory=dict)
    unmatched: list[str] = field(default_factory=list)
    ambiguous: list[str] = field(default_factory=list)


def match_names(dumped: Iterable[str], onnx_names: Iterable[str]) -> NameMap:
    """Exact match first, then QNN-sanitized and leading-``/``-stripped forms; ambiguous ones are reported."""
    names = list(onnx_names)
    exact = set(names)
    by_form: dict[str, list[str]] = {}
    for name in names:
        for form in {qnn_sanitize(name), name.lstrip("/")}:
            by_form.setdefault(form, []).append(name)
    result = NameMap()
    for d in dumped:
        if d in exact:
            result.tensors[d] = d
            continue
        hits = sorted(set(by_form.get(d, []) + by_form.get(qnn_sanitize(d), [])))
        if len(hits) == 1:
            result.tensors[d] = hits[0]
        elif hits:
            result.ambiguous.append(d)
        else:
            result.unmatched.append(d)
    return result


def read_raw(
    path: Path, shape: tuple[int, ...], enc: Encoding | None, layout: str = "nchw"
) -> tuple[np.ndarray, bool]:
    """The array in ``path`` as ``(values, is_codes)``; dtype from the file size (float32, or native codes).

    ``layout="nhwc"``: rank-4 tensors were dumped channel-last and are transposed back to ONNX's NCHW.
    """
    data = path.read_bytes()
    count = int(np.prod(shape)) if shape else 1
    if len(data) == 4 * count:
        arr, is_codes = np.frombuffer(data, dtype=np.float32), False
    elif enc is not None and not enc.is_float and len(data) * 8 == count * _storage_bits(enc):
        kind = "i" if enc.signed else "u"
        arr, is_codes = np.frombuffer(data, dtype=f"{kind}{_storage_bits(enc) // 8}"), True
    else:
        raise InputError(
            f"{path}: {len(data)} bytes do not hold {count} float32 values or native codes of shape {shape}"
        )
    if layout == "nhwc" and len(shape) == 4:
        n, c, h, w = shape
        return arr.reshape(n, h, w, c).transpose(0, 3, 1, 2).copy(), is_codes
    return arr.reshape(shape).copy(), is_codes


def _storage_bits(enc: Encoding) -> int:
    return 8 if enc.bitwidth <= 8 else 16 if enc.bitwidth <= 16 else 32
