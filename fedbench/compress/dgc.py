"""Deep Gradient Compression (Lin et al. 2018, ICLR, "Deep Gradient Compression: Reducing
the Communication Bandwidth for Distributed Training"), as a client-side uplink codec.

Per client and tensor, with the incoming update ``g`` (here the round's model delta):

    g <- g * min(1, clip_norm / ||g||)          local gradient clipping   (sec. 3.2)
    u <- m u + g                                momentum correction, eq. (5)
    v <- v + u                                  accumulation, eq. (5)
    keep = {i : |v_i| >= thr}                   sampled threshold           (sec. 5)
    send v[keep];  v[keep] <- 0;  u[keep] <- 0  momentum factor masking, eq. (6)

``thr`` is the ``round(s k / n)``-th largest ``|v|`` among ``s`` positions drawn from the
client's generator; if more than k positions pass it, the exact top-k of those is taken
(the paper's hierarchical selection), so a message never carries more than k values
(fewer when the sample over-estimates the threshold). Warm-up (sec. 3.3): over a client's
first ``warmup_rounds`` calls the kept fraction is ``max(ratio, 4^-(t+1))``: sparsity
75%, 93.75%, 98.4375%, 99.6%, ... then ``1 - ratio``. ``u``, ``v`` and the call count
live in :class:`DGCState`, one per client and tensor.

DGC keeps its own residual (``v``: everything not yet sent), so wrapping it in
:class:`~fedbench.compress.base.ErrorFeedback` would feed the error back twice (and
``v`` already grows without bound under it); the simulation refuses
``error_feedback: true`` for codecs with ``keeps_residual``.

Wire format: top-k's (sparse.py: flags, k, positions block, values) under codec id 15.
Invariant (tested): the sum of what was sent plus ``v`` equals the sum of the
momentum-corrected inputs ``u_t``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch

from fedbench.compress import ids
from fedbench.compress.base import check_batch
from fedbench.compress.finite import require_finite
from fedbench.compress.selection import check_ratio_k, resolve_k, threshold_sample
from fedbench.compress.sparse import _Sparse, wire_value_dtype

# A threshold estimated from fewer values than this is too noisy at ratio ~ 1e-2.
_MIN_SAMPLE = 1024
# Warm-up sparsity grows 4x a call: kept fraction 1/4, 1/16, 1/64, 1/256 (the paper's).
_WARMUP_BASE = 0.25


@dataclass
class DGCState:
    """One client's DGC state for one tensor: velocity ``u``, accumulation ``v``, calls."""

    u: torch.Tensor  # (*shape) momentum-corrected velocity, masked where sent
    v: torch.Tensor  # (*shape) accumulated, not yet sent (DGC's own residual)
    calls: int = 0  # compress calls so far: position in the warm-up schedule


