"""Server-side aggregation of one step's uplink messages.

An aggregator collects, chunk by chunk, what the cohort sent and its weights, and
returns the step per tensor (weights divided by their total). The default, :class:`Mean`,
is FedAvg's sample-weighted mean of the decoded updates. A codec with a server side of its
own provides its aggregator through ``codec.server_aggregator(params, num_clients)``
(EF21's running sum of the clients' estimates, ``fedbench.compress.ef21``; the majority
vote, ``fedbench.compress.majority``), or merges raw messages through
``codec.aggregate``: FetchSGD's count sketches are summed as sketches, with momentum and
error feedback kept in sketch space (:class:`Merge`).

``decodes`` tells the uplink whether to decode messages before :meth:`add` (the mean
needs tensors, a sketch merger the bytes). :func:`check_run` refuses the run settings
such an aggregator cannot follow, before any work.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import numpy as np
import torch


class Aggregator(Protocol):
    decodes: bool  # True: add() receives decoded tensors (C, *shape); False: the messages

    def add(self, k: int, payload: Any, weights: torch.Tensor, clients: np.ndarray) -> None:
        """Add tensor ``k``'s messages (or decoded updates) of a chunk: ``weights`` (C,)
        (samples, 0 for a dropped client), ``clients`` (C,) their ids."""

    def result(self, total_weight: float) -> list[torch.Tensor]:
        """The step per tensor; clears what was added."""


class Mean:
    """Sample-weighted mean of decoded updates (FedAvg); weight 0 drops a client."""

    decodes = True

    def __init__(self, params: Sequence[torch.Tensor]) -> None:
        self.sums = [torch.zeros_like(p) for p in params]

    def add(
        self, k: int, payload: torch.Tensor, weights: torch.Tensor, clients: np.ndarray
    ) -> None:
        self.sums[k] += torch.tensordot(weights, payload, dims=1)

    def result(self, total_weight: float) -> list[torch.Tensor]:
        out = [s / total_weight for s in self.sums]
        self.sums = [torch.zeros_like(s) for s in self.sums]
        return out


class Merge:
    """A codec's own merge of raw messages (``codec.aggregate(msgs, weights, state,
    device)`` with a server state per tensor from ``codec.init_server_state``)."""

    decodes = False

    def __init__(self, codec: Any, params: Sequence[torch.Tensor]) -> None:
        self.codec = codec
        self.device = params[0].device
        self.states = [codec.init_server_state(p.shape, device=self.device) for p in params]
        self.held: list[list[tuple[bytes, float]]] = [[] for _ in params]

    def add(self, k: int, payload: list[bytes], weights: torch.Tensor, clients: np.ndarray) -> None:
        self.held[k] += [(m, float(w)) for m, w in zip(payload, weights, strict=True) if w > 0]

    def result(self, total_weight: float) -> list[torch.Tensor]:
        out = []
        for k, pairs in enumerate(self.held):
            weights = torch.tensor([w / total_weight for _, w in pairs], dtype=torch.float32)
            msgs = [m for m, _ in pairs]
            out.append(self.codec.aggregate(msgs, weights, self.states[k], self.device))
        self.held = [[] for _ in self.held]
        return out


def for_codec(codec: Any, params: Sequence[torch.Tensor], num_clients: int) -> Aggregator:
    """The codec's aggregator: its own (``codec.server_aggregator(params, num_clients)``,
    or ``aggregate`` for a message merger), else the mean of decoded updates."""
    own = getattr(codec, "server_aggregator", None)
    if callable(own):
        return own(params, num_clients)
    if callable(getattr(codec, "aggregate", None)):
        return Merge(codec, params)
    return Mean(params)


def _own_server_side(codec: Any) -> bool:
    return callable(getattr(codec, "server_aggregator", None)) or callable(
        getattr(codec, "aggregate", None)
    )


def check_run(codec: Any, cfg: Mapping[str, Any]) -> None:
    """Refuse, with a one-line ValueError, settings that a codec's own server side
    (``server_aggregator`` or ``aggregate``) cannot run with:

    - a wrapper (``error_feedback``, ``entropy``) around such a codec: the wrapper hides
      its server side and the run would silently average decoded messages;
    - ``aggregation=fedbuff``: FedBuff applies its own staleness-weighted mean;
    - a codec that merges raw messages (sketch) or keeps server state built from every
      message (EF21, ``server_state``) with lazy uploads or adaptive compression, which
      skip, hold or re-encode messages;
    - such a codec on the downlink: its server side aggregates client messages.
    """
    inner = getattr(codec, "inner", None)
    while inner is not None:
        if _own_server_side(inner) and not _own_server_side(codec):
            raise ValueError(
                f"compressor {codec.name} wraps {inner.name}, whose server-side aggregation "
                "the wrapper would hide: set compressor.error_feedback=false and "
                "compressor.entropy=null"
            )
        inner = getattr(inner, "inner", None)
    if not _own_server_side(codec):
        return
    strict = getattr(codec, "server_state", False)
    merges = callable(getattr(codec, "aggregate", None))
    if cfg.get("aggregation", "sync") != "sync":
        what = "merges messages on the server" if merges else "aggregates on the server itself"
        raise ValueError(
            f"compressor {codec.name} {what}; it runs with aggregation=sync, not "
            f"{cfg.get('aggregation')}"
        )
    if (strict or merges) and cfg.get("lazy_threshold") is not None:
        what = "merges messages on the server" if merges else "keeps server state per message"
        raise ValueError(
            f"compressor {codec.name} {what}; it runs without lazy uploads "
            "(set lazy_threshold=null)"
        )
    if strict and cfg.get("upload_budget_s") is not None:
        raise ValueError(
            f"compressor {codec.name} keeps server state per message; it runs without "
            "adaptive compression (set upload_budget_s=null)"
        )


def check_downlink(codec: Any) -> None:
    """Refuse a downlink codec with a server side of its own (EF21, the majority vote):
    it aggregates client messages, an uplink scheme; one-line ValueError."""
    if callable(getattr(codec, "server_aggregator", None)):
        raise ValueError(
            f"downlink codec {codec.name} is invalid for the broadcast: it aggregates client "
            "messages on the server (an uplink scheme); e.g. downlink=sign"
        )
