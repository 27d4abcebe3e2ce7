"""The round loop: sample -> broadcast (bytes) -> local training -> uplink (bytes)
-> decode -> weighted average -> server step -> evaluate.

``validate(cfg)`` checks a whole composed config (a plain dict) before any work;
``run(cfg, on_round=...)`` runs it and returns the summary. Every byte counted is
``len()`` of a real message; the server aggregates what it decoded from the bytes,
never the sender's copy.
"""

from __future__ import annotations

import copy
import functools
import json
import logging
import math
import os
import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch

from fedbench import schema
from fedbench.compress import build, from_config, wire
from fedbench.configs import compressor_names
from fedbench.sim import adaptive, fedbuff, lazy, models, network, partition, seeding
from fedbench.sim import cohort as cohort_engine
from fedbench.sim import data as data_mod
from fedbench.sim import loop as loop_engine

log = logging.getLogger(__name__)

# cuBLAS needs this before its first use to be deterministic on CUDA.
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")

ENGINES = {"cohort": cohort_engine.train, "loop": loop_engine.train}


class Diverged(Exception):
    """Training produced NaN/inf (or values a codec cannot carry); the run stops."""


# -- validation ---------------------------------------------------------------------------
def _device(name: Any) -> torch.device:
    if not isinstance(name, str) or not (
        name in ("cpu", "cuda") or (name.startswith("cuda:") and name[5:].isdigit())
    ):
        raise ValueError(f"device={name!r} is invalid: must be cpu, cuda or cuda:N")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device={name!r} is invalid: no CUDA device is available; use cpu")
    return torch.device(name)


@functools.lru_cache(maxsize=2)
def _prepare(key: str) -> tuple[data_mod.Dataset, list[np.ndarray]]:
    spec = json.loads(key)
    ds = data_mod.load(spec["dataset"], spec["seed"], spec["num_clients"])
    parts = partition.partition(ds, spec["num_clients"], spec["partition"], spec["seed"])
    return ds, parts


def prepare(cfg: Mapping[str, Any]) -> tuple[data_mod.Dataset, list[np.ndarray]]:
    """The data set and per-client train indices (cached: ``validate`` then ``run``)."""
    key = {k: cfg[k] for k in ("dataset", "partition", "seed", "num_clients")}
    return _prepare(json.dumps(key, sort_keys=True, default=str))


def validate(cfg: Mapping[str, Any]) -> None:
    """Check a composed config (plain nested dict); ValueError naming key, value and what
    is allowed. Loads the data and builds the partition (cached for ``run``)."""
    # Keys, types and ranges: the torch-free rules the app applies before any import.
    schema.validate(cfg, compressors=compressor_names())
    _device(cfg.get("device"))
    from_config(cfg["compressor"])  # constructor checks: ranges, unknown keys, double EF
    build(cfg["downlink"])
    partition.validate(cfg["partition"])
    network.validate(cfg["network"])
    for plugin in (adaptive, lazy, fedbuff):
        plugin.validate(cfg)
    ds, _ = prepare(cfg)
    models.build(cfg["model"], ds.X_train.shape[1], ds.num_classes, ds.image_shape)


# -- the simulation ------------------------------------------------------------------------
def _server_states(codec: Any, params: list[torch.Tensor], cfg: Mapping[str, Any], lazy_: Any):
    """Per-tensor server states of a codec that aggregates messages itself (it defines
    ``init_server_state`` and ``aggregate``: FetchSGD), else None (decode + average)."""
    if not callable(getattr(codec, "aggregate", None)):
        return None
    if lazy_ is not None or cfg.get("aggregation", "sync") != "sync":
        raise ValueError(
            f"compressor {codec.name} merges messages on the server; it runs with "
            "aggregation=sync and without lazy_threshold"
        )
    return [codec.init_server_state(p.shape, device=p.device) for p in params]


