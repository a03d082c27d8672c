"""Run a probe graph on HTP and return its output codes."""

from __future__ import annotations

import numpy as np

from qdiverge.engines.qnn_htp import QnnHtpEngine
from qdiverge.probes.graph import QdqGraph


def run_codes(graph: QdqGraph, feeds: dict[str, np.ndarray], arch: int) -> np.ndarray:
    """The integer codes of the graph's first output, computed on HTP ``arch``."""
    engine = QnnHtpEngine(graph.model(), htp_arch=arch)
    return next(iter(engine.run_quantized(feeds).outputs.values()))

