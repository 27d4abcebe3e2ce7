"""Bytes become time: a synchronous round under a simple edge-network model.

Client i's time in a round (seconds), from the bytes actually sent::

    t_i = (down_bytes * 8 / downlink_bps_i + latency_s)     # receive the broadcast
        + samples_i / compute_sps_i                         # local training
        + (up_bytes_i * 8 / uplink_bps_i + latency_s)       # send the update

and the round lasts ``max_i t_i`` over the clients that answered. With a ``deadline``
a client whose ``t_i`` exceeds it is dropped (its update is lost) and the round lasts
the deadline. A null bandwidth or compute speed costs nothing (``ideal``).

Heterogeneity: client i's bandwidths and compute speed are the preset's value times
``exp(spread * z)``, z ~ N(0, 1) drawn once per client from the seed (the preset is
the median client). ``availability`` is the probability a sampled client answers in a
round, drawn from (seed, round, client).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from fedbench import registry
from fedbench.sim import seeding

KEYS = (
    "downlink_bps", "uplink_bps", "latency_s", "compute_sps", "spread", "availability", "deadline",
)  # fmt: skip


def _num(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def from_config(cfg: Mapping[str, Any], num_clients: int, seed: int) -> Network:
    """The network model a ``conf/network`` group names (``_target_``: :class:`Network` or
    a user's subclass; the built-in when absent), with its keyword arguments."""
    kwargs = dict(cfg)
    cls = network_class(kwargs.pop("_target_", None))
    registry.keywords("network", cls, kwargs, provided=("num_clients", "seed"))
    return cls(num_clients=num_clients, seed=seed, **kwargs)


def network_class(target: Any) -> type[Network]:
    """``network._target_``'s class: a :class:`Network` subclass (checked, not called)."""
    if target is None:
        return Network
    return registry.locate("network._target_", target, "a fedbench.sim.network.Network", Network)


def validate(cfg: Mapping[str, Any]) -> None:
    """Check a ``conf/network`` group's values (and, with a ``_target_``, its keys);
    ValueError naming the key and what is allowed."""
    if "_target_" in cfg:
        kwargs = dict(cfg)
        cls = network_class(kwargs.pop("_target_"))
        registry.keywords("network", cls, kwargs, provided=("num_clients", "seed"))
    for key in ("downlink_bps", "uplink_bps", "compute_sps", "deadline"):
        v = cfg.get(key)
        if v is not None and not (_num(v) and v > 0):
            raise ValueError(f"network.{key}={v!r} is invalid: must be null (no cost) or > 0")
    checks = {
        "latency_s": (lambda v: _num(v) and v >= 0, "a number >= 0"),
        "spread": (lambda v: _num(v) and v >= 0, "a number >= 0"),
        "availability": (lambda v: _num(v) and 0 < v <= 1, "a number in (0, 1]"),
    }
    defaults = {"latency_s": 0.0, "spread": 0.0, "availability": 1.0}
    for key, (ok, allowed) in checks.items():
        v = cfg.get(key, defaults[key])
        if not ok(v):
            raise ValueError(f"network.{key}={v!r} is invalid: must be {allowed}")


class Network:
    """Per-client link and compute speeds, fixed by the seed for the whole run."""

    def __init__(
        self,
        *,
        num_clients: int,
        seed: int,
        downlink_bps: float | None = None,
        uplink_bps: float | None = None,
        latency_s: float = 0.0,
        compute_sps: float | None = None,
        spread: float = 0.0,
        availability: float = 1.0,
        deadline: float | None = None,
        name: str = "custom",
    ) -> None:
        validate(
            {
                "downlink_bps": downlink_bps,
                "uplink_bps": uplink_bps,
                "latency_s": latency_s,
                "compute_sps": compute_sps,
                "spread": spread,
                "availability": availability,
                "deadline": deadline,
            }
        )
        self.name = name
        self.latency = float(latency_s)
        self.availability = float(availability)
        self.deadline = None if deadline is None else float(deadline)
        self.seed = seed
        z = np.random.default_rng(seeding.mix(seed, seeding.NETWORK)).standard_normal(
            (num_clients, 3)
        )
        factor = np.exp(float(spread) * z)  # (clients, 3): downlink, uplink, compute

        def speeds(v: float | None, col: int) -> np.ndarray | None:
            return None if v is None else float(v) * factor[:, col]

        self.downlink_bps = speeds(downlink_bps, 0)
        self.uplink_bps = speeds(uplink_bps, 1)
        self.compute_sps = speeds(compute_sps, 2)

    def available(self, clients: np.ndarray, round_: int) -> np.ndarray:
        """Which of ``clients`` answer this round (bool, one per client)."""
        if self.availability >= 1.0:
            return np.ones(len(clients), dtype=bool)
        keys = seeding.client_keys(torch.as_tensor(clients), self.seed, round_, seeding.AVAILABLE)
        u = (keys.to(torch.int64) & 0xFFFFFF).double() / float(1 << 24)
        return (u < self.availability).numpy()

    def client_seconds(
        self, clients: np.ndarray, down_bytes: int, up_bytes: np.ndarray, samples: np.ndarray
    ) -> np.ndarray:
        """Each client's download + compute + upload time in seconds. # (clients,)"""
        t = np.zeros(len(clients), dtype=np.float64)
        if self.downlink_bps is not None:
            t += down_bytes * 8.0 / self.downlink_bps[clients]
        if self.uplink_bps is not None:
            t += np.asarray(up_bytes, dtype=np.float64) * 8.0 / self.uplink_bps[clients]
        if self.compute_sps is not None:
            t += np.asarray(samples, dtype=np.float64) / self.compute_sps[clients]
        return t + 2 * self.latency

    def upload_seconds(self, clients: np.ndarray, nbytes: np.ndarray) -> np.ndarray:
        """Seconds to send ``nbytes`` on each client's own uplink, latency excluded. # (C,)"""
        nbytes = np.asarray(nbytes, dtype=np.float64)
        if self.uplink_bps is None:
            return np.zeros(len(clients), dtype=np.float64)
        return nbytes * 8.0 / self.uplink_bps[clients]

    def budget_bytes(self, clients: np.ndarray, seconds: float) -> np.ndarray:
        """Bytes each client can upload in ``seconds`` (inf on a free uplink). # (C,)"""
        if self.uplink_bps is None:
            return np.full(len(clients), np.inf)
        return seconds * self.uplink_bps[clients] / 8.0

    def dropped(self, seconds: np.ndarray) -> np.ndarray:
        """Clients that miss the deadline (bool, one per client)."""
        if self.deadline is None:
            return np.zeros(len(seconds), dtype=bool)
        return seconds > self.deadline

    def round_seconds(self, seconds: np.ndarray, dropped: np.ndarray) -> float:
        """The synchronous round's length: the slowest kept client, or the deadline if
        the server had to wait it out for a client that never arrived."""
        if dropped.any():
            return float(self.deadline)
        return float(seconds.max()) if len(seconds) else 0.0
