"""``qdiverge compare``: a real device's per-tensor dumps as the DSP side of the bisection driver.

The device has already run, so ``DeviceSide.run`` hands out the dumps of ``Result_0, Result_1, ...`` in
the order the input list gives the samples. Layers are the emulator's steps (same names and cuts as
``bisect``); cumulative mode compares each dumped tensor with the sim, split mode feeds the device's
tensors into the sim suffix. Layerwise mode would need the device to run single ops: not available.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from qdiverge.engines.qtensor import QTensor
from qdiverge.errors import InputError
from qdiverge.loading.device_dumps import NameMap, dumped_names, match_names, read_raw, result_dirs
from qdiverge.quant import quantize_aimet

log = logging.getLogger("qdiverge")
COMPARE_MODES = ("split", "cumulative")


@dataclass
class DumpSummary:
    """What the dumps held, against the tensors the comparison wants."""

    results: int
    matched: int
    unmatched: list[str]
    ambiguous: list[str]
    missing: list[str]  # wanted tensors (step outputs, inputs) with no dump


class DeviceSide:
    """Device dumps under ``root`` behind the Bisector's DSP-side interface (``plan``: the emulator)."""

    name = "device"

    def __init__(self, root: Path, plan, layout: str = "nchw"):
        self.model = plan.model
        self.steps = list(plan.steps)
        self.target_encodings = dict(plan.target_encodings)
        self.layout = layout
        self.results = result_dirs(root)
        first = dumped_names(self.results[0])
        self.names: NameMap = match_names(first, self.model.tensor_names)
        wanted = [*self.model.inputs, *(o for s in self.steps for o in s.outputs)]
        have = set(self.names.tensors.values())
        self.summary = DumpSummary(
            results=len(self.results),
            matched=len(self.names.tensors),
            unmatched=list(self.names.unmatched),
            ambiguous=list(self.names.ambiguous),
            missing=[t for t in dict.fromkeys(wanted) if t not in have],
        )
        lost = [o for o in self.model.outputs if o not in have]
        if lost:
            raise InputError(f"{self.results[0]}: no dump of model output(s) {', '.join(lost)}")
        self._next = 0

    def available(self, tensor: str) -> bool:
        return tensor in self.names.tensors.values()

    def _load(self, path: Path, tensor: str) -> QTensor:
        enc = self.target_encodings.get(tensor)
        shape = self.model.shapes.get(tensor)
        if shape is None:
            raise InputError(f"{path}: tensor {tensor!r} has no static shape; pass --input-shape")
        arr, is_codes = read_raw(path, tuple(shape), enc, self.layout)
        if enc is None or enc.is_float:
            return QTensor(arr.astype(np.float32), None)
        # a float dump is the device's dequantized codes; re-quantizing on the same grid recovers them
        codes = arr.astype(np.int64) if is_codes else quantize_aimet(arr, enc).astype(np.int64)
        return QTensor(codes, enc)

    def run(self, feeds: Mapping[str, np.ndarray], keep: str = "outputs") -> dict[str, QTensor]:
        """The next ``Result_N``'s tensors (``feeds`` only fix the order: one call per sample)."""
        if self._next >= len(self.results):
            raise InputError(
                f"{self.results[0].parent}: {len(self.results)} Result_N directories, but more input samples"
            )
        result = self.results[self._next]
        self._next += 1
        files = dumped_names(result)
        wanted = (
            self.names.tensors
            if keep == "all"
            else {d: t for d, t in self.names.tensors.items() if t in self.model.outputs}
        )
        values = {t: self._load(files[d], t) for d, t in wanted.items() if d in files}
        lost = [o for o in self.model.outputs if o not in values]
        if lost:
            raise InputError(f"{result}: no dump of model output(s) {', '.join(lost)}")
        return values

    def run_step(self, step, inputs):
        raise InputError("layerwise mode needs single-op device runs; compare offers split, cumulative")


def log_summary(summary: DumpSummary) -> None:
    """Unmatched and missing tensors are worth a warning, never an error."""
    if summary.unmatched:
        first = summary.unmatched[0]
        log.warning(f"{len(summary.unmatched)} dumped tensor(s) match no ONNX tensor (first: {first})")
    if summary.ambiguous:
        log.warning(f"dumped name(s) matching several ONNX tensors, left out: {summary.ambiguous[:3]}")
    if summary.missing:
        log.warning(
            f"{len(summary.missing)} layer tensor(s) have no dump (fused on the device, or not dumped;"
            f" first: {summary.missing[0]}); their layers get no device values and no cut"
        )
