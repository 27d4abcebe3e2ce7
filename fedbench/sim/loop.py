"""The per-client reference (``engine=loop``): one ``nn.Module`` and one
``torch.optim.SGD`` per client, trained in a Python loop.

Same maths as :mod:`fedbench.sim.cohort` — the same schedule, shuffles and dropout
masks (both read them from ``seeding``) — but written the plain way, so the batched
engine can be tested against it. It runs the model's own ``nn.Module`` (a copy), in
training mode, with the engine's keep-mask as ``forward(x, mask)`` where the module
takes one (``ModelSpec.takes_mask``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fedbench.sim import seeding
from fedbench.sim.cohort import Cohort, LocalResult, LocalSGD, as_spec
from fedbench.sim.models import ModelSpec


def train(
    spec: ModelSpec | nn.Module,
    start: list[torch.Tensor],
    X: torch.Tensor,
    y: torch.Tensor,
    cohort: Cohort,
    opt: LocalSGD,
) -> LocalResult:
    """Train each client of ``cohort`` in turn from ``start``; see ``cohort.train``."""
    spec = as_spec(spec)
    spec.check_params(start, "the global model")
    dev = X.device
    B = opt.batch_size
    module = spec.module().to(dev).train()
    devices = [dev] if dev.type == "cuda" else []
    drop = (
        seeding.DropoutBits(spec.dropout, B, spec.dropout_units, dev) if spec.dropout > 0 else None
    )
    out_params: list[list[torch.Tensor]] = [[] for _ in start]
    losses, samples = [], []
    for i in range(len(cohort.clients)):
        with torch.no_grad():
            for p, v in zip(module.parameters(), start, strict=True):
                p.copy_(v)
        sgd = torch.optim.SGD(
            module.parameters(), lr=opt.lr, momentum=opt.momentum, weight_decay=opt.weight_decay
        )
        # A module's own randomness (not the engine's masks) reads the global generator.
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(int(cohort.dropout_keys[i]) & 0x7FFFFFFF)
            loss_sum, seen = _client(spec, module, sgd, X, y, cohort, i, drop, opt)
        for k, p in enumerate(module.parameters()):
            out_params[k].append(p.detach().clone())
        losses.append(loss_sum)
        samples.append(seen)
    return LocalResult(
        params=[torch.stack(ps) for ps in out_params],
        loss=torch.tensor(losses, dtype=torch.float32, device=dev),
        samples=torch.tensor(samples, dtype=torch.long, device=dev),
    )


def _client(
    spec: ModelSpec,
    module: nn.Module,
    sgd: torch.optim.Optimizer,
    X: torch.Tensor,
    y: torch.Tensor,
    cohort: Cohort,
    i: int,
    drop: seeding.DropoutBits | None,
    opt: LocalSGD,
) -> tuple[float, int]:
    """Client ``i``'s local steps on ``module``: (mean minibatch loss, samples seen)."""
    dev, B = X.device, opt.batch_size
    n = int(cohort.n[i])
    idx = cohort.index[i, :n]
    spe = (n + B - 1) // B
    total = opt.local_steps if opt.local_steps is not None else opt.local_epochs * spe
    loss_sum, seen, perm = 0.0, 0, None
    for t in range(total):
        epoch, s = divmod(t, spe)
        if s == 0 or perm is None:
            perm = seeding.epoch_permutation(
                cohort.shuffle_keys[i : i + 1],
                torch.tensor([epoch], device=dev),
                torch.tensor([n], device=dev),
                n,
            )[0]
        batch = idx[perm[s * B : (s + 1) * B]]
        mask = None
        if drop is not None:
            step = torch.tensor([t], device=dev)
            mask = drop.masks(cohort.dropout_keys[i : i + 1], step)[0, : len(batch)]
        logits = module(X[batch], mask) if spec.takes_mask else module(X[batch])
        loss = F.cross_entropy(logits, y[batch])
        sgd.zero_grad()
        loss.backward()
        sgd.step()
        loss_sum += float(loss.detach())
        seen += len(batch)
    return loss_sum / max(total, 1), seen
