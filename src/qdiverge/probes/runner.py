"""Run a probe graph on HTP and return its output codes."""

from __future__ import annotations

import numpy as np

from qdiverge.engines.qnn_htp import QnnHtpEngine
from qdiverge.errors import InputError
from qdiverge.probes.graph import QdqGraph


def run_codes(graph: QdqGraph, feeds: dict[str, np.ndarray], arch: int) -> np.ndarray:
    """The integer codes of the graph's first output, computed on HTP ``arch``."""
    engine = QnnHtpEngine(graph.model(), htp_arch=arch)
    return next(iter(engine.run_quantized(feeds).outputs.values()))


def try_run_codes(graph: QdqGraph, feeds: dict[str, np.ndarray], arch: int) -> np.ndarray | str:
    """Like ``run_codes``, but a graph HTP rejects gives the reason instead of raising."""
    try:
        return run_codes(graph, feeds, arch)
    except InputError as exc:
        return str(exc)
