"""2x2 max-pooling (stride 2) for the cohort's conv nets: compiled CPU kernels.

On a CPU, ``F.max_pool2d`` of a contiguous NCHW tensor is a slow generic loop: for the
small CNN's first activation of a 10-client cohort, (32, 160, 28, 28), it took ~20 ms
where this kernel takes ~0.6 ms (one thread), and it was a third of a training step.
Same values and the same gradient routing as ``F.max_pool2d(x, 2)``, ties included:
the first maximum in the window's row-major scan takes the gradient, as torch's does
(tested bit for bit). Other devices, dtypes or layouts use ``F.max_pool2d`` itself.
"""

from __future__ import annotations

import numba as nb
import numpy as np
import torch
import torch.nn.functional as F

_OPTS = {"cache": True, "nogil": True, "error_model": "numpy", "boundscheck": False}


@nb.njit(**_OPTS)
def _forward(x, out, arg):
    """x (P, H, W) -> out (P, H//2, W//2) window maxima, arg their 0..3 scan positions."""
    planes, ho, wo = out.shape
    for p in range(planes):
        for i in range(ho):
            r0, r1 = x[p, 2 * i], x[p, 2 * i + 1]
            o, a = out[p, i], arg[p, i]
            for j in range(wo):
                m, k = r0[2 * j], 0
                if r0[2 * j + 1] > m:
                    m, k = r0[2 * j + 1], 1
                if r1[2 * j] > m:
                    m, k = r1[2 * j], 2
                if r1[2 * j + 1] > m:
                    m, k = r1[2 * j + 1], 3
                o[j], a[j] = m, k


@nb.njit(**_OPTS)
def _backward(g, arg, gx):
    """gx (P, H, W): each window's gradient g at its arg position, 0 elsewhere (a fill,
    then one store a window: 2x faster than writing all four)."""
    planes, ho, wo = g.shape
    gx[:] = 0.0
    for p in range(planes):
        for i in range(ho):
            gi, a = g[p, i], arg[p, i]
            for j in range(wo):
                k = a[j]
                gx[p, 2 * i + (k >> 1), 2 * j + (k & 1)] = gi[j]


class _MaxPool2(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        b, c, h, w = x.shape
        planes = x.detach().reshape(b * c, h, w).numpy()
        out = np.empty((b * c, h // 2, w // 2), dtype=np.float32)
        arg = np.empty(out.shape, dtype=np.uint8)
        _forward(planes, out, arg)
        ctx.arg, ctx.shape = arg, (b, c, h, w)
        return torch.from_numpy(out).view(b, c, h // 2, w // 2)

    @staticmethod
    def backward(ctx, g):
        b, c, h, w = ctx.shape
        gx = np.empty((b * c, h, w), dtype=np.float32)
        grad = g.contiguous().reshape(b * c, h // 2, w // 2).numpy()
        _backward(grad, ctx.arg, gx)
        return torch.from_numpy(gx).view(b, c, h, w)


def max_pool2(x: torch.Tensor) -> torch.Tensor:
    """``F.max_pool2d(x, 2)`` of (B, C, H, W), compiled on the CPU for contiguous fp32."""
    if x.device.type != "cpu" or x.dtype != torch.float32 or not x.is_contiguous():
        return F.max_pool2d(x, 2)
    if x.shape[2] < 2 or x.shape[3] < 2:
        return F.max_pool2d(x, 2)  # torch's own error for a window larger than the map
    return _MaxPool2.apply(x)
