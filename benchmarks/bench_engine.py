"""Cohort engine vs the per-client loop, in one run, on the tutorial's workload.

    python benchmarks/bench_engine.py                 # 10 and 100 clients, then 1,000 (cohort)
    python benchmarks/bench_engine.py --threads 1 --loop-at-1000 --json out.json

Workload: the tutorial MLP (64 -> 128 -> 64 -> 10, dropout 0.2), batch 32, 3 local
epochs, lr 0.01, momentum 0.9, dense uplink. 10 clients: digits split IID (~144
samples each). 100 and 1,000 clients: the same shapes on ``synthetic`` data with 64
features and exactly 144 training samples per client, so a client-round costs the same
at every scale. Times are the round loop's (training, encode, decode, aggregation,
evaluation), median over rounds after one warm-up round.

Also timed: one training step of 256 clients written as batched GEMMs + autograd (what
the engine uses) against ``torch.func.vmap(grad(...))``, and the dropout masks of 1,000
clients from counter-based hashing (what the engine uses) against ``F.dropout``.

Not a pytest test (nothing here is named ``test_*``); a script whose numbers go in the
README. Memory: peak RSS after 1,000 clients with ``cohort_chunk`` 64 and then 256.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import time
from typing import Any

import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from fedbench.compress import config_dir
from fedbench.sim import seeding
from fedbench.sim.engine import Simulation

SYNTHETIC_144 = [
    "dataset=synthetic", "dataset.dimension=64", "dataset.size_mu=0", "dataset.size_sigma=0",
    "dataset.min_samples=179", "dataset.max_samples=null", "partition=natural",
]  # fmt: skip  # 1 + 179 = 180 samples a client, 20% held out => 144 to train on


def make_cfg(overrides: list[str]) -> dict[str, Any]:
    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose("config", overrides=overrides)
    out = OmegaConf.to_container(cfg, resolve=True)
    out.pop("hydra", None)
    return out


def seconds_per_round(overrides: list[str], rounds: int) -> float:
    sim = Simulation(make_cfg(overrides))
    sim.round(1)  # warm-up: first-touch allocations, lazy init
    times = []
    for r in range(2, rounds + 2):
        t = time.perf_counter()
        sim.round(r)
        sim.evaluate()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def compare(clients: int, rounds: int, loop_rounds: int, extra: list[str]) -> dict[str, Any]:
    base = [f"num_clients={clients}", f"clients_per_round={clients}", *extra]
    cohort = seconds_per_round([*base, "engine=cohort"], rounds)
    out: dict[str, Any] = {"clients": clients, "cohort_s_per_round": cohort,
                           "cohort_ms_per_client_round": 1e3 * cohort / clients}  # fmt: skip
    if loop_rounds > 0:
        loop = seconds_per_round([*base, "engine=loop"], loop_rounds)
        out.update(
            loop_s_per_round=loop,
            loop_ms_per_client_round=1e3 * loop / clients,
            speedup=loop / cohort,
        )
    return out


def step_bmm_vs_vmap(clients: int = 256, batch: int = 32, reps: int = 10) -> dict[str, float]:
    """One forward+backward of the MLP for ``clients`` clients, two ways (ms)."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(clients, batch, 64, generator=gen)
    y = torch.randint(0, 10, (clients, batch), generator=gen)
    shapes = [(128, 64), (64, 128), (10, 64)]
    ws = [0.1 * torch.randn(clients, *s, generator=gen) for s in shapes]
    bs = [torch.zeros(clients, s[0]) for s in shapes]

    def bmm() -> None:
        ps = [p.clone().requires_grad_() for p in ws + bs]
        h = x
        for i in range(3):
            h = torch.baddbmm(ps[3 + i].unsqueeze(1), h, ps[i].transpose(1, 2))
            h = torch.relu(h) if i < 2 else h
        torch.autograd.grad(F.cross_entropy(h.flatten(0, 1), y.flatten()), ps)

    def one(params, xb, yb):
        h = xb
        for i in range(3):
            h = F.linear(h, params[i], params[3 + i])
            h = torch.relu(h) if i < 2 else h
        return F.cross_entropy(h, yb)

    per_client_grad = torch.func.vmap(torch.func.grad(one))

    def vmap() -> None:
        per_client_grad(ws + bs, x, y)

    out = {}
    for name, fn in (("bmm_autograd_ms", bmm), ("vmap_grad_ms", vmap)):
        fn()
        t = time.perf_counter()
        for _ in range(reps):
            fn()
        out[name] = 1e3 * (time.perf_counter() - t) / reps
    return out


def masks_hash_vs_dropout(
    clients: int = 1000, batch: int = 32, units: int = 192
) -> dict[str, float]:
    """Dropout masks for one step of ``clients`` clients, two ways (ms)."""
    bits = seeding.DropoutBits(0.2, batch, units, "cpu")
    keys = seeding.client_keys(torch.arange(clients), 0, 1, seeding.DROPOUT)
    step = torch.zeros(clients, dtype=torch.long)
    act = torch.randn(clients, batch, units)
    out = {}
    for name, fn in (
        ("hash_masks_ms", lambda: act * bits.masks(keys, step)),
        ("f_dropout_ms", lambda: F.dropout(act, 0.2)),
    ):
        fn()
        t = time.perf_counter()
        for _ in range(5):
            fn()
        out[name] = 1e3 * (time.perf_counter() - t) / 5
    return out


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--rounds", type=int, default=5, help="timed cohort rounds per case")
    ap.add_argument("--loop-rounds", type=int, default=3, help="timed loop rounds per case")
    ap.add_argument("--loop-at-1000", action="store_true", help="also time the loop at 1,000")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json", default=None, help="write the results here too")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    dev = [f"device={args.device}"]
    results: dict[str, Any] = {"threads": torch.get_num_threads(), "device": args.device}
    results["10_digits"] = compare(10, args.rounds, args.loop_rounds, dev)
    print(json.dumps(results["10_digits"]), flush=True)
    results["100_synthetic"] = compare(100, args.rounds, args.loop_rounds, [*SYNTHETIC_144, *dev])
    print(json.dumps(results["100_synthetic"]), flush=True)
    for chunk in (64, 256):
        key = f"1000_synthetic_chunk{chunk}"
        loops = args.loop_rounds if args.loop_at_1000 and chunk == 256 else 0
        results[key] = compare(
            1000, max(2, args.rounds // 2), loops, [*SYNTHETIC_144, *dev, f"cohort_chunk={chunk}"]
        )
        results[key]["peak_rss_mb_after"] = peak_rss_mb()
        print(json.dumps(results[key]), flush=True)
    results["step_256_clients"] = step_bmm_vs_vmap()
    results["masks_1000_clients"] = masks_hash_vs_dropout()
    print(json.dumps(results["step_256_clients"]), json.dumps(results["masks_1000_clients"]))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
