"""Local training of a whole cohort as one batch (``engine=cohort``).

The cohort's models are stacked, (clients, *shape) per parameter, and every local SGD
step trains all of them at once: one gather builds every client's minibatch, the
model runs over the stacked parameters, and the gradients come from a hand-written
batched backward registered for the model's class (``models.fast``; the MLP: five
batched GEMMs) or, for any other ``nn.Module``, from ``torch.func``:
``vmap(grad(loss))`` over the chunk, or client by client where ``vmap`` cannot batch
the module (``models.batched``). Clients with fewer samples are masked, not looped: a
padded sample weighs zero in its client's loss, and a client with no batch left in
this epoch is left out of the step, so it keeps its parameters and momentum bitwise.

The schedule is the client's own, whichever cohort it is in: ``local_epochs`` passes
over its data in minibatches of ``batch_size`` (the last one partial), or exactly
``local_steps`` steps, cycling epochs. Shuffles and dropout masks come from
``seeding`` keyed by (seed, round, client, epoch or step).

Speed (``benchmarks/bench_engine.py``): the MLP's backward is written by hand (no
autograd graph) with the momentum update fused into the gradient GEMMs (``beta``), the
dropout masks take four per hash (``seeding.DropoutBits``), and per-step bookkeeping
stays on the host, so a step is ~40 kernel launches whatever the cohort size.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from fedbench.sim import seeding
from fedbench.sim.models import ModelSpec, batched

# Dropout bits are drawn for several local steps at once, about this many bytes at a time:
# larger => fewer kernel launches (what small cohorts pay for), more memory.
MASK_BLOCK_BYTES = 8 << 20


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


def _schedule(n: np.ndarray, opt: LocalSGD):
    """Yield (epoch (C,), position in epoch (C,), own step (C,), active (C,) bool) on
    the host, one per step of the longest client."""
    spe = (n + opt.batch_size - 1) // opt.batch_size  # steps per epoch
    if opt.local_steps is not None:  # step t of every client; epochs cycle per client
        for t in range(opt.local_steps):
            yield t // spe, t % spe, np.full_like(n, t), np.ones(len(n), dtype=bool)
    else:  # epoch a, position b of the longest client
        for a in range(opt.local_epochs):
            for b in range(int(spe.max())):
                active = b < spe
                if active.any():
                    yield np.full_like(n, a), np.full_like(n, b), a * spe + b, active


def as_spec(model: ModelSpec | nn.Module) -> ModelSpec:
    """``model`` itself, or the spec of a bare ``nn.Module`` (checked, no dry run)."""
    if isinstance(model, ModelSpec):
        return model
    spec = ModelSpec(model)
    spec.check()
    return spec


def train(
    spec: ModelSpec | nn.Module,
    start: list[torch.Tensor],
    X: torch.Tensor,
    y: torch.Tensor,
    cohort: Cohort,
    opt: LocalSGD,
) -> LocalResult:
    """Train every client of ``cohort`` from the global model ``start`` (list of *shape).

    X (N, features), y (N,) the whole training set on the compute device. Client i's
    result does not depend on the other clients of the cohort (randomness a user's
    module draws itself excepted: see ``models.spec``).

    Per-step bookkeeping (who is active, where each batch starts, whether it is full)
    lives on the host in numpy; the device sees only the step's tensors.
    """
    spec = as_spec(spec)
    spec.check_params(start, "the global model")
    if spec.fast is not None:
        return _train(spec, start, X, y, cohort, opt)
    # A user's module that draws its own randomness reads torch's global generator:
    # seed it from the chunk's first client, and leave the caller's state untouched.
    devices = [X.device] if X.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(int(cohort.dropout_keys[0]) & 0x7FFFFFFF)
        return _train(spec, start, X, y, cohort, opt)


def _train(
    spec: ModelSpec,
    start: list[torch.Tensor],
    X: torch.Tensor,
    y: torch.Tensor,
    cohort: Cohort,
    opt: LocalSGD,
) -> LocalResult:
    C, width = cohort.index.shape
    dev = X.device
    B = opt.batch_size
    params = [p.detach().unsqueeze(0).expand(C, *p.shape).clone() for p in start]
    n_host = cohort.n.cpu().numpy().astype(np.int64)
    n = cohort.n.to(dev)
    arange_b = torch.arange(B, device=dev)
    # Momentum buffers: the hand-written backward sums into zeroed ones; with autograd a
    # first step that every client takes adopts its gradients (buf = grad exactly, as
    # 0 * momentum + grad is), sparing a fill and a pass of the parameters' size.
    lazy = opt.momentum > 0 and not spec.hand_backward
    bufs = [torch.zeros_like(p) for p in params] if opt.momentum > 0 and not lazy else None
    drop = None
    if spec.dropout > 0:
        drop = seeding.DropoutBits(spec.dropout, B, spec.dropout_units, dev)
        spe = (n_host + B - 1) // B
        most = opt.local_steps if opt.local_steps is not None else opt.local_epochs * int(spe.max())
        steps_range = torch.arange(most, device=dev, dtype=torch.int32)
        # keys of every (client, own step) of the round at once: (C, steps)
        step_keys = seeding.derive(cohort.dropout_keys.unsqueeze(1), steps_range.unsqueeze(0))
        # Bits for several steps at once (fewer, larger kernels), ~MASK_BLOCK_BYTES at a time.
        block = max(1, MASK_BLOCK_BYTES // max(C * B * spec.dropout_units, 1))
        block_start, len_block, bits = 0, 0, None
    loss_sum = torch.zeros(C, device=dev)
    steps_host = np.zeros(C, dtype=np.int64)
    samples_host = np.zeros(C, dtype=np.int64)
    shuffled, shuffled_epoch = None, None

    for epoch, pos, own_step, active in _schedule(n_host, opt):
        if shuffled_epoch is None or not np.array_equal(epoch, shuffled_epoch):
            # Each client's sample indices in this epoch's order, padded to whole batches
            # with sample 0 (a padded position weighs zero).
            perm = seeding.epoch_permutation(
                cohort.shuffle_keys, torch.from_numpy(epoch).to(dev), n, width
            )
            shuffled = cohort.index.gather(1, perm)
            pad = -width % B
            if pad:
                shuffled = F.pad(shuffled, (0, pad))
            shuffled_epoch = epoch

        sel = _rows(active, dev)
        act = np.flatnonzero(active)
        taken = np.minimum(n_host[act] - pos[act] * B, B)  # samples in each active batch
        steps_host[act] += 1
        samples_host[act] += taken
        full = isinstance(sel, slice) and sel == slice(0, C)
        if lazy and bufs is None and not full:
            bufs = [torch.zeros_like(p) for p in params]
        if isinstance(sel, slice):
            p_sub = params if full else [p[sel] for p in params]
            b_sub = bufs if full or bufs is None else [b[sel] for b in bufs]
        else:  # clients interleaved: step a copy of the active rows, write it back below
            p_sub = [p.index_select(0, sel) for p in params]
            b_sub = [b.index_select(0, sel) for b in bufs] if bufs is not None else None
        same_pos = bool(np.all(pos[act] == pos[act[0]]))
        if same_pos:  # everyone at the same position: a slice
            p0 = int(pos[act[0]]) * B
            gidx = shuffled[sel, p0 : p0 + B]
        else:
            at = torch.from_numpy(pos[act] * B).to(dev).unsqueeze(1) + arange_b  # (c, B)
            gidx = shuffled[sel].gather(1, at)
        c = gidx.shape[0]
        flat = gidx.reshape(-1)
        xb = X.index_select(0, flat).view(c, B, -1)  # (c, B, features)
        yb = y.index_select(0, flat).view(c, B)
        weight = count = None  # (c, B) 1 on real samples, 0 on padding; None: all real
        if bool((taken < B).any()):
            count = torch.from_numpy(taken).to(device=dev, dtype=X.dtype)
            weight = (arange_b < count.unsqueeze(1)).to(X.dtype)
        mask = None
        if drop is not None:
            t = int(own_step[act[0]])
            if bool(np.all(own_step[act] == t)):  # one step for all: bits come in blocks
                if not block_start <= t < block_start + len_block:
                    block_start, len_block = t, min(block, len(steps_range) - t)
                    bits = drop.bytes_for(step_keys[:, t : t + len_block])  # (C, S, B, units)
                mask = drop.masks_from_bytes(bits[sel, t - block_start])
            else:
                k = step_keys[sel].gather(1, torch.from_numpy(own_step[act]).to(dev).unsqueeze(1))
                mask = drop.masks_from_bytes(drop.bytes_for(k.reshape(-1)))

        adopt = lazy and bufs is None  # the first step, every client in it
        loss, adopted = _sgd_step(spec, p_sub, b_sub, xb, yb, weight, count, mask, opt, adopt)
        if adopt:
            bufs = adopted

        if not isinstance(sel, slice):
            for whole, sub in zip(params, p_sub, strict=True):
                whole.index_copy_(0, sel, sub)
            if bufs is not None:
                for whole, sub in zip(bufs, b_sub, strict=True):
                    whole.index_copy_(0, sel, sub)
        loss_sum[sel] += loss

    steps = torch.from_numpy(steps_host).to(dev)
    return LocalResult(
        params=params,
        loss=loss_sum / steps.clamp(min=1),
        samples=torch.from_numpy(samples_host).to(dev),
    )


def _sgd_step(
    spec: ModelSpec,
    params: list[torch.Tensor],
    bufs: list[torch.Tensor] | None,
    xb: torch.Tensor,
    yb: torch.Tensor,
    weight: torch.Tensor | None,
    count: torch.Tensor | None,
    mask: torch.Tensor | None,
    opt: LocalSGD,
    adopt: bool = False,
) -> tuple[torch.Tensor, list[torch.Tensor] | None]:
    """One SGD step of every client, in place on ``params`` and ``bufs`` (each (c, *shape)),
    as ``torch.optim.SGD`` does it: d = grad + wd * p; buf = momentum * buf + d;
    p -= lr * buf. ``adopt``: the first step with momentum and no buffers yet (bufs
    None): buf = d, returned. Returns (each client's mean minibatch loss (c,), the
    adopted buffers or None).

    xb (c, B, features), yb (c, B); weight (c, B) and count (c,) when some batches are
    partial (padding weighs zero), else None; mask (c, B, units) dropout or None.
    """
    B = yb.shape[1]
    if not spec.hand_backward:
        if spec.fast is None:  # torch.func over the stacked parameters (models.batched)
            grads, loss = batched.loss_and_grads(spec, params, xb, yb, weight, count, mask)
        else:  # a registered batched forward; autograd of the summed per-client losses
            c = yb.shape[0]
            leaves = [p.detach().requires_grad_() for p in params]
            logits = spec.fast.forward(leaves, xb, mask)
            ce = F.cross_entropy(logits.flatten(0, 1), yb.flatten(), reduction="none").view(c, B)
            loss = ce.mean(1) if weight is None else (ce * weight).sum(1) / count
            grads = list(torch.autograd.grad(loss.sum(), leaves))
            loss = loss.detach()
        with torch.no_grad():
            if opt.weight_decay:
                torch._foreach_add_(grads, params, alpha=opt.weight_decay)
            if adopt:  # buf = d: autograd's fresh gradients become the buffers
                grads = [g if g.is_contiguous() else g.contiguous() for g in grads]
                torch._foreach_add_(params, grads, alpha=-opt.lr)
                return loss, grads
            if bufs is not None:
                torch._foreach_mul_(bufs, opt.momentum)
                torch._foreach_add_(bufs, grads)
                grads = bufs
            torch._foreach_add_(params, grads, alpha=-opt.lr)
        return loss, None

    with torch.no_grad():
        logits, saved = spec.fast.forward_train(params, xb, mask)
        logp = torch.log_softmax(logits, 2)
        target = yb.unsqueeze(2)
        logp_y = logp.gather(2, target)  # (c, B, 1)
        ce = logp_y.squeeze(2).neg()  # (c, B)
        # d(mean CE)/d logits = (softmax - onehot) * weight / count
        dlogits = logp.exp_().scatter_(2, target, logp_y.exp().sub_(1))
        if weight is None:
            loss = ce.mean(1)
            dlogits.mul_(1.0 / B)
        else:
            loss = (ce * weight).sum(1) / count
            dlogits.mul_((weight / count.unsqueeze(1)).unsqueeze(2))
        if bufs is not None:  # buf = momentum * buf + grad, fused into the GEMMs
            spec.fast.backward_into(params, saved, mask, dlogits, bufs, opt.momentum)
            d = bufs
        else:
            d = [torch.empty_like(p) for p in params]
            spec.fast.backward_into(params, saved, mask, dlogits, d, 0.0)
        if opt.weight_decay:  # d = grad + wd * p, inside the momentum sum
            torch._foreach_add_(d, params, alpha=opt.weight_decay)
        torch._foreach_add_(params, d, alpha=-opt.lr)
    return loss, None


def _rows(active: np.ndarray, device: torch.device) -> slice | torch.Tensor:
    """The active clients as a slice when they are contiguous (the engine sorts a chunk
    by size, so they are), else as an index tensor."""
    idx = np.flatnonzero(active)
    if idx[-1] - idx[0] + 1 == len(idx):
        return slice(int(idx[0]), int(idx[-1]) + 1)
    return torch.from_numpy(idx).to(device)