class Simulation:
    """One run's state: global model, server momentum, per-client compressor states."""

    def __init__(self, cfg: Mapping[str, Any]) -> None:
        validate(cfg)
        self.cfg = cfg
        self.seed = int(cfg["seed"])
        self.device = _device(cfg["device"])
        self.data, self.parts = prepare(cfg)
        ds = self.data
        self.spec = models.build(cfg["model"], ds.X_train.shape[1], ds.num_classes, ds.image_shape)
        dev = self.device
        self.X = torch.from_numpy(ds.X_train).to(dev)
        self.y = torch.from_numpy(ds.y_train).to(dev)
        self.X_test = torch.from_numpy(ds.X_test).to(dev)
        self.y_test = torch.from_numpy(ds.y_test).to(dev)
        self.sizes = np.array([len(p) for p in self.parts], dtype=np.int64)
        init_gen = seeding.generator("cpu", self.seed, seeding.INIT)
        self.params = [p.to(dev) for p in self.spec.init(init_gen)]
        self.server_buf = (
            [torch.zeros_like(p) for p in self.params] if cfg["server_momentum"] > 0 else None
        )
        self.codec = from_config(cfg["compressor"])
        self.down_codec = build(
            cfg["downlink"], error_feedback=bool(cfg["downlink_error_feedback"])
        )
        self.down_states = [self.down_codec.init_state(p.shape, device=dev) for p in self.params]
        self.client_states: dict[int, list[Any]] = {}
        self.network = network.Network(cfg["network"], int(cfg["num_clients"]), self.seed)
        # Edge plug-ins (off unless configured): per-client codec settings, lazy uploads.
        self.adaptive = adaptive.from_config(cfg, self)
        if self.adaptive is not None:  # its client states hold every setting's codec state
            self.codec = self.adaptive
        self.lazy = lazy.from_config(cfg)
        self.extras: dict[str, Any] = {}
        self.server_states = _server_states(self.codec, self.params, cfg, self.lazy)
        self.train = ENGINES[cfg["engine"]]
        self.opt = cohort_engine.LocalSGD(
            lr=float(cfg["lr"]),
            momentum=float(cfg["momentum"]),
            weight_decay=float(cfg["weight_decay"]),
            batch_size=int(cfg["batch_size"]),
            local_epochs=int(cfg["local_epochs"]),
            local_steps=cfg.get("local_steps"),
        )
        # What `none` would send per client: header + fp32 values, per tensor.
        self.dense_bytes = sum(
            wire.header_size(len(s)) + 4 * math.prod(s) for s in self.spec.shapes
        )

    def states(self, client: int) -> list[Any]:
        """Client's compressor states, one per tensor; created on first participation."""
        st = self.client_states.get(client)
        if st is None:
            st = [self.codec.init_state(p.shape, device=self.device) for p in self.params]
            self.client_states[client] = st
        return st

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

    def _broadcast(self, round_: int) -> tuple[list[torch.Tensor], int, float]:
        """Encode the global model once per tensor; returns (decoded, bytes, seconds)."""
        start, nbytes, t0 = [], 0, time.perf_counter()
        for k, p in enumerate(self.params):
            gen = (
                seeding.generator(self.device, self.seed, round_, seeding.DOWNLINK, k)
                if self.down_codec.randomised
                else None
            )
            msgs, _ = self.down_codec.compress_batch(p.unsqueeze(0), [gen], [self.down_states[k]])
            start.append(self.down_codec.decode_batch(msgs, self.device)[0])
            nbytes += len(msgs[0])
        return start, nbytes, time.perf_counter() - t0

    def uplink(
        self, ids: np.ndarray, deltas: list[torch.Tensor], states: list[list[Any]], round_: int
    ) -> tuple[np.ndarray, list[torch.Tensor], float, float]:
        """Encode the chunk's updates (each (C, *shape)) to bytes and decode them.

        Returns (bytes per client (C,), decoded per tensor (C, *shape), encode s, decode s).
        Lazy uploads (``fedbench.sim.lazy``) and adaptive compression
        (``fedbench.sim.adaptive``) plug in here; a refused update raises Diverged.
        """
        try:
            if self.lazy is not None:
                return self.lazy.uplink(ids, deltas, states, round_, self.encode, self.extras)
            return self.encode(ids, deltas, states, round_)
        except ValueError as e:
            raise Diverged(f"round {round_}: the uplink codec refused an update: {e}") from e

    def encode(
        self, ids: np.ndarray, deltas: list[torch.Tensor], states: list[list[Any]], round_: int
    ) -> tuple[np.ndarray, list[torch.Tensor], float, float]:
        """The uplink codec over every client of ``ids``; see :meth:`uplink`."""
        if self.adaptive is not None:
            return self.adaptive.encode(ids, deltas, states, round_, self.extras)
        dev = self.device
        msg_bytes = np.zeros(len(ids), dtype=np.int64)
        decoded, enc_s, dec_s = [], 0.0, 0.0
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
            if self.server_states is not None:  # merged in Simulation.server_update
                decoded.append(msgs)
            else:
                decoded.append(self.codec.decode_batch(msgs, dev))
            dec_s += time.perf_counter() - t1
            enc_s += t1 - t0
            msg_bytes += np.fromiter((len(m) for m in msgs), dtype=np.int64, count=len(msgs))
        return msg_bytes, decoded, enc_s, dec_s

    def server_update(
        self, held: list[list[tuple[bytes, float]]], total_weight: float
    ) -> list[torch.Tensor]:
        """The round's update per tensor from a server-side codec (``codec.aggregate``,
        e.g. FetchSGD's sketches): it merges the (message, weight / total) pairs itself."""
        out = []
        for k, pairs in enumerate(held):
            weights = torch.tensor([wi / total_weight for _, wi in pairs], dtype=torch.float32)
            msgs = [m for m, _ in pairs]
            out.append(self.codec.aggregate(msgs, weights, self.server_states[k], self.device))
        return out

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

    def sample(self, round_: int) -> np.ndarray:
        """The clients sampled in round ``round_`` (sorted ids), from (seed, round)."""
        gen = seeding.generator("cpu", self.seed, round_, seeding.SAMPLE)
        ids = torch.randperm(int(self.cfg["num_clients"]), generator=gen)
        return np.sort(ids[: int(self.cfg["clients_per_round"])].numpy())

    def round(self, round_: int) -> dict[str, Any]:
        """Run one round (1-based) and return its metrics row (without evaluation)."""
        cfg, dev = self.cfg, self.device
        t_round = time.perf_counter()
        self.extras = {}  # extra row keys from the uplink plug-ins (lazy, adaptive)
        sampled = self.sample(round_)
        answered = self.network.available(sampled, round_)
        clients = sampled[answered]
        # Similar sizes share a chunk (less padding); results do not depend on chunks.
        clients = clients[np.argsort(self.sizes[clients], kind="stable")]

        start, down_msg_bytes, down_seconds = self._broadcast(round_)
        agg = [torch.zeros_like(p) for p in self.params]
        held: list[list[tuple[bytes, float]]] = [[] for _ in self.params]
        total_weight = 0.0
        up_bytes = dense_bytes = dropped = 0
        enc_s = dec_s = 0.0
        losses, times = [], []
        chunk = int(cfg["cohort_chunk"])
        for lo in range(0, len(clients), chunk):
            ids = clients[lo : lo + chunk]
            res, deltas = self.train_cohort(ids, start, round_)
            states = [self.states(int(c)) for c in ids]
            snapshot = copy.deepcopy(states) if self.network.deadline is not None else None
            msg_bytes, decoded, t_enc, t_dec = self.uplink(ids, deltas, states, round_)
            enc_s += t_enc
            dec_s += t_dec
            samples = res.samples.cpu().numpy()
            seconds = self.network.client_seconds(ids, down_msg_bytes, msg_bytes, samples)
            late = self.network.dropped(seconds)
            for i in np.flatnonzero(late):  # the update never arrived: the client's state
                self.client_states[int(ids[i])] = snapshot[i]  # is as before the round
            kept = ~late
            w = torch.from_numpy((self.sizes[ids] * kept).astype(np.float32)).to(dev)
            for k, dec in enumerate(decoded):
                if self.server_states is not None:
                    held[k] += [(m, float(wi)) for m, wi in zip(dec, w, strict=True) if wi > 0]
                else:
                    agg[k] += torch.tensordot(w, dec, dims=1)
            total_weight += float(w.sum())
            up_bytes += int(msg_bytes[kept].sum())
            dense_bytes += self.dense_bytes * int(kept.sum())
            dropped += int(late.sum())
            losses.append(res.loss.cpu())
            times.append((seconds, late))

        if total_weight > 0:
            with torch.no_grad():
                t0 = time.perf_counter()
                if self.server_states is not None:  # the codec merges its messages itself
                    steps = self.server_update(held, total_weight)
                else:
                    steps = [a / total_weight for a in agg]
                dec_s += time.perf_counter() - t0
                for k, p in enumerate(self.params):
                    step = steps[k]
                    if self.server_buf is not None:
                        self.server_buf[k].mul_(cfg["server_momentum"]).add_(step)
                        step = self.server_buf[k]
                    p.add_(step, alpha=float(cfg["server_lr"]))
            if not all(bool(torch.isfinite(p).all()) for p in self.params):
                raise Diverged(f"round {round_}: the global model became non-finite")
        all_seconds = np.concatenate([s for s, _ in times]) if times else np.zeros(0)
        all_late = np.concatenate([d for _, d in times]) if times else np.zeros(0, bool)
        sim_seconds = self.network.round_seconds(all_seconds, all_late)
        train_loss = float(torch.cat(losses).mean()) if losses else None
        return {
            "round": round_,
            "train_loss": train_loss,
            "uplink_bytes": up_bytes,
            "downlink_bytes": down_msg_bytes * len(clients),
            "dense_uplink_bytes": dense_bytes,
            "encode_seconds": enc_s,
            "decode_seconds": dec_s,
            "downlink_codec_seconds": down_seconds,
            "sim_seconds": sim_seconds,
            "clients": len(clients) - dropped,
            "clients_dropped": dropped,
            "clients_unavailable": int((~answered).sum()),
            **self.extras,
            "_t_round": t_round,
        }

    @torch.no_grad()
    def evaluate(self) -> tuple[float, float]:
        """(accuracy, mean cross-entropy) of the global model on the held-out test set."""
        params = [p.unsqueeze(0) for p in self.params]
        correct, loss, n = 0, 0.0, len(self.y_test)
        for lo in range(0, n, 8192):
            xb, yb = self.X_test[lo : lo + 8192], self.y_test[lo : lo + 8192]
            logits = self.spec.forward(params, xb.unsqueeze(0), None)[0]
            loss += float(torch.nn.functional.cross_entropy(logits, yb, reduction="sum"))
            correct += int((logits.argmax(1) == yb).sum())
        return correct / n, loss / n


