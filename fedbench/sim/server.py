"""The server's optimiser: one place where the aggregated update meets the global model.

Every scheduler (synchronous rounds, FedBuff) hands its aggregated update to
:meth:`ServerOptimizer.step`. FedAvg applies ``x <- x + server_lr * step``; FedAvgM
(Hsu et al. 2019) keeps a momentum buffer, ``m <- beta * m + step``, and applies
``x <- x + server_lr * m``. An adaptive server optimiser (FedAdam, FedYogi; Reddi et al.
2021) is another subclass of the same two methods.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


class Diverged(Exception):
    """Training produced NaN/inf (or values a codec cannot carry); the run stops."""


class ServerOptimizer:
    """FedAvg (``momentum == 0``) or FedAvgM over the model's tensors, in place."""

    def __init__(self, params: Sequence[torch.Tensor], *, lr: float, momentum: float) -> None:
        if not lr > 0:
            raise ValueError(f"server_lr={lr!r} is invalid: must be > 0")
        if not 0 <= momentum < 1:
            raise ValueError(f"server_momentum={momentum!r} is invalid: must be in [0, 1)")
        self.lr = float(lr)
        self.momentum = float(momentum)
        self.buffers = [torch.zeros_like(p) for p in params] if momentum > 0 else None

    @torch.no_grad()
    def step(
        self, params: Sequence[torch.Tensor], steps: Sequence[torch.Tensor], what: str
    ) -> None:
        """Apply ``steps`` (one per tensor, the aggregated update) to ``params``.

        Raises Diverged when the model becomes non-finite; ``what`` names the step in
        the message (``round 3``, ``server step 7``).
        """
        for k, p in enumerate(params):
            step = steps[k]
            if self.buffers is not None:
                self.buffers[k].mul_(self.momentum).add_(step)
                step = self.buffers[k]
            p.add_(step, alpha=self.lr)
        if not all(bool(torch.isfinite(p).all()) for p in params):
            raise Diverged(f"{what}: the global model became non-finite")
