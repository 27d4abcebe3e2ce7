"""The uplink's hook shape: what a cohort chunk sent, and the metrics a stage reports.

The codec stage (``Simulation.encode``) and the edge plug-ins (adaptive compression,
lazy uploads) all have one shape: keyword-only ``ids, deltas, states, round_`` (and
``encode``, the stage they wrap) in, ``(Sent, metrics)`` out. Metrics are returned, never
written into shared state; the scheduler sums them over the step's chunks with
:func:`merge` and puts them in the step's metrics row.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import torch

Metrics = dict[str, Any]


@dataclass
class Sent:
    """One chunk's uplink: bytes per client and what the server aggregates."""

    nbytes: np.ndarray  # (C,) int64: len() of each client's messages, all tensors
    payload: list[Any]  # per tensor: decoded (C, *shape), or the messages (list[bytes])
    encode_seconds: float = 0.0
    decode_seconds: float = 0.0


class Encode(Protocol):
    def __call__(
        self,
        *,
        ids: np.ndarray,
        deltas: list[torch.Tensor],
        states: list[list[Any]],
        round_: int,
    ) -> tuple[Sent, Metrics]: ...


def merge(into: Metrics, new: Mapping[str, Any]) -> Metrics:
    """Add ``new`` into ``into``: numbers summed, mappings merged key by key (counts)."""
    for key, v in new.items():
        if isinstance(v, Mapping):
            merge(into.setdefault(key, {}), v)
        else:
            into[key] = into.get(key, 0) + v
    return into
