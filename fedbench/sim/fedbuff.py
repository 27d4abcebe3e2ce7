"""Asynchronous buffered aggregation (FedBuff; Nguyen et al. 2022, "Federated Learning
with Buffered Asynchronous Aggregation", Alg. 1) on an event-driven simulated clock.

Up to ``concurrency`` clients (at most all of them) train at once, each at its own simulated pace. A client
starts from the global model current at its start (version v), and its update arrives
``t_i`` seconds later, ``t_i`` = download + compute + upload from the network model and
the bytes actually sent. The server adds arrivals to a buffer; every ``buffer_size``
arrivals it applies

    step = sum_i n_i * s(tau_i) * delta_i / sum_i n_i,   s(tau) = 1 / sqrt(1 + tau)

(``n_i`` the client's samples, ``tau_i`` = versions applied since client i started),
through the same server optimiser as synchronous FedAvg (``server_lr``,
``server_momentum``). As soon as a slot is free the server starts new clients.

Clients that start together (same model version, same instant) are trained as one
cohort batch and encoded through the engine's uplink path (codec, adaptive, lazy), so
everything synchronous rounds measure is measured here too. One metrics row per server
step, with the synchronous keys (``round`` = server step, ``sim_seconds`` = simulated
time since the previous step) plus ``staleness_mean``/``staleness_max``.

Arrivals at the same instant are all buffered before anyone new starts, and each batch
of starts draws its clients like a synchronous round (``(seed, launch, SAMPLE)``,
skipping clients already training; unavailable ones are skipped). So with equal speeds,
``concurrency = buffer_size = clients_per_round`` and no staleness, FedBuff reproduces
synchronous FedAvg (``tests/sim/test_fedbuff.py``). A network ``deadline`` has no
meaning here and is refused.
"""

from __future__ import annotations

import heapq
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from fedbench.sim import seeding
from fedbench.sim.scheduler import Federation, user_scheduler
from fedbench.sim.uplink import merge

MODES = ("sync", "fedbuff")
MAX_EMPTY_LAUNCHES = 10_000  # launches that found no available client, in a row


def _opt_int(cfg: Mapping[str, Any], key: str) -> None:
    v = cfg.get(key)
    if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
        raise ValueError(f"{key}={v!r} is invalid: must be null or an integer >= 1")


def validate(cfg: Mapping[str, Any]) -> None:
    """Check ``aggregation``, ``async_concurrency``, ``async_buffer_size``."""
    mode = cfg.get("aggregation", "sync")
    if isinstance(mode, Mapping):  # a user's scheduler: its class and keywords
        user_scheduler(mode)
        mode = "user"
    elif mode not in MODES:
        raise ValueError(
            f"aggregation={mode!r} is invalid: must be one of {', '.join(MODES)} or "
            "{_target_: pkg.Scheduler, ...}"
        )
    _opt_int(cfg, "async_concurrency")
    _opt_int(cfg, "async_buffer_size")
    if mode == "fedbuff" and (cfg.get("network") or {}).get("deadline") is not None:
        raise ValueError(
            "aggregation=fedbuff with network.deadline: an asynchronous server has no round "
            "to miss; set network.deadline=null"
        )


@dataclass
class Arrival:
    """One client's finished update, in flight until ``time``."""

    client: int
    version: int  # the global model version it trained from
    update: list[torch.Tensor]  # decoded update per tensor, (*shape)
    samples: int  # n_i, its weight
    up_bytes: int
    loss: float


