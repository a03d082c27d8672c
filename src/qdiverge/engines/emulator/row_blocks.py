"""Large numpy kernels on blocks of rows at once.

numpy releases the GIL inside its loops, so a kernel whose rows (axis 0: batch items) are independent runs on
one block of rows per core at the same time; onnxruntime's threads are idle while numpy works. Small inputs
run whole (threads cost more than they save below a few hundred thousand elements).
"""

from __future__ import annotations

import itertools
import math
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np

_MIN_ELEMENTS = 1 << 18
_WORKERS = min(os.cpu_count() or 1, 8)
_pool: ThreadPoolExecutor | None = None


def in_row_blocks(
    kernel: Callable[..., np.ndarray], shape: tuple[int, ...], dtype: np.dtype, *arrays: np.ndarray
) -> np.ndarray:
    """``kernel(*arrays)``, whose result has ``shape`` and ``dtype`` with rows along axis 0 that depend only on
    the same rows of the inputs, computed on blocks of rows in parallel. An input without that axis (fewer
    dimensions, or length 1 there) is broadcast, so it goes whole to every block."""
    global _pool
    rows = shape[0] if shape else 1
    if _WORKERS < 2 or rows < 2 or math.prod(shape) < _MIN_ELEMENTS:
        return kernel(*arrays)
    if _pool is None:
        _pool = ThreadPoolExecutor(_WORKERS, thread_name_prefix="qdiverge-rows")
    out = np.empty(shape, dtype)
    bounds = np.linspace(0, rows, min(_WORKERS, rows) + 1).astype(int)

    def block(start: int, stop: int) -> None:
        parts = [a[start:stop] if a.ndim == len(shape) and a.shape[0] == rows else a for a in arrays]
        out[start:stop] = kernel(*parts)

    for future in [_pool.submit(block, i, j) for i, j in itertools.pairwise(bounds)]:
        future.result()
    return out
