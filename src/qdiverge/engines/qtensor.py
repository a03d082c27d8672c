"""A tensor as an integer engine holds it: storage-domain codes plus the encoding that gives them meaning."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from qdiverge.encodings.schema import Encoding
from qdiverge.quant import dequantize


@dataclass(frozen=True, eq=False)
class QTensor:
    """``codes`` (int64, storage domain) with their ``encoding``; or, for a tensor without an encoding
    (shapes, indices, a float-only output), the plain array in ``codes`` and ``encoding=None``."""

    codes: np.ndarray
    encoding: Encoding | None

    def dequantize(self) -> np.ndarray:
        """Float value computed exactly as the sim does (``quant.dequantize``): both share one grid."""
        if self.encoding is None:
            return self.codes
        return dequantize(self.codes, self.encoding)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.codes.shape)
