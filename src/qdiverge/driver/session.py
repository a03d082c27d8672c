"""What each command does after its options are parsed: load, measure, explain, and build the report.

The CLI only parses options, calls one of these, writes the report and maps the verdict to an exit code.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from qdiverge.diagnosis import CheckContext, attach, run_checks
from qdiverge.diagnosis.whatif import WhatIf
from qdiverge.driver.bisect import Bisector, BisectResult, Progress, StepOutcome
from qdiverge.driver.report import build_report, check_report, run_info
from qdiverge.driver.whatif import run_what_if
from qdiverge.errors import InputError
from qdiverge.loading.inputs import InputSource
from qdiverge.pipeline import QNN_HTP, Workspace
from qdiverge.reports.model import Finding, Report


def parse_modes(spec: str, allowed: Sequence[str]) -> tuple[str, ...]:
    """``"split,layerwise"`` -> ``("split", "layerwise")``; ``InputError`` for anything not in ``allowed``."""
    modes = tuple(m.strip() for m in spec.split(",") if m.strip())
    if not modes or any(m not in allowed for m in modes):
        raise InputError(f"--mode {spec!r}: choose from {', '.join(allowed)}")
    return modes


def findings_for(ws: Workspace) -> list[Finding]:
    """Every static finding for the workspace's model, encodings, config and target profile."""
    return run_checks(CheckContext(ws.model, ws.encodings, ws.profile, ws.config))


def _why(findings: Sequence[Finding], outcome: StepOutcome) -> tuple[Finding, ...]:
    """Findings attached to any node or tensor of a ranked step (fused nodes included), each once."""
    seen: dict[int, Finding] = {}
    for name in (*outcome.nodes, outcome.tensor):
        for f in attach(findings, name):
            seen.setdefault(id(f), f)
    return tuple(seen.values())


def _measure(
    ws: Workspace, dsp, source: InputSource, modes, search_db, progress, batch: int, labels=None
) -> BisectResult:
    outputs = list(ws.model.outputs)
    encodings = {o: dsp.target_encodings.get(o) for o in outputs}
    bisector = Bisector(ws.sim(), dsp, ws.float(), outputs, encodings)
    return bisector.run(source, modes, search_db, progress=progress, batch=batch, labels=labels)


def bisect_report(
    ws: Workspace,
    source: InputSource,
    modes: tuple[str, ...],
    metric: str,
    command: Sequence[str],
    search_db: float | None = None,
    changes: Sequence[WhatIf] = (),
    htp_arch: int = 73,
    progress: Progress | None = None,
    rank_by: str = "contribution",
    labels: np.ndarray | None = None,
) -> tuple[Report, BisectResult]:
    """Run ``qdiverge bisect``: the modes, the "why" of each ranked layer, and the what-ifs."""
    if changes and ws.target == QNN_HTP:
        raise InputError("--what-if re-runs the emulator; it is not available with --target qnn-htp")
    if changes and "split" not in modes:
        raise InputError("--what-if needs split mode (it compares per-layer contributions)")
    if rank_by in ("solo", "isolated") and "layerwise" not in modes:
        raise InputError(f"--rank-by {rank_by} needs layerwise mode")
    if "search" not in modes:  # search votes per sample (the earliest cut any sample crosses)
        ws = ws.batched(source)
    dsp = ws.dsp(source, htp_arch)
    result = _measure(ws, dsp, source, modes, search_db, progress, ws.batch, labels)
    dsp_name = f"qnn-htp:v{htp_arch}" if ws.target == QNN_HTP else f"emulate:{ws.profile.name}"
    info = run_info(ws, source, modes, metric, command, ["sim", dsp_name], rank_by)
    findings = findings_for(ws)
    why = lambda o: _why(findings, o)  # noqa: E731
    report = build_report(result, info, ws.model.outputs, metric, why=why, rank_by=rank_by)
    if "search" in modes:
        found = result.search_first_cut
        step = next((o for o in result.steps if o.index == found), None) if found is not None else None
        search = {
            "threshold_db": float(search_db or 0.0),
            "first_layer": step.node if step else "",
            "step": found,
        }
        report = dataclasses.replace(report, search={k: v for k, v in search.items() if v is not None})
    if changes:
        what_if = tuple(run_what_if(ws, source, c, result, metric) for c in changes)
        report = dataclasses.replace(report, what_if=what_if)
    return report, result


def compare_report(
    ws: Workspace,
    source: InputSource,
    device_outputs: Path,
    layout: str,
    modes: tuple[str, ...],
    metric: str,
    command: Sequence[str],
):
    """Run ``qdiverge compare``: the device's dumps as the DSP side. Returns (report, result, dump summary)."""
    from qdiverge.driver.compare import DeviceSide, log_summary

    device = DeviceSide(device_outputs, ws.emulator(source), layout)
    log_summary(device.summary)
    result = _measure(ws, device, source, modes, None, None, 1)
    info = run_info(ws, source, modes, metric, command, ["sim", f"device:{device_outputs}"])
    findings = findings_for(ws)
    report = build_report(result, info, ws.model.outputs, metric, why=lambda o: _why(findings, o))
    return report, result, device.summary


def check(ws: Workspace, command: Sequence[str]) -> tuple[Report, list[Finding]]:
    """Run ``qdiverge check``: static findings only."""
    findings = findings_for(ws)
    return check_report(ws, findings, command), findings
