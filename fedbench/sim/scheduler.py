"""What a scheduler may use of a run (the :class:`Federation` interface) and what it
offers the run loop (:class:`Scheduler`).

Two schedulers exist: synchronous FedAvg rounds (``fedbench.sim.sync``) and FedBuff's
asynchronous buffered steps (``fedbench.sim.fedbuff``). Both import this module, never
the engine, so neither depends on the other or on ``Simulation``'s internals.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any, Protocol

import numpy as np
import torch

from fedbench import registry
from fedbench.sim.aggregate import Aggregator
from fedbench.sim.network import Network
from fedbench.sim.uplink import Metrics, Sent


class Federation(Protocol):
    """A run's state and operations (``fedbench.sim.simulation.Simulation``)."""

    cfg: Mapping[str, Any]
    seed: int
    device: torch.device
    params: list[torch.Tensor]  # the global model, per tensor
    sizes: np.ndarray  # (num_clients,) training samples per client
    network: Network
    aggregator: Aggregator
    dense_bytes: int  # what `none` sends per client (header + fp32 values, all tensors)

    def sample(self, round_: int) -> np.ndarray: ...

    def chunk_size(self, clients: int) -> int: ...

    def states(self, client: int) -> list[Any]: ...

    def broadcast(
        self, clients: np.ndarray, tag: int
    ) -> tuple[list[torch.Tensor], np.ndarray, float]: ...

    def train_cohort(
        self, ids: np.ndarray, start: list[torch.Tensor], round_: int, what: str = "round"
    ) -> tuple[Any, list[torch.Tensor]]: ...

    def uplink(
        self, ids: np.ndarray, deltas: list[torch.Tensor], states: list[list[Any]], round_: int
    ) -> tuple[Sent, Metrics]: ...

    def server_step(self, steps: list[torch.Tensor], what: str) -> None: ...


class Scheduler(Protocol):
    def round(self, round_: int) -> dict[str, Any]:
        """Run until step ``round_`` is applied; its metrics row (see ``sync.SyncRounds``)."""


def user_scheduler(spec: Mapping[str, Any]) -> tuple[type, dict[str, Any]]:
    """A user's scheduler (``aggregation={_target_: pkg.Class, ...}``): its class, checked
    to have ``round`` (not called), and its keywords, checked against the constructor,
    whose first argument is the run (a :class:`Federation`)."""
    kwargs = dict(spec)
    cls = registry.locate(
        "aggregation._target_",
        kwargs.pop("_target_", None),
        "a scheduler class with a round(round_) method",
        lambda c: callable(getattr(c, "round", None)),
    )
    params = list(inspect.signature(cls).parameters)
    if not params:
        raise ValueError(
            f"aggregation._target_={spec['_target_']!r} is invalid: its constructor must "
            "take the run (a fedbench.sim.scheduler.Federation) as first argument"
        )
    registry.keywords("aggregation", cls, kwargs, provided=(params[0],))
    return cls, kwargs
