"""Load everything a command needs, once: model, encodings, quantsim config, target profile, engines."""

from __future__ import annotations

import dataclasses
import logging
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from qdiverge.encodings.config import QuantsimConfig, read_quantsim_config, supergroup_internal_tensors
from qdiverge.encodings.load import load_encodings
from qdiverge.encodings.schema import EncodingSet
from qdiverge.engines.sim import OrtGraphEngine, float_engine, sim_engine
from qdiverge.errors import InputError
from qdiverge.fileio import not_found
from qdiverge.loading.inputs import InputSource, Sample
from qdiverge.loading.model import Model, load_model, rebatch
from qdiverge.profiles import load_profile
from qdiverge.profiles.schema import Profile

log = logging.getLogger(__name__)

# per element of every tensor of one sample: the sim's float32 capture plus the emulator's int64 codes
# (bisect keeps both for the whole graph; other commands keep less, so this errs on the safe side)
ACTIVATION_BYTES = 12
MAX_BATCH = 32  # samples per engine call when batching is exact (memory grows with it)
QNN_HTP = "qnn-htp"  # --target value: the real HTP backend (onnxruntime-qnn) as the DSP side


@dataclass
class Workspace:
    """A model with its encodings, config and target profile, plus lazily built engines."""

    model: Model
    encodings: EncodingSet
    warnings: list[str]
    config: QuantsimConfig | None
    profile: Profile
    encodings_path: Path | None
    target: str = "htp"
    batch: int = 1  # samples per engine call (see ``batched``)
    _engines: dict[str, object] = field(default_factory=dict)

    @property
    def supergroup_internal(self) -> dict[str, tuple[str, ...]]:
        return supergroup_internal_tensors(self.config, self.model) if self.config else {}

    def sim(self) -> OrtGraphEngine:
        if "sim" not in self._engines:
            check_memory(self.model, None)
            self._engines["sim"] = sim_engine(self.model, self.encodings)
        return self._engines["sim"]  # type: ignore[return-value]

    def float(self) -> OrtGraphEngine:
        if "float" not in self._engines:
            check_memory(self.model, None)
            self._engines["float"] = float_engine(self.model)
        return self._engines["float"]  # type: ignore[return-value]

    def calibrator(self, source: InputSource):
        """``calibrate(tensors) -> {name: (min, max)}`` over ``source``, from the sim's un-quantized values.

        A converter fills encodings the export lacks from calibration data; the sim's float values
        of those tensors on the inputs in use are the closest thing we have.
        """

        def calibrate(tensors: Iterable[str]) -> dict[str, tuple[float, float]]:
            names = list(tensors)
            ranges: dict[str, tuple[float, float]] = {}
            if not names:
                return ranges
            for sample, _ in source.batches(self.batch):  # padding repeats a sample: min/max unchanged
                values = self.sim().run_raw(sample, names)
                for name, value in values.items():
                    lo, hi = float(np.min(value)), float(np.max(value))
                    old = ranges.get(name)
                    ranges[name] = (min(lo, old[0]), max(hi, old[1])) if old else (lo, hi)
            return ranges

        return calibrate

    def emulator(self, source: InputSource):
        key = "emulate"
        if key not in self._engines:
            from qdiverge.engines.emulator.runner import Emulator

            check_memory(self.model, source)

            self._engines[key] = Emulator(
                self.model,
                self.encodings,
                self.profile,
                supergroup_internal=self.supergroup_internal,
                calibrate=self.calibrator(source),
            )
        return self._engines[key]

    def batched(self, source: InputSource, limit: int | None = None) -> Workspace:
        """A workspace running ``b`` samples per engine call if that gives bit-identical results, else self.

        Small models spend most of a run in per-op dispatch, so one call for ``b`` samples costs about as
        much as one call for one sample. ``b`` is at most ``limit``; a short last batch is padded (and the
        padding never measured);
        the batched graph is trusted only after the sim, the float model and the emulator reproduce the
        per-sample runs of the first batch exactly, every tensor (a Reshape to a constant shape, say, would not).
        """
        limit = MAX_BATCH if limit is None else limit
        # as few calls as possible, then as little padding: 37 samples run as 19 + 18 (one padded)
        calls = -(-source.samples // max(limit, 1))
        size = -(-source.samples // calls)
        if size == 1 or self.target == QNN_HTP or self.batch != 1:
            return self
        try:
            model = rebatch(self.model, size)
        except InputError:
            return self
        candidate = dataclasses.replace(self, model=model, batch=size, _engines={})
        first, _ = next(source.batches(size))
        try:
            same = candidate._reproduces(self, source, first, size)
        except Exception:  # any failure of the batched graph means: run per sample
            log.debug("batched run failed; running one sample at a time", exc_info=True)
            return self
        return candidate if same else self

    def _reproduces(self, single: Workspace, source: InputSource, batch: Sample, size: int) -> bool:
        """Whether this (batched) workspace gives exactly ``single``'s per-sample values on ``batch``."""
        emu, emu1 = self.emulator(source), single.emulator(source)
        names = sorted({t for s in emu1.steps for t in s.outputs} | set(single.model.outputs))
        sim_b = self.sim().run(batch, capture=names)
        float_b = self.float().run(batch)
        codes_b = emu.run(batch, keep="all")

        def row(value: np.ndarray, i: int) -> np.ndarray:  # sample i's rows of a batched array
            rows = value.shape[0] // size
            return value[i * rows : (i + 1) * rows]

        for i in range(size):
            sample = {k: row(v, i) for k, v in batch.items()}
            float_1 = single.float().run(sample)
            if any(not np.array_equal(row(float_b[o], i), v) for o, v in float_1.items()):
                return False
            sim_1 = single.sim().run(sample, capture=names)
            codes_1 = emu1.run(sample, keep="all")
            for name in names:
                if not np.array_equal(row(sim_b[name], i), sim_1[name]):
                    return False
                if name in codes_1 and not np.array_equal(row(codes_b[name].codes, i), codes_1[name].codes):
                    return False
        return True

    def htp(self, source: InputSource, htp_arch: int = 73):
        """The real HTP backend, stepped like the emulator (``qnn-htp``)."""
        key = f"htp:{htp_arch}"
        if key not in self._engines:
            from qdiverge.engines.htp_target import HtpTarget
            from qdiverge.engines.qnn_htp import load_qnn

            load_qnn()  # InputError with the install hint before any work
            plan = self.emulator(source)
            self._engines[key] = HtpTarget(
                self.model, self.encodings, htp_arch, plan=plan, calibrate=self.calibrator(source)
            )
        return self._engines[key]

    def dsp(self, source: InputSource, htp_arch: int = 73):
        """The DSP side ``--target`` names: the real HTP for ``qnn-htp``, else the emulator."""
        return self.htp(source, htp_arch) if self.target == QNN_HTP else self.emulator(source)


def available_memory() -> int | None:
    """``MemAvailable`` from ``/proc/meminfo`` in bytes (None where there is no such file)."""
    try:
        lines = Path("/proc/meminfo").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return None


def _elements(shape: tuple[int, ...]) -> float:
    return float(np.prod(shape, dtype=np.float64))  # float: an absurd --input-shape must not overflow


def _resident_input_bytes(source: InputSource | None) -> float:
    """Input data held in memory as a whole: ``.npz`` arrays are read fully (``.npy`` is memory mapped)."""
    if source is None or source.path is None or source.path.suffix != ".npz":
        return 0.0
    try:
        with zipfile.ZipFile(source.path) as archive:
            return float(sum(info.file_size for info in archive.infolist()))
    except (OSError, zipfile.BadZipFile):
        return 0.0  # the input reader reports an unreadable file itself


def check_memory(model: Model, source: InputSource | None, available: int | None = None) -> None:
    """Refuse a run that cannot fit in memory before it starts swapping.

    The estimate: every tensor of one sample (shapes from the model) times ``ACTIVATION_BYTES``, the
    model outputs of all samples (``run`` stacks them), and input files read whole.
    """
    available = available_memory() if available is None else available
    if available is None:
        return
    activations = sum(_elements(s) for n, s in model.shapes.items() if n not in model.initializers)
    samples = source.samples if source is not None else 1
    outputs = sum(_elements(model.shapes.get(o, ())) for o in model.outputs) * 4 * samples
    need = activations * ACTIVATION_BYTES + outputs + _resident_input_bytes(source)
    if need > available:
        gib = 1 << 30
        raise InputError(
            f"{model.path}: this run needs about {need / gib:.1f} GiB of memory and {available / gib:.1f} GiB"
            " is available; use a smaller --input-shape, fewer --samples or a smaller input file"
        )


def open_workspace(
    model_path: str | Path,
    encodings_path: str | Path | None,
    config_path: str | Path | None = None,
    input_shapes: dict[str, tuple[int, ...]] | None = None,
    target: str = "htp",
) -> Workspace:
    """Load and cross-check all inputs; every problem becomes one ``InputError`` line."""
    # qnn-htp steps the model like the emulator's htp profile, so layers and cuts line up
    profile = load_profile("htp" if target == QNN_HTP else target)
    config = read_quantsim_config(config_path) if config_path else None
    if encodings_path is not None and not Path(encodings_path).is_file():
        raise not_found(encodings_path, "encodings file")
    model = load_model(model_path, input_shapes)
    model, encodings, warnings = load_encodings(encodings_path, model)
    return Workspace(
        model=model,
        encodings=encodings,
        warnings=warnings,
        config=config,
        profile=profile,
        encodings_path=Path(encodings_path) if encodings_path else None,
        target=target,
    )
