"""Load everything a command needs, once: model, encodings, quantsim config, target profile, engines."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from qdiverge.encodings.load import load_encodings
from qdiverge.encodings.config import QuantsimConfig, read_quantsim_config, supergroup_internal_tensors
from qdiverge.encodings.schema import EncodingSet
from qdiverge.engines.sim import OrtGraphEngine, float_engine, sim_engine
from qdiverge.errors import InputError
from qdiverge.loading.inputs import InputSource
from qdiverge.loading.model import Model, load_model
from qdiverge.profiles import load_profile
from qdiverge.profiles.schema import Profile

ENGINES = ("float", "sim", "emulate")


@dataclass
class Workspace:
    """A model with its encodings, config and target profile, plus lazily built engines."""

    model: Model
    encodings: EncodingSet
    warnings: list[str]
    config: QuantsimConfig | None
    profile: Profile
    encodings_path: Path | None
    _engines: dict[str, object] = field(default_factory=dict)

    @property
    def supergroup_internal(self) -> dict[str, tuple[str, ...]]:
        return supergroup_internal_tensors(self.config, self.model) if self.config else {}

    def sim(self) -> OrtGraphEngine:
        if "sim" not in self._engines:
            self._engines["sim"] = sim_engine(self.model, self.encodings)
        return self._engines["sim"]  # type: ignore[return-value]

    def float(self) -> OrtGraphEngine:
        if "float" not in self._engines:
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
            for sample in source:
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

            self._engines[key] = Emulator(
                self.model,
                self.encodings,
                self.profile,
                supergroup_internal=self.supergroup_internal,
                calibrate=self.calibrator(source),
            )
        return self._engines[key]


def open_workspace(
    model_path: str | Path,
    encodings_path: str | Path | None,
    config_path: str | Path | None = None,
    input_shapes: dict[str, tuple[int, ...]] | None = None,
    target: str = "htp",
) -> Workspace:
    """Load and cross-check all inputs; every problem becomes one ``InputError`` line."""
    profile = load_profile(target)
    config = read_quantsim_config(config_path) if config_path else None
    if encodings_path is not None and not Path(encodings_path).is_file():
        raise InputError(f"{encodings_path}: encodings file not found")
    model = load_model(model_path, input_shapes)
    model, encodings, warnings = load_encodings(encodings_path, model)
    return Workspace(
        model=model,
        encodings=encodings,
        warnings=warnings,
        config=config,
        profile=profile,
        encodings_path=Path(encodings_path) if encodings_path else None,
    )
