"""The run loop: a scheduler's steps, held-out evaluation, one metrics row a step, and
the run's summary.

``validate(cfg)`` checks a whole composed config (a plain dict) before any work
(``fedbench.sim.setup``); ``run(cfg, on_round=...)`` runs it and returns the summary.
The pieces: ``simulation.Simulation`` (the federation's state and operations),
``sync.SyncRounds`` and ``fedbuff.FedBuff`` (the schedulers), ``server`` (the server
optimiser), ``aggregate`` (what the server makes of the messages), ``downlink`` (the
broadcast of the model's change), ``uplink`` (the hook shape of the edge plug-ins).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Mapping
from typing import Any

import torch

from fedbench.sim import fedbuff, heap, partition, seeding
from fedbench.sim.scheduler import Scheduler, user_scheduler
from fedbench.sim.server import Diverged
from fedbench.sim.setup import prepare, validate
from fedbench.sim.simulation import Simulation
from fedbench.sim.sync import SyncRounds

__all__ = ["Diverged", "Simulation", "prepare", "run", "validate"]

log = logging.getLogger(__name__)

CLIENT_ACCURACY = ("client_accuracy_weighted", "client_accuracy_mean", "client_accuracy_p10")


def scheduler(cfg: Mapping[str, Any], sim: Simulation) -> Scheduler:
    """The run's scheduler: ``aggregation`` = ``sync`` (FedAvg rounds), ``fedbuff``, or
    a user's ``{_target_: pkg.Class, ...}``: a class taking the run (a
    :class:`~fedbench.sim.scheduler.Federation`) and its own keywords, with
    ``round(round_) -> metrics row`` (see ``docs/extending.md``)."""
    mode = cfg.get("aggregation", "sync")
    if mode == "sync":
        return SyncRounds(sim)
    if mode == "fedbuff":
        return fedbuff.FedBuff(sim)
    cls, kwargs = user_scheduler(mode)
    return cls(sim, **kwargs)


def run(
    cfg: Mapping[str, Any], *, on_round: Callable[[dict[str, Any]], None] | None = None
) -> dict[str, Any]:
    """Run the composed config ``cfg``; ``on_round(row)`` after every round; the summary.

    NaN/inf in training (or an update a codec cannot carry) stops the run with status
    ``diverged`` and the rows so far; it is never raised.

    Raises glibc's heap thresholds for the process (``fedbench.sim.heap``): a step's
    activations are reused, not faulted in afresh.
    """
    heap.keep_heap()
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
    stepper = scheduler(cfg, sim)
    rows: list[dict[str, Any]] = []
    status, error = "ok", None
    cum_up = cum_down = cum_dense = cum_dense_down = 0
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
            row.update(sim.client_accuracy())  # where clients hold test data of their own
            if not math.isfinite(loss):
                status, error = "diverged", f"round {r}: test loss is {loss}"
                break
        cum_up += row["uplink_bytes"]
        cum_down += row["downlink_bytes"]
        cum_dense += row.pop("dense_uplink_bytes")
        cum_dense_down += row.pop("dense_downlink_bytes")
        cum_sim += row["sim_seconds"]
        row.update(
            test_accuracy=acc,
            test_loss=loss,
            cum_uplink_bytes=cum_up,
            cum_downlink_bytes=cum_down,
            cum_dense_uplink_bytes=cum_dense,
            compression_ratio=cum_dense / cum_up if cum_up else None,
            downlink_compression_ratio=cum_dense_down / cum_down if cum_down else None,
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
    per_client = {k: evaluated[-1].get(k) for k in CLIENT_ACCURACY} if evaluated else {}
    hist = partition.label_histograms(sim.data.y_train, sim.parts, sim.data.num_classes)
    return {
        "status": status,
        "error": error,
        "final_accuracy": evaluated[-1]["test_accuracy"] if evaluated else None,
        **{k: v for k, v in per_client.items() if v is not None},  # of the final model
        "best_accuracy": max(r["test_accuracy"] for r in evaluated) if evaluated else None,
        "rounds_to_target": hit["round"] if hit else None,
        "uplink_bytes_to_target": hit["cum_uplink_bytes"] if hit else None,
        "sim_seconds_to_target": hit["cum_sim_seconds"] if hit else None,
        "uplink_bytes": cum_up,
        "downlink_bytes": cum_down,
        "compression_ratio": cum_dense / cum_up if cum_up else None,
        # The same ratio for the broadcast, and for both directions together.
        "downlink_compression_ratio": cum_dense_down / cum_down if cum_down else None,
        "total_compression_ratio": (
            (cum_dense + cum_dense_down) / (cum_up + cum_down) if cum_up + cum_down else None
        ),
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
