"""Model inputs: ``.npy``, ``.npz``, SNPE/QNN ``input_list.txt``, or seeded random data.

Every source yields samples one at a time (a dict input name -> array of the model input's exact
shape), so memory does not grow with the number of samples. ``.npy``/``.npz`` files are memory
mapped and never unpickled.
"""

from __future__ import annotations

import shlex
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from qdiverge.encodings.schema import EncodingSet
from qdiverge.errors import InputError
from qdiverge.fileio import not_found
from qdiverge.loading.model import Model, TensorInfo

Sample = dict[str, np.ndarray]


@dataclass(frozen=True)
class InputSource:
    """A re-iterable description of where samples come from (iterating twice gives the same data)."""

    model: Model
    path: Path | None
    samples: int
    seed: int
    encodings: EncodingSet | None = None

    def describe(self) -> str:
        if self.path is None:
            return f"random (seed {self.seed}, {self.samples} samples, within input encodings)"
        return f"{self.path} ({self.samples} samples)"

    def batches(self, size: int) -> Iterator[tuple[Sample, int]]:
        """``(batch, real)``: samples ``size`` at a time, concatenated along the first axis.

        Engines built for a fixed batch need every batch full, so a short last batch is padded by repeating its
        last sample; ``real`` says how many leading samples are real (the rest must not be measured)."""
        pending: list[Sample] = []
        for sample in self:
            pending.append(sample)
            if len(pending) == size:
                yield _stack(pending), size
                pending = []
        if pending:
            real = len(pending)
            yield _stack(pending + [pending[-1]] * (size - real)), real

    def __iter__(self) -> Iterator[Sample]:
        if self.path is None:
            yield from _random_samples(self.model, self.encodings, self.samples, self.seed)
        elif self.path.suffix == ".npy":
            yield from _npy_samples(self.model, self.path, self.samples)
        elif self.path.suffix == ".npz":
            yield from _npz_samples(self.model, self.path, self.samples)
        else:
            yield from _input_list_samples(self.model, self.path, self.samples)


def _stack(samples: list[Sample]) -> Sample:
    if len(samples) == 1:
        return samples[0]
    return {name: np.concatenate([s[name] for s in samples], axis=0) for name in samples[0]}


def _fit_sample(arr: np.ndarray, info: TensorInfo, where: str) -> np.ndarray:
    if arr.dtype.kind != info.dtype.kind and not (arr.dtype.kind in "iuf" and info.dtype.kind == "f"):
        raise InputError(
            f"{where}: dtype {arr.dtype} does not match model input {info.name!r} ({info.dtype})"
        )
    if arr.size != int(np.prod(info.shape)):
        raise InputError(
            f"{where}: a sample of input {info.name!r} has shape {arr.shape}, the model expects {info.shape}"
        )
    sample = np.ascontiguousarray(arr.reshape(info.shape).astype(info.dtype, copy=False))
    # NaN/inf have no code: the sim and every target quantize them differently, so the comparison is moot
    if sample.dtype.kind == "f" and not np.all(np.isfinite(sample)):
        raise InputError(f"{where}: a sample of input {info.name!r} holds NaN or infinite values")
    return sample


def _split_samples(arr: np.ndarray, info: TensorInfo, where: str) -> tuple[int, int]:
    """(number of samples, elements per sample) for an array whose first axis counts samples."""
    per = int(np.prod(info.shape))
    if tuple(arr.shape) == info.shape:
        return 1, per
    if arr.ndim >= 1 and arr.shape[0] > 0 and int(np.prod(arr.shape[1:])) == per:
        return int(arr.shape[0]), per
    raise InputError(
        f"{where}: shape {arr.shape} does not fit input {info.name!r} {info.shape}"
        f" (expected (N, {', '.join(map(str, info.shape))}) or (N, {', '.join(map(str, info.shape[1:]))}))"
    )


def _load_array(path: Path) -> np.ndarray:
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except ValueError as exc:
        if "pickle" in str(exc).lower() or "python objects" in str(exc).lower():
            raise InputError(
                f"{path}: holds pickled Python objects; refusing to unpickle (save plain arrays)"
            ) from None
        raise InputError(f"{path}: not a readable .npy file ({exc})") from None
    except (OSError, EOFError) as exc:
        raise InputError(f"{path}: not a readable .npy file ({exc})") from None


def _npy_samples(model: Model, path: Path, limit: int) -> Iterator[Sample]:
    if len(model.inputs) != 1:
        raise InputError(
            f"{path}: a .npy file feeds one-input models; this model has inputs {sorted(model.inputs)}"
            " (use .npz)"
        )
    info = next(iter(model.inputs.values()))
    arr = _load_array(path)
    count, per = _split_samples(arr, info, str(path))
    flat = arr.reshape(count, per)
    for i in range(min(count, limit) if limit else count):
        yield {info.name: _fit_sample(np.asarray(flat[i]), info, str(path))}


