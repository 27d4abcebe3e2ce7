"""Hand-written batched training paths, registered per model class.

A fast path replaces ``torch.func`` + autograd in the cohort engine for one class
(exactly that class: a subclass may change ``forward``). It works on parameters stacked
over clients, (clients, *shape), in the module's ``parameters()`` order, and provides

* ``shapes``: the parameter shapes it expects (checked against the module's);
* ``forward(params, x, mask)`` -> logits (clients, batch, classes), differentiable:
  the cohort engine takes autograd of it (``models.stacked``: the conv nets, the LSTM);
* optionally a hand-written backward, used instead of autograd (the MLP's):
  ``forward_train(params, x, mask)`` -> (logits, what ``backward_into`` needs) and
  ``backward_into(params, saved, mask, dlogits, sinks, beta)``:
  ``sinks[k] = beta * sinks[k] + dL/dparams[k]`` in place.

``ModelSpec.check`` refuses a model whose fast path's logits differ from its module's.

``FAST_PATHS`` maps a class to a factory ``module -> fast path``; register with
:func:`register`. The MLP's (three GEMMs forward, five backward, the momentum update
fused in) is here: for matrices this small autograd's bookkeeping costs about as much
as the arithmetic (``benchmarks/bench_engine.py``).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from fedbench.sim.models.nets import MLP, LogReg

FAST_PATHS: dict[type[nn.Module], Callable[[nn.Module], Any]] = {}


def register(cls: type[nn.Module]) -> Callable[[Callable[[nn.Module], Any]], Callable]:
    """Decorator: ``@register(MyNet)`` on a factory ``module -> fast path``."""

    def deco(factory: Callable[[nn.Module], Any]) -> Callable[[nn.Module], Any]:
        FAST_PATHS[cls] = factory
        return factory

    return deco


def fast_path(module: nn.Module) -> Any | None:
    """The fast path registered for ``type(module)`` exactly, or None."""
    factory = FAST_PATHS.get(type(module))
    return None if factory is None else factory(module)


def _linear(w: torch.Tensor, b: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    # h (C, B, in) @ w^T (C, in, out) + b (C, 1, out): one batched GEMM for all clients
    return torch.baddbmm(b.unsqueeze(1), h, w.transpose(1, 2))


class MLPFast:
    """The MLP's batched forward and hand-written backward (ReLU, keep-mask dropout)."""

    def __init__(self, sizes: Sequence[int]) -> None:
        self.sizes = list(sizes)
        self.shapes = []
        for a, b in itertools.pairwise(self.sizes):
            self.shapes += [(b, a), (b,)]

    def forward(
        self, params: Sequence[torch.Tensor], x: torch.Tensor, mask: torch.Tensor | None
    ) -> torch.Tensor:
        h, off = x, 0
        n_layers = len(self.sizes) - 1
        for i in range(n_layers):
            h = _linear(params[2 * i], params[2 * i + 1], h)
            if i < n_layers - 1:
                h = torch.relu(h)
                if mask is not None:
                    width = self.sizes[i + 1]
                    h = h * mask[..., off : off + width]
                    off += width
        return h

    def forward_train(
        self, params: Sequence[torch.Tensor], x: torch.Tensor, mask: torch.Tensor | None
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        # saved[i] is layer i's input: x, then each hidden activation after ReLU and mask
        h, off, saved = x, 0, []
        n_layers = len(self.sizes) - 1
        for i in range(n_layers):
            saved.append(h)
            h = _linear(params[2 * i], params[2 * i + 1], h)
            if i < n_layers - 1:
                h.relu_()
                if mask is not None:
                    width = self.sizes[i + 1]
                    h.mul_(mask[..., off : off + width])
                    off += width
        return h, saved

    def backward_into(
        self,
        params: Sequence[torch.Tensor],
        saved: list[torch.Tensor],
        mask: torch.Tensor | None,
        dlogits: torch.Tensor,
        sinks: Sequence[torch.Tensor],
        beta: float,
    ) -> None:
        """``sinks[k] = beta * sinks[k] + dL/dparams[k]`` in place, for every parameter.

        ``dlogits`` (clients, batch, classes) is dL/dlogits; it may be overwritten.
        ``beta = 0`` ignores the sinks' old values (NaN included).
        """
        # Backprop through y = h W^T + b: dW = dy^T h, db = sum_b dy, dh = dy W; through
        # h = relu(a) * m: da = dh * m where h > 0 (h > 0 iff a > 0 and the unit is kept).
        # Written into the sinks with baddbmm's beta, so the momentum update
        # buf = momentum * buf + grad costs no extra pass over the parameters.
        d = dlogits
        offs = list(itertools.accumulate(self.sizes[1:-1], initial=0))
        for i in range(len(self.sizes) - 2, -1, -1):
            h = saved[i]
            sinks[2 * i].baddbmm_(d.transpose(1, 2), h, beta=beta)
            db = d.sum(1)
            if beta:
                sinks[2 * i + 1].mul_(beta).add_(db)
            else:
                sinks[2 * i + 1].copy_(db)
            if i > 0:
                d = torch.bmm(d, params[2 * i])
                if mask is not None:
                    d.mul_(mask[..., offs[i - 1] : offs[i]])
                d = torch.ops.aten.threshold_backward(d, h, 0)


@register(MLP)
@register(LogReg)
def _mlp(module: nn.Module) -> MLPFast:
    return MLPFast(module.sizes)
