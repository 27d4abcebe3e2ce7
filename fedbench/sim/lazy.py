"""Lazy uploads: a client holds its updates and sends their sum only when it is worth it.

The tutorial's exercise 3 (gradient accumulation), with a norm trigger in the spirit of
LAG (Chen et al. 2018, "LAG: Lazily Aggregated Gradient for Communication-Efficient
Distributed Learning"): client i keeps ``held_i``, the sum of its updates not yet sent.
In a round it adds its fresh update ``delta`` and uploads only if

    ||held_i + delta|| >= threshold * ||last_sent_i||        (L2 over all tensors)

or it has never sent anything; the upload is the whole accumulation, which is then
cleared. A skipped upload costs zero bytes; the server counts it as a zero update with
the client's usual weight, so the sum of what the server applies over the run equals
the sum of every client's updates minus what is still held (nothing is lost, only
delayed). ``threshold`` in (0, 1]: higher => more skipped uploads, staler updates;
above 1 the required size would grow geometrically from send to send, so it is refused.

The held sums persist across rounds (per client, on the compute device). Not combined
with a network ``deadline`` (a late upload would have to be put back into the hold).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from fedbench.sim.uplink import Encode, Metrics, Sent


def validate(cfg: Mapping[str, Any]) -> None:
    """Check ``lazy_threshold``; ValueError naming the key, the value and what is allowed."""
    v = cfg.get("lazy_threshold")
    if v is None:
        return
    if isinstance(v, bool) or not isinstance(v, int | float) or not 0 < v <= 1:
        raise ValueError(f"lazy_threshold={v!r} is invalid: must be null (off) or in (0, 1]")
    if (cfg.get("network") or {}).get("deadline") is not None:
        raise ValueError(
            "lazy_threshold is set together with network.deadline: lazy uploads do not "
            "support deadlines; set one of them to null"
        )


def from_config(cfg: Mapping[str, Any]) -> Lazy | None:
    """The run's :class:`Lazy` or None when ``lazy_threshold`` is null."""
    v = cfg.get("lazy_threshold")
    return None if v is None else Lazy(float(v))


class Lazy:
    """Per-client held updates and the send trigger; one instance serves every client."""

    def __init__(self, threshold: float) -> None:
        if not 0 < threshold <= 1:
            raise ValueError(f"lazy_threshold={threshold!r} is invalid: must be in (0, 1]")
        self.threshold = threshold
        self.held: dict[int, list[torch.Tensor]] = {}  # client -> its unsent sum, per tensor
        self.last_norm: dict[int, float] = {}  # client -> L2 norm of its last upload

    def select(
        self, ids: np.ndarray, deltas: list[torch.Tensor]
    ) -> tuple[list[torch.Tensor], np.ndarray]:
        """Add each client's fresh update to its hold and decide who sends.

        ``deltas`` per tensor (C, *shape), row i for client ``ids[i]``. Returns the
        accumulations (C, *shape) per tensor and the send mask (C,) bool. Senders'
        holds are cleared (their accumulation is what they send); others keep theirs.
        """
        acc = [d.clone() for d in deltas]
        for i, c in enumerate(ids):
            held = self.held.get(int(c))
            if held is not None:
                for a, h in zip(acc, held, strict=True):
                    a[i] += h
        norms = torch.sqrt(sum(a.flatten(1).double().pow(2).sum(1) for a in acc)).cpu().numpy()
        send = np.zeros(len(ids), dtype=bool)
        for i, c in enumerate(ids):
            last = self.last_norm.get(int(c))
            send[i] = last is None or norms[i] >= self.threshold * last
            if send[i]:
                self.held.pop(int(c), None)
                self.last_norm[int(c)] = float(norms[i])
            else:
                self.held[int(c)] = [a[i].clone() for a in acc]
        return acc, send

    def uplink(
        self,
        *,
        ids: np.ndarray,
        deltas: list[torch.Tensor],
        states: list[list[Any]],
        round_: int,
        encode: Encode,
    ) -> tuple[Sent, Metrics]:
        """The uplink hook (``fedbench.sim.uplink``): only senders go through ``encode``.

        Skipped clients get zero bytes and a zero decoded update; their codec state
        (e.g. error-feedback residual) is untouched. Metrics: ``uploads_skipped``.
        """
        acc, send = self.select(ids, deltas)
        msg_bytes = np.zeros(len(ids), dtype=np.int64)
        decoded = [torch.zeros_like(a) for a in acc]
        enc_s = dec_s = 0.0
        metrics: Metrics = {}
        rows = np.flatnonzero(send)
        if len(rows):
            idx = torch.from_numpy(rows).to(acc[0].device)
            sub, metrics = encode(
                ids=ids[rows],
                deltas=[a[idx] for a in acc],
                states=[states[i] for i in rows],
                round_=round_,
            )
            msg_bytes[rows] = sub.nbytes
            enc_s, dec_s = sub.encode_seconds, sub.decode_seconds
            for full, part in zip(decoded, sub.payload, strict=True):
                full[idx] = part
        metrics = {**metrics, "uploads_skipped": int((~send).sum())}
        return Sent(msg_bytes, decoded, enc_s, dec_s), metrics