def _npz_samples(model: Model, path: Path, limit: int) -> Iterator[Sample]:
    try:
        archive = np.load(path, allow_pickle=False)
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as exc:
        raise InputError(f"{path}: not a readable .npz file ({exc})") from None
    with archive:
        missing = sorted(set(model.inputs) - set(archive.files))
        extra = sorted(set(archive.files) - set(model.inputs))
        if missing:
            raise InputError(
                f"{path}: no array for model input(s) {missing}; the file has {sorted(archive.files)}"
            )
        if extra:
            raise InputError(f"{path}: arrays {extra} are not model inputs ({sorted(model.inputs)})")
        try:
            arrays = {name: archive[name] for name in model.inputs}
        except ValueError as exc:
            raise InputError(f"{path}: refusing pickled object arrays ({exc})") from None
    counts = {name: _split_samples(a, model.inputs[name], f"{path}[{name}]")[0] for name, a in arrays.items()}
    if len(set(counts.values())) != 1:
        raise InputError(f"{path}: inputs hold different sample counts {counts}")
    count = next(iter(counts.values()))
    for i in range(min(count, limit) if limit else count):
        yield {
            name: _fit_sample(a.reshape(count, -1)[i], model.inputs[name], f"{path}[{name}]")
            for name, a in arrays.items()
        }


def _parse_list_line(line: str, model: Model, base: Path, where: str) -> dict[str, Path]:
    try:
        tokens = shlex.split(line)
    except ValueError as exc:  # an unclosed quote
        raise InputError(f"{where}: cannot split the line into file names ({exc})") from None
    names = list(model.inputs)
    files: dict[str, Path] = {}
    for position, token in enumerate(tokens):
        name, sep, file = token.partition(":=")
        if not sep:
            if len(tokens) != len(names):
                raise InputError(
                    f"{where}: {len(tokens)} file(s) on the line, the model has {len(names)} inputs"
                )
            name, file = names[position], token
        if name not in model.inputs:
            raise InputError(f"{where}: {name!r} is not a model input ({names})")
        candidate = Path(file) if Path(file).is_absolute() else base / file
        if not candidate.is_file():
            raise InputError(
                f"{where}: raw file {file!r} not found (paths are relative to the list's folder)"
            )
        files[name] = candidate
    if set(files) != set(names):
        raise InputError(f"{where}: missing input(s) {sorted(set(names) - set(files))}")
    return files


def _input_list_samples(model: Model, path: Path, limit: int) -> Iterator[Sample]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: cannot read input list ({exc})") from None
    entries = [(i + 1, ln.strip()) for i, ln in enumerate(lines) if ln.strip() and ln.strip()[0] not in "#%"]
    if not entries:
        raise InputError(f"{path}: the input list names no raw files")
    for count, (lineno, line) in enumerate(entries):
        if limit and count >= limit:
            return
        where = f"{path}:{lineno}"
        sample = {}
        for name, raw in _parse_list_line(line, model, path.parent, where).items():
            info = model.inputs[name]
            need = int(np.prod(info.shape))
            size = raw.stat().st_size
            if size != 4 * need:
                raise InputError(
                    f"{raw}: {size} bytes; input {name!r} {info.shape} needs {need} float32 values"
                    f" ({4 * need} bytes)"
                )
            data = np.fromfile(raw, dtype=np.float32)
            sample[name] = _fit_sample(data, info, str(raw))
        yield sample


def _random_samples(model: Model, encodings: EncodingSet | None, count: int, seed: int) -> Iterator[Sample]:
    rng = np.random.default_rng(seed)
    for _ in range(count):
        sample = {}
        for name, info in model.inputs.items():
            enc = encodings.get(name) if encodings else None
            encoded = enc is not None and not enc.is_float
            lo, hi = (float(enc.min.min()), float(enc.max.max())) if encoded else (-1.0, 1.0)
            if info.dtype.kind == "f":
                sample[name] = rng.uniform(lo, hi, size=info.shape).astype(info.dtype)
            else:
                raise InputError(f"input {name!r} has dtype {info.dtype}; give --inputs for non-float inputs")
        yield sample


def input_source(
    model: Model, path: str | Path | None, samples: int, seed: int, encodings: EncodingSet | None = None
) -> InputSource:
    """Check ``path`` up front (existence, format) and return a re-iterable ``InputSource``."""
    if samples < 0:
        raise InputError(f"--samples must be >= 0, got {samples}")
    if path is None:
        return InputSource(model, None, samples or 1, seed, encodings)
    p = Path(path)
    if not p.is_file():
        raise not_found(p, "input file")
    source = InputSource(model, p, samples, seed, encodings)
    count = sum(1 for _ in source)
    if count == 0:
        raise InputError(f"{p}: holds no samples")
    return InputSource(model, p, count, seed, encodings)


def load_labels(path: str | Path, samples: int) -> np.ndarray:
    """Ground-truth class indices, one per sample, from ``.npy`` (integers) or a text file (one per line)."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{p}: labels file not found")
    if p.suffix == ".npy":
        labels = _load_array(p)
    else:
        try:
            labels = np.array([int(line) for line in p.read_text(encoding="utf-8").split()], dtype=np.int64)
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            raise InputError(f"{p}: expected one integer class index per line ({exc})") from None
    labels = np.asarray(labels)
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels[:, 0]
    if labels.ndim != 1:
        raise InputError(
            f"{p}: labels must be one class index per sample (shape (N,)), got shape {labels.shape}"
        )
    if labels.dtype.kind not in "iu":
        raise InputError(f"{p}: labels must be integer class indices, got dtype {labels.dtype}")
    if labels.size and labels.min() < 0:
        raise InputError(f"{p}: labels must be class indices >= 0, found {labels.min()}")
    if labels.size < samples:
        raise InputError(f"{p}: {labels.size} label(s) for {samples} sample(s)")
    return labels[:samples].astype(np.int64)
