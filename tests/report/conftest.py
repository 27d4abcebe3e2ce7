"""Fixture run folders written the way the app writes them, with known numbers.

Model: 10,000 parameters in one message per client; a dense fp32 message is
16 header bytes + 4 bytes a value. Each method's wire size and accuracy drop is fixed
below, so every ratio and impact in a report can be recomputed by hand.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from omegaconf import OmegaConf

NUMEL = 10_000
HEADER = 16
DENSE_MSG = HEADER + 4 * NUMEL
ROUNDS = 12
BANDWIDTH = 1e6  # bytes/s, for sim_seconds

# name -> (compressor group, hydra choice or None, wire bytes a message, accuracy drop,
#          write method/family into summary.json)
METHODS = {
    "none": (
        {"_target_": "fedbench.compress.dense.Dense", "error_feedback": False},
        "none",
        DENSE_MSG,
        0.0,
        True,
    ),
    "fp16": (
        {"_target_": "fedbench.compress.dense.Fp16", "error_feedback": False},
        None,
        HEADER + 2 * NUMEL,
        0.0,
        False,
    ),
    "quant8": (
        {
            "_target_": "fedbench.compress.quant.Quantize",
            "error_feedback": False,
            "bits": 8,
            "stochastic": True,
        },
        "quant8",
        HEADER + 8 + NUMEL,
        0.003,
        False,
    ),
    "topk": (
        {"_target_": "fedbench.compress.sparse.TopK", "error_feedback": True, "ratio": 0.1},
        "topk",
        HEADER + 8 * NUMEL // 10,
        0.010,
        True,
    ),
    "topk1": (
        {"_target_": "fedbench.compress.sparse.TopK", "error_feedback": True, "ratio": 0.01},
        "topk",
        HEADER + 8 * NUMEL // 100,
        0.030,
        True,
    ),
    "powersgd": (
        {"_target_": "fedbench.compress.lowrank.PowerSGD", "error_feedback": True, "rank": 2},
        "powersgd",
        HEADER + 2 * 200 * 4,
        0.015,
        True,
    ),
}
FAMILY = {
    "none": "none",
    "fp16": "fp16",
    "quant8": "quant",
    "topk": "topk",
    "topk1": "topk",
    "powersgd": "powersgd",
}


def base_config(num_clients: int, seed: int, local_steps: int | None = None) -> dict:
    return {
        "seed": seed,
        "rounds": ROUNDS,
        "num_clients": num_clients,
        "clients_per_round": "${num_clients}",  # Hydra saves interpolations unresolved
        "local_epochs": 1,
        "local_steps": local_steps,
        "batch_size": 32,
        "lr": 0.05,
        "momentum": 0.9,
        "weight_decay": 0.0,
        "server_lr": 1.0,
        "server_momentum": 0.0,
        "eval_every": 1,
        "target_accuracy": None,
        "engine": "cohort",
        "cohort_chunk": 256,
        "device": "cpu",
        "downlink": "none",
        "downlink_error_feedback": False,
        "store_dir": "${oc.env:FEDBENCH_STORE,/tmp/store}",
        "force": False,
        "baseline": True,
        "dataset": {"name": "digits", "val_fraction": 0.0},
        "partition": {"name": "dirichlet", "alpha": 0.5},
        "model": {"name": "mlp", "hidden": [64]},
        "network": {"name": "lte", "uplink_bps": 8 * BANDWIDTH, "latency_s": 0.05},
    }


def final_accuracy(method: str, num_clients: int, seed: int, local_steps: int | None) -> float:
    base = 0.92 - 0.01 * (num_clients == 20) + 0.004 * seed + 0.01 * bool(local_steps == 4)
    return round(base - METHODS[method][3], 6)


def write_run(
    run_dir: Path,
    method: str,
    num_clients: int,
    seed: int,
    *,
    local_steps: int | None = None,
    status: str = "ok",
    truncate: bool = False,
    error: str | None = None,
) -> dict:
    """One run folder; returns its summary (None-like {} when it has none)."""
    comp, choice, msg_bytes, _, named = METHODS[method]
    cfg = base_config(num_clients, seed, local_steps) | {"compressor": comp}
    (run_dir / ".hydra").mkdir(parents=True)
    OmegaConf.save(OmegaConf.create(cfg), run_dir / ".hydra" / "config.yaml")
    if choice is not None:
        hydra = {"hydra": {"runtime": {"choices": {"compressor": choice, "dataset": "digits"}}}}
        OmegaConf.save(OmegaConf.create(hydra), run_dir / ".hydra" / "hydra.yaml")
    final = final_accuracy(method, num_clients, seed, local_steps)
    tau = 2.0 / (local_steps or 1) ** 0.5 + 4 * METHODS[method][3]
    rows, cum_up = [], 0
    for r in range(1, ROUNDS + 1):
        up = num_clients * msg_bytes
        cum_up += up
        acc = final * (1 - math.exp(-r / tau)) / (1 - math.exp(-ROUNDS / tau))
        if status == "diverged" and r > 3:
            acc = 0.1
        rows.append(
            {
                "round": r,
                "test_accuracy": round(acc, 6),
                "test_loss": 2.0 * (1 - acc),
                "train_loss": float("nan") if status == "diverged" and r > 3 else 1.5 * (1 - acc),
                "uplink_bytes": up,
                "downlink_bytes": num_clients * DENSE_MSG,
                "cum_uplink_bytes": cum_up,
                "cum_downlink_bytes": r * num_clients * DENSE_MSG,
                "compression_ratio": DENSE_MSG / msg_bytes,
                "encode_seconds": 0.001,
                "decode_seconds": 0.001,
                "wall_seconds": 0.02,
                "sim_seconds": 0.05 + msg_bytes / BANDWIDTH,
            }
        )
    text = "".join(json.dumps(row) + "\n" for row in rows)
    if truncate:
        text = text[: len(text) - 40]  # the last line cut mid-object, as a kill leaves it
    (run_dir / "metrics.jsonl").write_text(text)
    if truncate:
        return {}
    summary = {
        "status": status,
        "error": error,
        "final_accuracy": rows[-1]["test_accuracy"] if status == "ok" else 0.1,
        "best_accuracy": max(x["test_accuracy"] for x in rows),
        "rounds_to_target": None,
        "uplink_bytes": cum_up,
        "downlink_bytes": rows[-1]["cum_downlink_bytes"],
        "compression_ratio": ROUNDS * num_clients * DENSE_MSG / cum_up,
        "wall_seconds": 0.24,
        "sim_seconds": sum(x["sim_seconds"] for x in rows),
        "config_hash": f"{method}-{num_clients}-{seed}-{local_steps}",
    }
    if named:
        summary |= {"method": choice, "family": FAMILY[method]}
    (run_dir / "summary.json").write_text(json.dumps(summary))
    return summary


def make_sweep(root: Path) -> Path:
    """6 methods x 2 client counts x 2 seeds, local SGD K=1/4, one cut, one failed run,
    one diverged run. Hydra multirun layout: root/<job number>/."""
    job = 0

    def nxt() -> Path:
        nonlocal job
        job += 1
        return root / str(job - 1)

    for method in METHODS:
        for clients in (10, 20):
            for seed in (0, 1):
                write_run(nxt(), method, clients, seed)
    for k in (1, 4):
        for seed in (0, 1):
            write_run(nxt(), "none", 10, seed, local_steps=k)
    write_run(nxt(), "topk1", 10, 2, truncate=True)
    write_run(
        nxt(),
        "powersgd",
        10,
        3,
        status="failed",
        error="ValueError: powersgd rank 64 exceeds min(shape)=10",
    )
    write_run(nxt(), "quant8", 20, 3, status="diverged", error="loss is NaN at round 4")
    (root / "multirun.yaml").write_text("hydra: {}\n")
    return root


@pytest.fixture(scope="session")
def sweep(tmp_path_factory) -> Path:
    return make_sweep(tmp_path_factory.mktemp("sweep"))


@pytest.fixture(scope="session")
def report(sweep, tmp_path_factory) -> Path:
    """The report of :func:`sweep`, built once (report.md's path)."""
    from fedbench.report import build_report

    return build_report([sweep], tmp_path_factory.mktemp("report"))
