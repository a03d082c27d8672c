"""The "why": static detectors that explain sim-vs-target divergence, and what-if transformations.

``run_checks(ctx)`` runs the registered rules (``checks.CHECKS``) and returns their findings in a
deterministic order: errors first, then by the position of the node they attach to, then by rule.
Every finding names its node and tensor in ``numbers["node"]`` / ``numbers["tensor"]``; ``attach``
picks the findings of one ranked layer by either name.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from qdiverge.diagnosis.checks import CHECKS
from qdiverge.diagnosis.context import CheckContext, Limits
from qdiverge.errors import InputError
from qdiverge.reports.model import SEVERITIES, Finding

__all__ = ["CHECKS", "CheckContext", "Limits", "attach", "run_checks"]


def run_checks(ctx: CheckContext, rules: Iterable[str] | None = None) -> list[Finding]:
    """Findings of ``rules`` (default: all registered), sorted by severity, node order, rule."""
    names = list(CHECKS) if rules is None else list(rules)
    unknown = [n for n in names if n not in CHECKS]
    if unknown:
        raise InputError(f"unknown check(s) {', '.join(unknown)}; known: {', '.join(CHECKS)}")
    findings = [f for name in names for f in CHECKS[name](ctx)]
    order = {node.name: node.index for node in ctx.model.nodes}
    rule_order = {name: i for i, name in enumerate(CHECKS)}
    return sorted(
        findings,
        key=lambda f: (
            -SEVERITIES.index(f.severity),
            order.get(str(f.numbers.get("node", "")), len(order)),
            rule_order.get(f.rule, len(rule_order)),
            f.rule,
            str(f.numbers.get("tensor", "")),
            f.message,
        ),
    )


def attach(findings: Sequence[Finding], node_or_tensor: str) -> tuple[Finding, ...]:
    """The findings whose node or tensor is ``node_or_tensor`` (for a ranked layer's "why" column)."""
    return tuple(
        f
        for f in findings
        if node_or_tensor and node_or_tensor in (f.numbers.get("node"), f.numbers.get("tensor"))
    )
