"""One run's federation: the global model, the codecs, per-client states, the network,
and the operations a scheduler composes into rounds (``fedbench.sim.scheduler``).

Every byte counted is ``len()`` of a real message; the server aggregates what it
decoded from the bytes (or, for a codec that merges messages itself, the bytes), never
the sender's copy.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from fedbench.compress import from_config, wire
from fedbench.sim import adaptive, aggregate, downlink, lazy, network, partition, seeding, setup
from fedbench.sim import cohort as cohort_engine
from fedbench.sim import loop as loop_engine
from fedbench.sim.server import Diverged, ServerOptimizer
from fedbench.sim.sync import SyncRounds
from fedbench.sim.uplink import Metrics, Sent

# cuBLAS needs this before its first use to be deterministic on CUDA.
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")

ENGINES = {"cohort": cohort_engine.train, "loop": loop_engine.train}


class Simulation:
    """One run's state: global model, server optimiser, downlink, per-client states."""

    def __init__(self, cfg: Mapping[str, Any]) -> None:
        setup.validate(cfg)
        self.cfg = cfg
        self.seed = int(cfg["seed"])
        self.device = dev = setup.device(cfg["device"])
        self.data, self.parts = setup.prepare(cfg)
        ds = self.data
        self.spec = setup.build_model(cfg, ds)
        self.X = torch.from_numpy(ds.X_train).to(dev)
        self.y = torch.from_numpy(ds.y_train).to(dev)
        self.X_test = torch.from_numpy(ds.X_test).to(dev)
        self.y_test = torch.from_numpy(ds.y_test).to(dev)
        self.sizes = np.array([len(p) for p in self.parts], dtype=np.int64)
        # Whose test sample is each (LEAF-style data with a natural split), else None.
        self.test_owner = _test_owner(cfg, ds)
        self._correct: torch.Tensor | None = None  # per test sample, from evaluate()
        init_gen = seeding.generator("cpu", self.seed, seeding.INIT)
        self.params = [p.to(dev) for p in self.spec.init(init_gen)]
        self.server = ServerOptimizer(
            self.params, lr=float(cfg["server_lr"]), momentum=float(cfg["server_momentum"])
        )
        self.codec = from_config(cfg["compressor"])
        self.broadcaster = downlink.Broadcast(
            cfg["downlink"],
            self.params,
            int(cfg["num_clients"]),
            error_feedback=bool(cfg["downlink_error_feedback"]),
            seed=self.seed,
        )
        self.client_states: dict[int, list[Any]] = {}
        self.network = network.from_config(cfg["network"], int(cfg["num_clients"]), self.seed)
        # Edge plug-ins (off unless configured), outermost last: each wraps the stage
        # inside it through the same hook shape (``fedbench.sim.uplink``).
        self.adaptive = adaptive.from_config(cfg, self)
        self.lazy = lazy.from_config(cfg)
        self.aggregator = aggregate.for_codec(self.codec, self.params, int(cfg["num_clients"]))
        self.train = ENGINES[cfg["engine"]]
        self.opt = cohort_engine.LocalSGD(
            lr=float(cfg["lr"]),
            momentum=float(cfg["momentum"]),
            weight_decay=float(cfg["weight_decay"]),
            batch_size=int(cfg["batch_size"]),
            local_epochs=int(cfg["local_epochs"]),
            local_steps=cfg.get("local_steps"),
        )
        self._sync = SyncRounds(self)  # for round(): the synchronous scheduler
        # What `none` would send per client: header + fp32 values, per tensor.
        self.dense_bytes = sum(
            wire.header_size(len(s)) + 4 * math.prod(s) for s in self.spec.shapes
        )

    # -- per-client state -------------------------------------------------------------
    def states(self, client: int) -> list[Any]:
        """Client's compressor states, one per tensor; created on first participation."""
        st = self.client_states.get(client)
        if st is None:
            codec = self.adaptive if self.adaptive is not None else self.codec
            st = [codec.init_state(p.shape, device=self.device) for p in self.params]
            self.client_states[client] = st
        return st

    def chunk_size(self, clients: int) -> int:
        """How many of ``clients`` to train at once (``cohort_chunk``; ``auto`` fits the
        model into ``cohort_memory_mb``). Results do not depend on it."""
        return setup.chunk_size(self.cfg, self.spec, clients)

    def sample(self, round_: int) -> np.ndarray:
        """The clients sampled in round ``round_`` (sorted ids), from (seed, round)."""
        gen = seeding.generator("cpu", self.seed, round_, seeding.SAMPLE)
        ids = torch.randperm(int(self.cfg["num_clients"]), generator=gen)
        return np.sort(ids[: int(self.cfg["clients_per_round"])].numpy())

    # -- the operations of a round ----------------------------------------------------------
    def broadcast(
        self, clients: np.ndarray, tag: int
    ) -> tuple[list[torch.Tensor], np.ndarray, float]:
        """Bring ``clients`` up to date with the global model through the downlink codec
        (``fedbench.sim.downlink``): (the model they hold per tensor, bytes each received
        (C,), codec seconds). A change the codec refuses raises Diverged."""
        try:
            return self.broadcaster(self.params, clients, tag)
        except ValueError as e:
            raise Diverged(f"round {tag}: the downlink codec refused the change: {e}") from e

    def _cohort(self, clients: np.ndarray, round_: int) -> cohort_engine.Cohort:
        n = self.sizes[clients]
        index = np.zeros((len(clients), int(n.max())), dtype=np.int64)
        for i, c in enumerate(clients):
            index[i, : n[i]] = self.parts[c]
        ids = torch.from_numpy(clients.astype(np.int64))
        dev = self.device
        return cohort_engine.Cohort(
            clients=ids,
            index=torch.from_numpy(index).to(dev),
            n=torch.from_numpy(n).to(dev),
            shuffle_keys=seeding.client_keys(ids, self.seed, round_, seeding.SHUFFLE, device=dev),
            dropout_keys=seeding.client_keys(ids, self.seed, round_, seeding.DROPOUT, device=dev),
        )

    def train_cohort(
        self, ids: np.ndarray, start: list[torch.Tensor], round_: int, what: str = "round"
    ) -> tuple[Any, list[torch.Tensor]]:
        """Train clients ``ids`` from ``start``; (result, deltas (clients, *shape) per tensor).

        Raises Diverged when a loss or an update is non-finite.
        """
        res = self.train(self.spec, start, self.X, self.y, self._cohort(ids, round_), self.opt)
        deltas = [p - s.unsqueeze(0) for p, s in zip(res.params, start, strict=True)]
        bad = ~torch.isfinite(res.loss)
        for d in deltas:
            bad |= ~torch.isfinite(d.flatten(1)).all(1)
        if bool(bad.any()):
            raise Diverged(
                f"{what} {round_}: non-finite training loss or update for client(s) "
                f"{ids[bad.cpu().numpy()].tolist()[:10]}"
            )
        return res, deltas

    def uplink(
        self, ids: np.ndarray, deltas: list[torch.Tensor], states: list[list[Any]], round_: int
    ) -> tuple[Sent, Metrics]:
        """Encode the chunk's updates (each (C, *shape)) to bytes and decode them (or keep
        the bytes, for an aggregator that merges messages): the codec stage wrapped by
        adaptive compression and lazy uploads where configured. An update the codec
        refuses raises Diverged."""
        stage = self.encode
        for plugin in (self.adaptive, self.lazy):  # innermost first
            if plugin is not None:
                stage = _wrap(plugin, stage)
        try:
            return stage(ids=ids, deltas=deltas, states=states, round_=round_)
        except ValueError as e:
            raise Diverged(f"round {round_}: the uplink codec refused an update: {e}") from e

    def encode(
        self,
        *,
        ids: np.ndarray,
        deltas: list[torch.Tensor],
        states: list[list[Any]],
        round_: int,
    ) -> tuple[Sent, Metrics]:
        """The uplink codec over every client of ``ids`` (the innermost stage)."""
        dev = self.device
        msg_bytes = np.zeros(len(ids), dtype=np.int64)
        payload, enc_s, dec_s = [], 0.0, 0.0
        for k, d in enumerate(deltas):
            gens = (
                [
                    seeding.generator(dev, self.seed, round_, seeding.COMPRESS, int(c), k)
                    for c in ids
                ]
                if self.codec.randomised
                else None
            )
            t0 = time.perf_counter()
            msgs, _ = self.codec.compress_batch(d, gens, [s[k] for s in states])
            t1 = time.perf_counter()
            payload.append(self.codec.decode_batch(msgs, dev) if self.aggregator.decodes else msgs)
            dec_s += time.perf_counter() - t1
            enc_s += t1 - t0
            msg_bytes += np.fromiter((len(m) for m in msgs), dtype=np.int64, count=len(msgs))
        return Sent(msg_bytes, payload, enc_s, dec_s), {}

    def server_step(self, steps: list[torch.Tensor], what: str) -> None:
        """Apply the aggregated update through the server optimiser; Diverged when the
        model becomes non-finite."""
        self.server.step(self.params, steps, what)
        self.broadcaster.model_changed()

    def round(self, round_: int) -> dict[str, Any]:
        """One synchronous round (``fedbench.sim.sync``); its metrics row."""
        return self._sync.round(round_)

    # -- evaluation -------------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self) -> tuple[float, float]:
        """(accuracy, mean cross-entropy) of the global model on the held-out test set."""
        params = [p.unsqueeze(0) for p in self.params]
        correct, loss, n, hits = 0, 0.0, len(self.y_test), []
        for lo in range(0, n, 8192):
            xb, yb = self.X_test[lo : lo + 8192], self.y_test[lo : lo + 8192]
            logits = self.spec.forward(params, xb.unsqueeze(0), None)[0]
            loss += float(torch.nn.functional.cross_entropy(logits, yb, reduction="sum"))
            hits.append((logits.argmax(1) == yb).cpu())
            correct += int(hits[-1].sum())
        self._correct = torch.cat(hits) if hits else None
        return correct / n, loss / n

    def client_accuracy(self) -> dict[str, float]:
        """Per-client accuracy of the last :meth:`evaluate`, where clients hold test data
        of their own: over all their samples (``client_accuracy_weighted``), the
        unweighted mean over clients and the 10th-percentile client; {} otherwise."""
        if self.test_owner is None or self._correct is None:
            return {}
        owner = self.test_owner
        held = owner >= 0
        clients = int(owner.max()) + 1
        n = np.bincount(owner[held], minlength=clients)
        hits = np.bincount(owner[held], weights=self._correct.numpy()[held], minlength=clients)
        acc = hits[n > 0] / n[n > 0]
        return {
            "client_accuracy_weighted": float(hits.sum() / n.sum()),
            "client_accuracy_mean": float(acc.mean()),
            "client_accuracy_p10": float(np.percentile(acc, 10)),
        }


def _test_owner(cfg: Mapping[str, Any], ds: Any) -> np.ndarray | None:
    """(test samples,) the client each test sample belongs to (-1: none), when the data's
    own clients are the run's (``partition=natural``) and hold test data."""
    client_test = getattr(ds, "client_test", None)
    if client_test is None or not isinstance(partition.build(cfg["partition"]), partition.Natural):
        return None
    owner = np.full(len(ds.y_test), -1, dtype=np.int64)
    for c, idx in enumerate(client_test):
        owner[np.asarray(idx, dtype=np.int64)] = c
    return owner if (owner >= 0).any() else None


def _wrap(plugin: Any, inner: Any) -> Any:
    def stage(**kw: Any) -> tuple[Sent, Metrics]:
        return plugin.uplink(**kw, encode=inner)

    return stage
