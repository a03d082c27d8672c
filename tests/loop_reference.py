"""Plain-loop oracles for the vectorized emulator kernels: slow, obvious, Python ints only."""

from __future__ import annotations

import numpy as np


def conv_acc_loop(
    x: np.ndarray,
    x_zero: int,
    wz: np.ndarray,
    strides: tuple[int, int],
    dilations: tuple[int, int],
    pads: tuple[int, int, int, int],
    group: int,
) -> np.ndarray:
    """``acc[n, m, y, x] = sum (x - z_x) * wz`` over in-image taps (2-D codes ``x``, ``wz = w - z_w``)."""
    n_, _, h, w = x.shape
    m, cg, kh, kw = wz.shape
    t, left, bottom, r = pads
    oh = (h + t + bottom - (kh - 1) * dilations[0] - 1) // strides[0] + 1
    ow = (w + left + r - (kw - 1) * dilations[1] - 1) // strides[1] + 1
    mg = m // group
    out = np.zeros((n_, m, oh, ow), dtype=object)
    for n in range(n_):
        for oc in range(m):
            g = oc // mg
            for oy in range(oh):
                for ox in range(ow):
                    total = 0
                    for ic in range(cg):
                        for i in range(kh):
                            for j in range(kw):
                                iy = oy * strides[0] + i * dilations[0] - t
                                ix = ox * strides[1] + j * dilations[1] - left
                                if 0 <= iy < h and 0 <= ix < w:  # padded taps contribute nothing
                                    total += (int(x[n, g * cg + ic, iy, ix]) - x_zero) * int(wz[oc, ic, i, j])
                    out[n, oc, oy, ox] = total
    return out.astype(np.int64)


def conv_transpose_acc_loop(
    x: np.ndarray,
    x_zero: int,
    wz: np.ndarray,
    strides: tuple[int, int],
    pads: tuple[int, int, int, int],
    group: int,
) -> np.ndarray:
    """ConvTranspose sum by scattering each input tap (``wz`` shape (C, M/G, kh, kw)), then cropping pads."""
    n_, c, h, w = x.shape
    _, mg, kh, kw = wz.shape
    cg = c // group
    fh, fw = strides[0] * (h - 1) + kh, strides[1] * (w - 1) + kw
    full = np.zeros((n_, mg * group, fh, fw), dtype=object)
    for n in range(n_):
        for ic in range(c):
            g = ic // cg
            for iy in range(h):
                for ix in range(w):
                    v = int(x[n, ic, iy, ix]) - x_zero
                    for oc in range(mg):
                        for i in range(kh):
                            for j in range(kw):
                                full[n, g * mg + oc, iy * strides[0] + i, ix * strides[1] + j] += v * int(
                                    wz[ic, oc, i, j]
                                )
    t, left, bottom, r = pads
    return full[:, :, t : fh - bottom, left : fw - r].astype(np.int64)