class FedBuff:
    """The asynchronous server; :meth:`round` runs until the next server step."""

    def __init__(self, sim: Federation) -> None:
        cfg = sim.cfg
        self.sim = sim
        # at most every client at once: a client trains one update at a time
        conc = int(cfg.get("async_concurrency") or cfg["clients_per_round"])
        self.concurrency = min(conc, int(cfg["num_clients"]))
        self.buffer_size = int(cfg.get("async_buffer_size") or cfg["clients_per_round"])
        self.heap: list[tuple[float, int, Arrival]] = []
        self.arrived: deque[Arrival] = deque()
        self.buffer: list[Arrival] = []
        self.busy: set[int] = set()
        self.now = self.last_step = 0.0
        self.version = self.launches = self.seq = 0
        self._counters()

    def _counters(self) -> None:
        self.down_bytes = self.up_bytes = self.dense_bytes = self.unavailable = 0
        self.dense_down_bytes = 0
        self.enc_s = self.dec_s = self.down_s = 0.0
        self.metrics: dict[str, Any] = {}  # the uplink stages' metrics since the last step

    def _launch(self) -> None:
        """Start clients in every free slot, all from the current global model."""
        sim = self.sim
        free = self.concurrency - len(self.busy)
        if free <= 0:
            return
        self.launches += 1
        launch = self.launches
        gen = seeding.generator("cpu", sim.seed, launch, seeding.SAMPLE)
        perm = torch.randperm(int(sim.cfg["num_clients"]), generator=gen).numpy()
        chosen = perm[~np.isin(perm, list(self.busy))][:free]
        answered = sim.network.available(chosen, launch)
        self.unavailable += int((~answered).sum())
        clients = np.sort(chosen[answered])
        if not len(clients):
            return
        clients = clients[np.argsort(sim.sizes[clients], kind="stable")]
        start, down_bytes, down_s = sim.broadcast(clients, launch)
        self.down_bytes += int(down_bytes.sum())
        self.dense_down_bytes += sim.dense_bytes * len(clients)
        self.down_s += down_s
        chunk = sim.chunk_size(len(clients))
        for lo in range(0, len(clients), chunk):
            ids = clients[lo : lo + chunk]
            res, deltas = sim.train_cohort(ids, start, launch, what="launch")
            states = [sim.states(int(c)) for c in ids]
            sent, stage_metrics = sim.uplink(ids, deltas, states, launch)
            merge(self.metrics, stage_metrics)
            msg_bytes, decoded = sent.nbytes, sent.payload
            self.enc_s += sent.encode_seconds
            self.dec_s += sent.decode_seconds
            samples = res.samples.cpu().numpy()
            seconds = sim.network.client_seconds(
                ids, down_bytes[lo : lo + chunk], msg_bytes, samples
            )
            losses = res.loss.cpu().tolist()
            for i, c in enumerate(ids):
                a = Arrival(
                    client=int(c),
                    version=self.version,
                    update=[d[i] for d in decoded],
                    samples=int(sim.sizes[c]),
                    up_bytes=int(msg_bytes[i]),
                    loss=float(losses[i]),
                )
                self.seq += 1
                heapq.heappush(self.heap, (self.now + float(seconds[i]), self.seq, a))
                self.busy.add(int(c))

    def _next_arrivals(self) -> None:
        """Advance the clock to the next arrival time; queue everything arriving then."""
        empty = 0
        while not self.heap:
            self._launch()
            empty += 1
            if empty > MAX_EMPTY_LAUNCHES:
                raise RuntimeError(
                    f"fedbuff: {MAX_EMPTY_LAUNCHES} launches in a row found no available "
                    "client; raise network.availability"
                )
        t = self.heap[0][0]
        while self.heap and self.heap[0][0] == t:
            self.arrived.append(heapq.heappop(self.heap)[2])
        self.now = t

    def round(self, round_: int) -> dict[str, Any]:
        """Run the clock until server step ``round_`` is applied; its metrics row."""
        t_wall = time.perf_counter()
        while True:
            if not self.arrived:
                self._launch()  # fill the free slots, then wait for the next arrival
                self._next_arrivals()
            a = self.arrived.popleft()
            self.busy.discard(a.client)
            self.buffer.append(a)
            self.up_bytes += a.up_bytes
            self.dense_bytes += self.sim.dense_bytes
            if len(self.buffer) >= self.buffer_size:
                return self._step(round_, t_wall)

    def _step(self, round_: int, t_wall: float) -> dict[str, Any]:
        sim = self.sim
        stale = np.array([self.version - a.version for a in self.buffer], dtype=np.float64)
        n = np.array([a.samples for a in self.buffer], dtype=np.float64)
        w = torch.tensor(n / np.sqrt(1.0 + stale) / n.sum(), dtype=sim.params[0].dtype)
        w = w.to(sim.device)
        with torch.no_grad():
            steps = [
                torch.tensordot(w, torch.stack([a.update[k] for a in self.buffer]), dims=1)
                for k in range(len(sim.params))
            ]
        sim.server_step(steps, f"server step {round_}")
        self.version += 1
        row = {
            "round": round_,
            "train_loss": float(np.mean([a.loss for a in self.buffer])),
            "uplink_bytes": self.up_bytes,
            "downlink_bytes": self.down_bytes,
            "dense_uplink_bytes": self.dense_bytes,
            "dense_downlink_bytes": self.dense_down_bytes,
            "encode_seconds": self.enc_s,
            "decode_seconds": self.dec_s,
            "downlink_codec_seconds": self.down_s,
            "sim_seconds": self.now - self.last_step,
            "clients": len(self.buffer),
            "clients_dropped": 0,
            "clients_unavailable": self.unavailable,
            "staleness_mean": float(stale.mean()),
            "staleness_max": int(stale.max()),
            "in_flight": len(self.heap) + len(self.arrived),
            **self.metrics,
            "_t_round": t_wall,
        }
        self.last_step = self.now
        self.buffer = []
        self._counters()
        return row
