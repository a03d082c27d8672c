"""Integer kernels, one module per op family; importing this package registers every kernel."""

from qdiverge.engines.emulator.kernels import (
    activation,
    conv,
    elementwise,
    matmul,
    pool,
    resize,
    shape,
    softmax,
)

__all__ = ["activation", "conv", "elementwise", "matmul", "pool", "resize", "shape", "softmax"]
