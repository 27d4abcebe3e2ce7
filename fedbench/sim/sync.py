"""Synchronous FedAvg rounds: sample -> broadcast (bytes) -> local training -> uplink
(bytes) -> aggregate -> server step.

The sampled clients that answer (``network.available``) are trained in chunks of
``cohort_chunk`` (similar sizes share a chunk, less padding; results do not depend on
chunks). With a network ``deadline``, a client whose download + compute + upload time
misses it is dropped: its update never arrives and its codec state is as before the
round.
"""

from __future__ import annotations

import copy
import time
from typing import Any

import numpy as np
import torch

from fedbench.sim.scheduler import Federation
from fedbench.sim.uplink import merge


class SyncRounds:
    """The synchronous scheduler over a :class:`~fedbench.sim.scheduler.Federation`."""

    def __init__(self, fed: Federation) -> None:
        self.fed = fed

    def select(self, round_: int) -> np.ndarray:
        """The clients asked to train in round ``round_`` (sorted ids): a uniform sample of
        ``clients_per_round`` from (seed, round). A strategy that picks clients its own way
        (round robin, by speed, by loss) overrides this one method."""
        return self.fed.sample(round_)

    def round(self, round_: int) -> dict[str, Any]:
        """Run round ``round_`` (1-based) and return its metrics row (no evaluation)."""
        fed = self.fed
        t_round = time.perf_counter()
        sampled = np.asarray(self.select(round_), dtype=np.int64)
        answered = fed.network.available(sampled, round_)
        clients = sampled[answered]
        clients = clients[np.argsort(fed.sizes[clients], kind="stable")]

        start, down_bytes, down_seconds = fed.broadcast(clients, round_)
        total_weight = 0.0
        up_bytes = dense_bytes = dropped = 0
        enc_s = dec_s = 0.0
        losses, times, metrics = [], [], {}
        chunk = fed.chunk_size(len(clients))
        for lo in range(0, len(clients), chunk):
            ids = clients[lo : lo + chunk]
            res, deltas = fed.train_cohort(ids, start, round_)
            states = [fed.states(int(c)) for c in ids]
            snapshot = copy.deepcopy(states) if fed.network.deadline is not None else None
            sent, stage_metrics = fed.uplink(ids, deltas, states, round_)
            merge(metrics, stage_metrics)
            enc_s += sent.encode_seconds
            dec_s += sent.decode_seconds
            samples = res.samples.cpu().numpy()
            seconds = fed.network.client_seconds(
                ids, down_bytes[lo : lo + chunk], sent.nbytes, samples
            )
            late = fed.network.dropped(seconds)
            for i in np.flatnonzero(late):  # the update never arrived: the client's state
                states[i][:] = snapshot[i]  # is as before the round
            kept = ~late
            w = torch.from_numpy((fed.sizes[ids] * kept).astype(np.float32)).to(fed.device)
            for k, payload in enumerate(sent.payload):
                fed.aggregator.add(k, payload, w, ids)
            total_weight += float(w.sum())
            up_bytes += int(sent.nbytes[kept].sum())
            dense_bytes += fed.dense_bytes * int(kept.sum())
            dropped += int(late.sum())
            losses.append(res.loss.cpu())
            times.append((seconds, late))

        if total_weight > 0:
            t0 = time.perf_counter()
            with torch.no_grad():
                steps = fed.aggregator.result(total_weight)
            dec_s += time.perf_counter() - t0
            fed.server_step(steps, f"round {round_}")
        all_seconds = np.concatenate([s for s, _ in times]) if times else np.zeros(0)
        all_late = np.concatenate([d for _, d in times]) if times else np.zeros(0, bool)
        sim_seconds = fed.network.round_seconds(all_seconds, all_late)
        train_loss = float(torch.cat(losses).mean()) if losses else None
        return {
            "round": round_,
            "train_loss": train_loss,
            "uplink_bytes": up_bytes,
            "downlink_bytes": int(down_bytes.sum()),
            "dense_uplink_bytes": dense_bytes,
            "dense_downlink_bytes": fed.dense_bytes * len(clients),
            "encode_seconds": enc_s,
            "decode_seconds": dec_s,
            "downlink_codec_seconds": down_seconds,
            "sim_seconds": sim_seconds,
            "clients": len(clients) - dropped,
            "clients_dropped": dropped,
            "clients_unavailable": int((~answered).sum()),
            **metrics,
            "_t_round": t_round,
        }
