"""Shared fixtures."""

from __future__ import annotations

import pytest

from qdiverge.engines.emulator import compiled


@pytest.fixture(params=[False, True], ids=["numpy", "compiled"])
def jit(request):
    """Run the test with the emulator's compiled kernels off, then on (skipped without numba)."""
    if request.param and compiled.numba is None:
        pytest.skip("numba (the fast extra) is not installed")
    previous = compiled.set_enabled(request.param)
    yield request.param
    compiled.set_enabled(previous)
