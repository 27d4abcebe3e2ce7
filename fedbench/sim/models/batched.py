"""Any ``nn.Module`` trained over parameters stacked per client (``torch.func``).

One client's loss is ``functional_call(module, params, (x, mask))`` then cross-entropy;
``vmap(grad_and_value(...))`` runs it for a whole chunk as one batch (a conv with
per-client weights becomes a grouped conv, a linear layer a batched GEMM). Where
``vmap`` cannot batch a module (``nn.LSTM``: no batching rule for ``aten::lstm``;
data-dependent Python control flow; ``.item()``), :func:`probe` finds out once, before
training, the engine logs one line, and the same loss is differentiated client by
client instead: the same numbers to round-off, only slower.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch.func import functional_call, grad_and_value, vmap

if TYPE_CHECKING:
    from fedbench.sim.models.spec import ModelSpec

log = logging.getLogger(__name__)


def call_one(
    spec: ModelSpec, params: Sequence[torch.Tensor], x: torch.Tensor, mask: torch.Tensor | None
) -> torch.Tensor:
    """One client's logits (batch, classes) from its params (each *shape) and x."""
    tensors = dict(zip(spec.names, params, strict=True))
    tensors.update(spec.buffers(x.device))
    args = (x, mask) if spec.takes_mask else (x,)
    return functional_call(spec.template, tensors, args)


def _loss_one(spec, params, x, y, weight, count, mask):
    ce = F.cross_entropy(call_one(spec, params, x, mask), y, reduction="none")
    return ce.mean() if weight is None else (ce * weight).sum() / count


def loss_and_grads(
    spec: ModelSpec,
    params: Sequence[torch.Tensor],
    x: torch.Tensor,
    y: torch.Tensor,
    weight: torch.Tensor | None,
    count: torch.Tensor | None,
    mask: torch.Tensor | None,
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Each client's gradient of its mean minibatch loss and the loss (c,).

    params (c, *shape) each; x (c, B, features), y (c, B); weight (c, B) and count (c,)
    when some batches are partial (padding weighs zero), else None; mask (c, B, units).
    """
    spec.template.train()
    if spec.batchable:
        args = (tuple(params), x, y, weight, count, mask)
        dims = tuple(None if a is None else 0 for a in args)
        fn = vmap(
            grad_and_value(lambda p, *rest: _loss_one(spec, p, *rest)),
            in_dims=dims,
            randomness="different",
        )
        grads, loss = fn(*args)
        return list(grads), loss.detach()
    return _per_client(spec, params, x, y, weight, count, mask)


def _per_client(spec, params, x, y, weight, count, mask):
    """``loss_and_grads`` client by client (the fallback, and the probe's reference)."""
    grads, losses = [[] for _ in params], []
    for i in range(x.shape[0]):
        leaves = [p[i].detach().requires_grad_() for p in params]
        w, n, m = (None if t is None else t[i] for t in (weight, count, mask))
        loss = _loss_one(spec, leaves, x[i], y[i], w, n, m)
        for k, g in enumerate(torch.autograd.grad(loss, leaves)):
            grads[k].append(g)
        losses.append(loss.detach())
    return [torch.stack(g) for g in grads], torch.stack(losses)


def forward(
    spec: ModelSpec,
    params: Sequence[torch.Tensor],
    x: torch.Tensor,
    mask: torch.Tensor | None,
    *,
    train: bool,
) -> torch.Tensor:
    """Logits (c, B, classes) of every client; eval mode unless ``train``."""
    m = spec.template
    was = m.training
    m.train(train)
    try:
        if spec.batchable if train else spec.eval_batchable:
            dims = (0, 0, None if mask is None else 0)
            return vmap(
                lambda p, xi, mi: call_one(spec, p, xi, mi), in_dims=dims, randomness="different"
            )(tuple(params), x, mask)
        return torch.stack(
            [
                call_one(spec, [p[i] for p in params], x[i], None if mask is None else mask[i])
                for i in range(x.shape[0])
            ]
        )
    finally:
        m.train(was)


class _Unbatchable(Exception):
    pass


def probe(
    spec: ModelSpec, x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor | None
) -> tuple[bool, bool]:
    """Whether ``vmap`` batches ``spec``'s training step and its evaluation forward;
    logs one line for each it does not.

    Two clients (different parameters and inputs of x's shape, labels y) run batched
    and one by one. Batched is refused where it raises, where torch falls back to its
    own per-sample loop ("performance drop" warning: no faster, and its gradients are
    not always right, e.g. ``nn.LSTM``'s), or where its numbers differ.
    """
    m, was = spec.template, spec.template.training
    gen = torch.Generator().manual_seed(0)
    start = spec.init(torch.Generator().manual_seed(0))  # the same decision every run
    params = [torch.stack([p, p * 0.9 + 0.01]) for p in start]
    xs = torch.randint(0, 2, (2, *x.shape), generator=gen).to(x.dtype)
    ys = y.unsqueeze(0).expand(2, *y.shape)
    ms = None if mask is None else mask.unsqueeze(0).expand(2, *mask.shape)
    ok = []
    for what in ("trained", "evaluated"):
        try:
            with warnings.catch_warnings(record=True) as caught, torch.random.fork_rng(devices=[]):
                warnings.simplefilter("always")
                if what == "trained":
                    m.train()  # runs in training mode ...
                    loss_and_grads(spec, params, xs, ys, None, None, ms)
                    m.eval()  # ... and gives the per-client gradients (no own randomness)
                    got = loss_and_grads(spec, params, xs, ys, None, None, ms)
                    want = _per_client(spec, params, xs, ys, None, None, ms)
                    pairs = [*zip(got[0], want[0], strict=True), (got[1], want[1])]
                else:
                    m.eval()
                    with torch.no_grad():
                        got = forward(spec, params, xs, None, train=False)
                        spec.eval_batchable = False
                        want = forward(spec, params, xs, None, train=False)
                    pairs = [(got, want)]
            drops = [str(w.message) for w in caught if "performance drop" in str(w.message)]
            if drops:
                raise _Unbatchable(drops[0])
            for a, b in pairs:  # round-off relative to the tensor's scale
                if float((a - b).abs().max()) > 1e-4 * float(b.abs().max()) + 1e-6:
                    raise _Unbatchable("its batched numbers differ from one client at a time")
            ok.append(True)
        except Exception as e:
            text = str(e).strip()
            first = text.splitlines()[0] if text else type(e).__name__
            log.info(
                "model %s cannot be %s batched over clients by torch.func.vmap (%s); "
                "running its clients one at a time (same numbers, slower)",
                spec.label,
                what,
                first[:200],
            )
            ok.append(False)
        finally:
            spec.batchable = spec.eval_batchable = True
    m.train(was)
    return ok[0], ok[1]
