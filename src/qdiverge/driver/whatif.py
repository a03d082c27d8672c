"""Re-run the bisection with a what-if change applied and put it on the original run's scale."""

from __future__ import annotations

import dataclasses

from qdiverge.diagnosis.whatif import WhatIf
from qdiverge.driver.bisect import Bisector, BisectResult
from qdiverge.driver.ranking import divergence_added, rank
from qdiverge.driver.report import output_summary
from qdiverge.loading.inputs import InputSource
from qdiverge.pipeline import Workspace
from qdiverge.reports.model import WhatIfLayer, WhatIfResult


def run_what_if(
    ws: Workspace, source: InputSource, change: WhatIf, base: BisectResult, metric: str, top: int = 10
) -> WhatIfResult:
    """Apply ``change`` to both sides it affects (an encoding change is a re-export: the sim changes too;
    a profile change is a converter option: only the DSP side changes) and measure again in split mode."""
    encodings, profile = change.apply(ws.encodings, ws.profile, ws.model)
    changed = dataclasses.replace(ws, encodings=encodings, profile=profile, _engines={})
    emu = changed.emulator(source)
    outputs = list(ws.model.outputs)
    bisector = Bisector(
        changed.sim(), emu, ws.float(), outputs, {o: emu.target_encodings.get(o) for o in outputs}
    )
    result = bisector.run(source, ("split",), batch=changed.batch)
    total = divergence_added(base, metric)
    after = {o.nodes or (o.tensor,): o.contribution for o in rank(result, metric, total=total)}
    ranked_before = rank(base, metric)
    layers = tuple(
        WhatIfLayer(node=o.node, before=o.contribution, after=after.get(o.nodes or (o.tensor,), 0.0))
        for o in ranked_before[:top]
    )
    return WhatIfResult(spec=change.spec, summary=output_summary(result, outputs), layers=layers)
