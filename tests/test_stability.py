"""Split-half stability: does a ranking reproduce on the other half of the samples, and do reports say so?"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
from fault_models import fault_case, run_cli
from test_reports import _metrics, make_report

from qdiverge.driver.bisect import BisectResult
from qdiverge.driver.ranking import ranking_stability
from qdiverge.reports import render


def _halves_result(a: list[float], b: list[float]) -> BisectResult:
    """A result whose solo measurements on the two halves have noise ratios ``a`` and ``b``."""

    def metrics(values):  # _metrics(shift) has noise ratio growing with shift
        return [_metrics(v) for v in values]

    return BisectResult(
        steps=[], final_emu_vs_sim={}, final_sim_vs_float={}, solo_halves=(metrics(a), metrics(b))
    )


def test_identical_halves_reproduce_and_reversed_halves_do_not():
    same = ranking_stability(_halves_result([0.1, 0.5, 0.2, 0.9], [0.1, 0.5, 0.2, 0.9]), "sqnr")
    assert same["solo"] == 1.0 and same["solo_top"] == 1.0
    flipped = ranking_stability(_halves_result([0.1, 0.5, 0.2, 0.9], [0.9, 0.2, 0.5, 0.1]), "sqnr")
    assert flipped["solo"] == -1.0 and flipped["solo_top"] == 0.0


def test_an_unreproducible_ranking_is_flagged_with_the_better_one():
    report = make_report()
    run = dataclasses.replace(report.run, rank_by="contribution", modes=("split", "layerwise"))
    noisy = dataclasses.replace(
        report,
        run=run,
        stability={"contribution": 0.1, "contribution_top": 0.0, "solo": 0.9, "solo_top": 1.0},
    )
    text = render(noisy, "table")
    assert (
        "caution: the contribution ranking does not reproduce" in text and "--rank-by solo reproduces" in text
    )
    steady = dataclasses.replace(noisy, stability={"contribution": 0.9, "contribution_top": 1.0})
    assert "caution" not in render(steady, "table")
    assert json.loads(render(noisy, "json"))["stability"]["solo"] == 0.9


def test_an_injected_fault_leads_on_both_halves(tmp_path):
    case = fault_case(tmp_path, "saturate")
    code, out, err = run_cli("-q", "bisect", *case.args(), "--samples", "8", "--format", "json")
    assert code == 0, err
    stability = json.loads(out)["stability"]
    assert stability["contribution_top"] == 1.0 and stability["solo_top"] == 1.0
    assert np.isfinite(stability["contribution"])
