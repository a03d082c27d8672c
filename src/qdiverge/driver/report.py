"""Turn a ``BisectResult`` into the ``Report`` the writers and the CI gate read."""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable, Sequence
from pathlib import Path

from qdiverge import __version__
from qdiverge.driver.bisect import BisectResult, StepOutcome
from qdiverge.driver.ranking import rank, ranking_stability
from qdiverge.reports.model import (
    FLAG_DERIVED_ENCODING,
    FLAG_FLOAT_FALLBACK,
    SCHEMA_VERSION,
    Finding,
    LayerResult,
    OutputSummary,
    Report,
    RunInfo,
)

MIN_STABILITY_SAMPLES = 4  # two halves of at least two samples each


def report_flags(step_flags: Sequence[str]) -> tuple[str, ...]:
    """Report flags from the emulator's step flags; fusion already shows in the op column (Conv+Relu)."""
    names = {"float-fallback": FLAG_FLOAT_FALLBACK, "derived-encoding": FLAG_DERIVED_ENCODING}
    return tuple(sorted({names[f.partition(":")[0]] for f in step_flags if f.partition(":")[0] in names}))


def file_sha256(path: Path | None) -> str:
    if path is None or not path.is_file():
        return ""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def build_report(
    result: BisectResult,
    run: RunInfo,
    outputs: Sequence[str],
    metric: str,
    why: Callable[[StepOutcome], tuple[Finding, ...]] | None = None,
    rank_by: str = "contribution",
) -> Report:
    """Rank the steps (``rank_by``, contributions in ``metric``) and package everything as a ``Report``."""
    ranked = rank(result, metric, rank_by=rank_by)
    layers = tuple(
        LayerResult(
            rank=position,
            node=o.node,
            op_type=o.op_type,
            tensor=o.tensor,
            depth=o.index,
            contribution=o.contribution,
            isolated=o.isolated,
            cumulative=o.cumulative,
            split_final=o.split_final,
            solo=o.solo,
            flags=report_flags(o.flags),
            why=why(o) if why else (),
        )
        for position, o in enumerate(ranked, start=1)
    )
    stability = ranking_stability(result, metric) if result.samples >= MIN_STABILITY_SAMPLES else {}
    return Report(
        schema_version=SCHEMA_VERSION,
        run=run,
        summary=output_summary(result, outputs),
        layers=layers,
        stability=stability,
        accuracy=result.accuracy,
    )


def output_summary(result: BisectResult, outputs: Sequence[str]) -> tuple[OutputSummary, ...]:
    """Both gaps per model output: emulator vs sim, sim vs float."""
    return tuple(
        OutputSummary(name, result.final_emu_vs_sim.get(name), result.final_sim_vs_float.get(name))
        for name in outputs
    )


def run_info(
    ws,
    source,
    modes: Sequence[str],
    metric: str,
    command: Sequence[str],
    engines: Sequence[str],
    rank_by: str = "contribution",
) -> RunInfo:
    """Run metadata: hashes and options, no timestamps (identical runs give identical reports)."""
    return RunInfo(
        qdiverge_version=__version__,
        command=tuple(command),
        model_path=str(ws.model.path),
        model_sha256=ws.model.sha256,
        encodings_path=str(ws.encodings_path or ws.model.path),
        encodings_sha256=file_sha256(ws.encodings_path) or ws.model.sha256,
        target="qnn-htp" if ws.target == "qnn-htp" else ws.profile.name,
        target_fields=dataclasses.asdict(ws.profile),
        engines=tuple(engines),
        inputs=source.describe(),
        samples=source.samples,
        seed=source.seed if source.path is None else None,
        modes=tuple(modes),
        metric=metric,
        rank_by=rank_by,
    )


def check_report(ws, findings: Sequence[Finding], command: Sequence[str]) -> Report:
    """A ``Report`` for ``qdiverge check``: one row per node with findings, worst first, no metrics."""
    from qdiverge.loading.inputs import InputSource

    by_node: dict[str, list[Finding]] = {}
    for f in findings:
        by_node.setdefault(str(f.numbers.get("node", "")), []).append(f)
    nodes = {n.name: n for n in ws.model.nodes}
    layers = tuple(
        LayerResult(
            rank=position,
            node=name,
            op_type=nodes[name].op_type if name in nodes else "",
            tensor=str(group[0].numbers.get("tensor", "")),
            depth=nodes[name].index if name in nodes else -1,
            contribution=0.0,
            isolated=None,
            cumulative=None,
            split_final=None,
            why=tuple(group),
        )
        for position, (name, group) in enumerate(by_node.items(), start=1)
    )
    info = run_info(ws, InputSource(ws.model, None, 0, 0), ("check",), "findings", command, ("static",))
    return Report(schema_version=SCHEMA_VERSION, run=info, summary=(), layers=layers)