class DGC(_Sparse):
    """Deep Gradient Compression (Lin et al. 2018): momentum correction, local clipping,
    momentum factor masking, sampled-threshold top-k and warm-up. See the module doc.

    Size: ``header_size(ndim) + 5 + positions_size(n, k') + k' * (4 | 2)`` bytes, with
    ``k' <= k`` the count kept (the message's k field).
    """

    name = "dgc"
    codec_id = ids.codec_id("dgc")
    family = ids.family("dgc")
    biased = True
    randomised = True  # the threshold sample is drawn from the generator
    keeps_residual: ClassVar[bool] = True  # v: refuse an ErrorFeedback wrapper in a run

    def __init__(
        self,
        ratio: float | None = 0.01,
        k: int | None = None,
        momentum: float = 0.9,
        clip_norm: float | None = None,
        warmup_rounds: int = 4,
        sample_ratio: float = 0.01,
        value_dtype: str = "float32",
    ) -> None:
        check_ratio_k(self.name, ratio, k)
        if not (isinstance(momentum, int | float) and 0 <= momentum < 1):
            raise ValueError(f"{self.name}: momentum must be in [0, 1), got {momentum!r}")
        if clip_norm is not None and not (
            isinstance(clip_norm, int | float) and math.isfinite(clip_norm) and clip_norm > 0
        ):
            raise ValueError(f"{self.name}: clip_norm must be null or > 0, got {clip_norm!r}")
        if isinstance(warmup_rounds, bool) or not isinstance(warmup_rounds, int):
            raise ValueError(f"{self.name}: warmup_rounds must be an integer >= 0")
        if warmup_rounds < 0:
            raise ValueError(f"{self.name}: warmup_rounds must be >= 0, got {warmup_rounds}")
        if not (isinstance(sample_ratio, int | float) and 0 < sample_ratio <= 1):
            raise ValueError(f"{self.name}: sample_ratio must be in (0, 1], got {sample_ratio!r}")
        self.ratio, self.k = ratio, k
        self.momentum = float(momentum)
        self.clip_norm = None if clip_norm is None else float(clip_norm)
        self.warmup_rounds = warmup_rounds
        self.sample_ratio = float(sample_ratio)
        self.value_dtype = value_dtype
        self._wire = wire_value_dtype(self.name, value_dtype)

    def init_state(self, shape, *, dtype=torch.float32, device=None) -> DGCState:
        acc = torch.float64 if dtype == torch.float64 else torch.float32
        zeros = torch.zeros(tuple(shape), dtype=acc, device=device)
        return DGCState(u=zeros, v=zeros.clone(), calls=0)

    def kept_at(self, call: int, n: int) -> int:
        """Values a client sends on its ``call``-th call (0-based) for n values: warm-up
        keeps ``max(k, round(n 4^-(call+1)))`` for the first ``warmup_rounds`` calls."""
        final = resolve_k(self.ratio, self.k, n)
        if call < self.warmup_rounds:
            return max(final, resolve_k(_WARMUP_BASE ** (call + 1), None, n))
        return final

    def _select(self, a: torch.Tensor, ks: list[int], gens) -> torch.Tensor:
        """(clients, n) bool mask of what each row sends: sampled threshold, then the
        exact top-k of the candidates if more than k passed. ``a`` = |v| (clients, n)."""
        n = a.shape[1]
        s = min(n, max(_MIN_SAMPLE, math.ceil(self.sample_ratio * n)))
        sample = a if s == n else a.gather(1, threshold_sample(n, s, gens, a.device))
        k = torch.tensor(ks, device=a.device)
        m = torch.clamp(torch.round(k.to(torch.float64) * s / n).long(), 1, s)
        ordered = torch.sort(sample, dim=1, descending=True).values
        thr = ordered.gather(1, (m - 1)[:, None])  # (c, 1)
        keep = a >= thr
        counts = torch.count_nonzero(keep, dim=1).tolist()
        for i, (count, ki) in enumerate(zip(counts, ks, strict=True)):
            if count > ki:  # more candidates than k: the exact top-k, which they contain
                cand = keep[i].nonzero().squeeze(1)  # ascending positions
                vals = a[i, cand]
                kth = torch.topk(vals, ki, sorted=False).values.min()
                above = vals > kth
                tied = (vals == kth).nonzero().squeeze(1)  # ties: the lowest positions
                chosen = torch.cat((cand[above], cand[tied[: ki - int(above.sum())]]))
                keep[i] = False
                keep[i, chosen] = True
        return keep

    def compress_batch(self, x, generators=None, states=None):
        """Encode ``x`` (clients, *shape): clip, accumulate with momentum correction,
        send the sampled-threshold top-k of ``v``, mask ``u`` and ``v`` where sent.

        ``states[i]`` (from :meth:`init_state`) is updated in place; a None state is a
        fresh one used once (first call of the warm-up)."""
        gens, sts = check_batch(self, x, generators, states)
        require_finite(x, f"{self.name} input")
        c, shape = x.shape[0], tuple(x.shape[1:])
        n = math.prod(shape)
        sts = [
            self.init_state(shape, dtype=x.dtype, device=x.device) if s is None else s for s in sts
        ]
        for s in sts:
            if not isinstance(s, DGCState) or tuple(s.u.shape) != shape:
                raise ValueError(
                    f"{self.name}: state does not match a tensor of shape {shape}; "
                    "call init_state(shape) once per client and tensor"
                )
        acc = sts[0].u.dtype if sts else torch.float32
        g = x.reshape(c, n).to(acc)
        if self.clip_norm is not None:
            norm = torch.linalg.vector_norm(g, dim=1, keepdim=True)
            g = g * torch.clamp(self.clip_norm / norm, max=1.0)  # norm 0 -> inf -> 1
        u = self.momentum * torch.stack([s.u.reshape(n).to(x.device) for s in sts]) + g
        v = torch.stack([s.v.reshape(n).to(x.device) for s in sts]) + u
        if n:
            keep = self._select(v.abs(), [self.kept_at(s.calls, n) for s in sts], gens)
        else:
            keep = torch.zeros(c, 0, dtype=torch.bool, device=x.device)
        flat = keep.reshape(-1).nonzero().squeeze(1)
        sent = v.reshape(-1)[flat].to(self._wire)
        if not bool(torch.isfinite(sent).all()):
            raise ValueError(f"{self.name}: values overflow {self._wire}; use value_dtype=float32")
        msgs, decoded = self._emit(
            x, flat.cpu(), torch.count_nonzero(keep, dim=1).tolist(), values=sent
        )
        # Masking (eq. 6). v keeps what the wire dtype rounded away, so the invariant
        # sum(sent) + v == sum(u) holds exactly; for float32 values that is zero.
        v.view(-1)[flat] -= sent.to(acc)
        u.view(-1)[flat] = 0
        for i, s in enumerate(sts):
            s.u, s.v = u[i].reshape(shape), v[i].reshape(shape)
            s.calls += 1
        return msgs, decoded
