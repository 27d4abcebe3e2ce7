"""Local training of a whole cohort as one batch (``engine=cohort``).

The cohort's models are stacked, (clients, *shape) per parameter, and every local SGD
step trains all of them at once: one gather builds every client's minibatch, the
model's batched forward is a handful of batched GEMMs, autograd of the summed
per-client losses gives every client's own gradient (clients share no parameters),
and the SGD update is a few elementwise ops over the stack. Clients with fewer samples
are masked, not looped: a padded sample weighs zero in its client's loss, and a
client with no batch left in this epoch keeps its parameters and momentum bitwise.

The schedule is the client's own, whichever cohort it is in: ``local_epochs`` passes
over its data in minibatches of ``batch_size`` (the last one partial), or exactly
``local_steps`` steps, cycling epochs. Shuffles and dropout masks come from
``seeding`` keyed by (seed, round, client, epoch or step).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from fedbench.sim import seeding
from fedbench.sim.models import ModelSpec


@dataclass(frozen=True)
class LocalSGD:
    """The client optimiser: SGD with momentum (buffer reset every round)."""

    lr: float
    momentum: float
    weight_decay: float
    batch_size: int
    local_epochs: int
    local_steps: int | None


@dataclass
class Cohort:
    """The clients of one chunk and where their data lives."""

    clients: torch.Tensor  # (C,) client ids
    index: torch.Tensor  # (C, width) train-set indices, row i valid in its first n[i]
    n: torch.Tensor  # (C,) samples per client
    shuffle_keys: torch.Tensor  # (C,) int32
    dropout_keys: torch.Tensor  # (C,) int32


@dataclass
class LocalResult:
    params: list[torch.Tensor]  # each (C, *shape): the local models after training
    loss: torch.Tensor  # (C,) mean minibatch training loss over the client's steps
    samples: torch.Tensor  # (C,) samples processed (for the network's compute time)


def _rows(active: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return active.view(-1, *([1] * (like.dim() - 1)))


def train(
    spec: ModelSpec,
    start: list[torch.Tensor],
    X: torch.Tensor,
    y: torch.Tensor,
    cohort: Cohort,
    opt: LocalSGD,
) -> LocalResult:
    """Train every client of ``cohort`` from the global model ``start`` (list of *shape).

    X (N, features), y (N,) the whole training set on the compute device.
    """
    C, width = cohort.index.shape
    dev = X.device
    B = opt.batch_size
    n = cohort.n.to(dev)
    spe = (n + B - 1) // B  # (C,) steps per epoch
    params = [p.detach().unsqueeze(0).expand(C, *p.shape).clone() for p in start]
    bufs = [torch.zeros_like(p) for p in params] if opt.momentum > 0 else None
    drop = (
        seeding.DropoutBits(spec.dropout, B, spec.dropout_units, dev) if spec.dropout > 0 else None
    )
    arange_b = torch.arange(B, device=dev)
    loss_sum = torch.zeros(C, device=dev)
    steps = torch.zeros(C, device=dev)
    samples = torch.zeros(C, dtype=torch.long, device=dev)
    perm, perm_epoch = None, None

    if opt.local_steps is not None:
        schedule = ((t, None) for t in range(opt.local_steps))
    else:
        spe_max = int(spe.max())
        schedule = ((e, s) for e in range(opt.local_epochs) for s in range(spe_max))

    for a, b in schedule:
        if b is None:  # local_steps: step a of every client; epochs cycle per client
            t = torch.full((C,), a, dtype=torch.long, device=dev)
            epoch, pos_in_epoch = t // spe, t % spe
            own_step, active, all_active = t, None, True
        else:  # local_epochs: epoch a, position b of the longest client
            epoch = torch.full((C,), a, dtype=torch.long, device=dev)
            pos_in_epoch = torch.full((C,), b, dtype=torch.long, device=dev)
            own_step = a * spe + b
            active = b < spe
            all_active = bool(active.all())
            if not bool(active.any()):
                continue
        if perm is None or not torch.equal(epoch, perm_epoch):
            perm = seeding.epoch_permutation(cohort.shuffle_keys, epoch, n, width)
            perm_epoch = epoch

        pos = pos_in_epoch.unsqueeze(1) * B + arange_b  # (C, B)
        valid = pos < n.unsqueeze(1)
        local = perm.gather(1, pos.clamp(max=width - 1))
        gidx = cohort.index.gather(1, local)
        xb, yb = X[gidx], y[gidx]  # (C, B, features), (C, B)
        weight = valid.to(X.dtype)
        count = weight.sum(1)
        mask = drop.masks(cohort.dropout_keys, own_step) if drop is not None else None

        leaves = [p.requires_grad_() for p in params]
        logits = spec.forward(leaves, xb, mask)
        ce = F.cross_entropy(logits.flatten(0, 1), yb.flatten(), reduction="none").view(C, B)
        loss = (ce * weight).sum(1) / count.clamp(min=1)
        grads = torch.autograd.grad(loss.sum(), leaves)

        with torch.no_grad():
            params = [p.detach() for p in leaves]
            if all_active:  # in place, fused over the parameter list
                d = list(grads)
                if opt.weight_decay:
                    d = torch._foreach_add(d, params, alpha=opt.weight_decay)
                if bufs is not None:
                    torch._foreach_mul_(bufs, opt.momentum)
                    torch._foreach_add_(bufs, d)
                    d = bufs
                torch._foreach_add_(params, d, alpha=-opt.lr)
            else:  # clients past their last batch keep parameters and momentum bitwise
                new_params, new_bufs = [], []
                for i, (p, g) in enumerate(zip(params, grads, strict=True)):
                    d = g.add(p, alpha=opt.weight_decay) if opt.weight_decay else g
                    if bufs is not None:
                        d = bufs[i].mul(opt.momentum).add_(d)
                        new_bufs.append(torch.where(_rows(active, d), d, bufs[i]))
                    q = p.add(d, alpha=-opt.lr)
                    new_params.append(torch.where(_rows(active, q), q, p))
                params = new_params
                if bufs is not None:
                    bufs = new_bufs
            took = active.to(loss.dtype) if active is not None else 1.0
            loss_sum += loss.detach() * took
            steps += took
            samples += count.to(torch.long)

    return LocalResult(
        params=[p.detach() for p in params],
        loss=loss_sum / steps.clamp(min=1),
        samples=samples,
    )