def run(
    cfg: Mapping[str, Any], *, on_round: Callable[[dict[str, Any]], None] | None = None
) -> dict[str, Any]:
    """Run the composed config ``cfg``; ``on_round(row)`` after every round; the summary.

    NaN/inf in training (or an update a codec cannot carry) stops the run with status
    ``diverged`` and the rows so far; it is never raised.
    """
    # CPU kernels used here are deterministic already; CUDA's scatter/index_add use
    # atomics unless told otherwise. (Switching the mode imports torch._inductor: ~1.3 s.)
    if not str(cfg.get("device", "cpu")).startswith("cuda"):
        return _run(cfg, on_round)
    was_deterministic = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        return _run(cfg, on_round)
    finally:
        torch.use_deterministic_algorithms(was_deterministic)


def _run(cfg: Mapping[str, Any], on_round) -> dict[str, Any]:
    sim = Simulation(cfg)
    # One row per synchronous round, or per FedBuff server step (``aggregation=fedbuff``).
    stepper = fedbuff.FedBuff(sim) if cfg.get("aggregation", "sync") == "fedbuff" else sim
    rows: list[dict[str, Any]] = []
    status, error = "ok", None
    cum_up = cum_down = cum_dense = 0
    cum_sim = 0.0
    target = cfg.get("target_accuracy")
    hit: dict[str, Any] | None = None
    rounds = int(cfg["rounds"])
    t_loop = time.perf_counter()
    for r in range(1, rounds + 1):
        try:
            row = stepper.round(r)
        except Diverged as e:
            status, error = "diverged", str(e)
            log.warning("diverged: %s", e)
            break
        acc = loss = None
        if r % int(cfg["eval_every"]) == 0 or r == rounds:
            acc, loss = sim.evaluate()
            if not math.isfinite(loss):
                status, error = "diverged", f"round {r}: test loss is {loss}"
                break
        cum_up += row["uplink_bytes"]
        cum_down += row["downlink_bytes"]
        cum_dense += row.pop("dense_uplink_bytes")
        cum_sim += row["sim_seconds"]
        row.update(
            test_accuracy=acc,
            test_loss=loss,
            cum_uplink_bytes=cum_up,
            cum_downlink_bytes=cum_down,
            cum_dense_uplink_bytes=cum_dense,
            compression_ratio=cum_dense / cum_up if cum_up else None,
            cum_sim_seconds=cum_sim,
            wall_seconds=time.perf_counter() - row.pop("_t_round"),
        )
        rows.append(row)
        if hit is None and target is not None and acc is not None and acc >= target:
            hit = row
        if on_round is not None:
            on_round(row)
    wall = time.perf_counter() - t_loop

    evaluated = [r for r in rows if r["test_accuracy"] is not None]
    hist = partition.label_histograms(sim.data.y_train, sim.parts, sim.data.num_classes)
    return {
        "status": status,
        "error": error,
        "final_accuracy": evaluated[-1]["test_accuracy"] if evaluated else None,
        "best_accuracy": max(r["test_accuracy"] for r in evaluated) if evaluated else None,
        "rounds_to_target": hit["round"] if hit else None,
        "uplink_bytes_to_target": hit["cum_uplink_bytes"] if hit else None,
        "sim_seconds_to_target": hit["cum_sim_seconds"] if hit else None,
        "uplink_bytes": cum_up,
        "downlink_bytes": cum_down,
        "compression_ratio": cum_dense / cum_up if cum_up else None,
        "wall_seconds": wall,
        "sim_seconds": cum_sim,
        "rounds_completed": len(rows),
        "client_sizes": sim.sizes.tolist(),
        "client_label_hist": hist.tolist(),
        "num_params": sim.spec.num_params,
        "dropout_p_effective": seeding.DropoutBits(sim.spec.dropout, 1, 1, "cpu").p_eff
        if sim.spec.dropout > 0
        else 0.0,
    }
