"""Cohort engine vs the per-client loop, in one run, on the tutorial's workload.

    python benchmarks/bench_engine.py --threads 1     # 10 and 100 clients, then 1,000
    python benchmarks/bench_engine.py --threads 1 --loop-at-1000 --json out.json

Workload: the tutorial MLP (64 -> 128 -> 64 -> 10, dropout 0.2), batch 32, 3 local
epochs, lr 0.01, momentum 0.9, dense uplink. 10 clients: digits split IID (~144
samples each). 100 and 1,000 clients: the same shapes on ``synthetic`` data with 64
features and exactly 144 training samples per client, so a client-round costs the same
at every scale. Times are the round loop's (training, encode, decode, aggregation,
evaluation), median over rounds after one warm-up round; cohort and loop rounds
alternate, so both see the same machine load and the ratio is what to read.

1,000 clients run in a fresh process per ``cohort_chunk`` (64, 256) and report the
growth of the resident set during the rounds (sampled every millisecond) over what it
was after start-up: the memory the round loop itself needs.

Also timed: one training step of 256 clients three ways (the engine's hand-written
backward, batched GEMMs + autograd, ``torch.func.vmap(grad(...))``), and the dropout
masks of 1,000 clients from counter-based hashing (the engine's) against ``F.dropout``.

Every built-in model (``--models``; ``--models-only`` skips the MLP cases above): local
training of 10 clients (``--model-clients``) by ``cohort.train`` and ``loop.train`` in
the same process, their calls interleaved, on random data of the model's standard
shape (``MODEL_CASES``): ms per client-round, samples/s, training FLOPs per sample
(``torch.utils.flop_counter`` on one client's forward + backward), the fraction of a
same-run ``torch.mm`` GFLOP/s the cohort engine reaches, and the peak memory of one
chunk (CUDA: ``max_memory_allocated``; CPU: growth of the resident set, sampled).

Not a pytest test (nothing here is named ``test_*``); a script whose numbers go in the
README.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import threading
import time
from typing import Any

import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from fedbench.compress import config_dir
from fedbench.sim import cohort as cohort_engine
from fedbench.sim import heap, models, seeding
from fedbench.sim import loop as loop_engine
from fedbench.sim.engine import Simulation
from fedbench.sim.models import MLP, ModelSpec

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


def _timed_round(sim: Simulation, r: int) -> float:
    t = time.perf_counter()
    sim.round(r)
    sim.evaluate()
    return time.perf_counter() - t


def compare(clients: int, rounds: int, loop_rounds: int, extra: list[str]) -> dict[str, Any]:
    """Seconds per round of both engines, their rounds interleaved (same load)."""
    base = [f"num_clients={clients}", f"clients_per_round={clients}", *extra]
    sims = {"cohort": Simulation(make_cfg([*base, "engine=cohort"]))}
    if loop_rounds > 0:
        sims["loop"] = Simulation(make_cfg([*base, "engine=loop"]))
    times: dict[str, list[float]] = {k: [] for k in sims}
    for sim in sims.values():
        sim.round(1)  # warm-up: first-touch allocations, lazy init
    for r in range(2, rounds + 2):
        times["cohort"].append(_timed_round(sims["cohort"], r))
        if "loop" in sims and r - 2 < loop_rounds:
            times["loop"].append(_timed_round(sims["loop"], r))
    cohort = statistics.median(times["cohort"])
    out: dict[str, Any] = {"clients": clients, "cohort_s_per_round": cohort,
                           "cohort_ms_per_client_round": 1e3 * cohort / clients}  # fmt: skip
    if "loop" in sims:
        loop = statistics.median(times["loop"])
        out.update(
            loop_s_per_round=loop,
            loop_ms_per_client_round=1e3 * loop / clients,
            speedup=loop / cohort,
        )
    return out


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _compare_with_memory(threads: int, keep: bool, args: tuple) -> dict[str, Any]:
    """``compare`` in this (fresh) process, with the peak growth of its resident set.

    The heap is kept (``keep``: as ``engine.run`` does) only once the baseline is taken:
    memory the set-up freed is then back with the OS, not reused off the books.
    """
    torch.set_num_threads(threads)
    peak, stop = [0], threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], _rss_bytes())
            time.sleep(0.001)

    clients, rounds, loop_rounds, extra = args
    Simulation(make_cfg([f"num_clients={clients}", f"clients_per_round={clients}", *extra]))
    before = _rss_bytes()  # after start-up: data loaded, partition built, imports done
    if keep:
        heap.keep_heap()
    watcher = threading.Thread(target=sample, daemon=True)
    watcher.start()
    try:
        out = compare(clients, rounds, loop_rounds, extra)
    finally:
        stop.set()
        watcher.join()
    out["rss_growth_mb"] = (peak[0] - before) / 2**20
    return out


def step_three_ways(clients: int = 256, batch: int = 32, reps: int = 10) -> dict[str, float]:
    """One forward+backward of the MLP (dropout 0.2) for ``clients`` clients (ms)."""
    gen = torch.Generator().manual_seed(0)
    spec = ModelSpec(MLP(64, 10, [128, 64], 0.2))
    fast = spec.fast
    x = torch.randn(clients, batch, 64, generator=gen)
    y = torch.randint(0, 10, (clients, batch), generator=gen)
    params = [torch.stack([p for _ in range(clients)]) for p in spec.init(gen)]
    bits = seeding.DropoutBits(0.2, batch, spec.dropout_units, "cpu")
    keys = seeding.client_keys(torch.arange(clients), 0, 1, seeding.DROPOUT)
    mask = bits.masks(keys, torch.zeros(clients, dtype=torch.long))
    sinks = [torch.zeros_like(p) for p in params]

    def hand() -> None:  # what the engine runs (cohort.train, the MLP's fast path)
        with torch.no_grad():
            logits, saved = fast.forward_train(params, x, mask)
            d = torch.softmax(logits, 2) - F.one_hot(y, 10)
            fast.backward_into(params, saved, mask, d.div_(batch), sinks, 0.9)

    def autograd() -> None:
        leaves = [p.clone().requires_grad_() for p in params]
        logits = spec.forward(leaves, x, mask)
        torch.autograd.grad(F.cross_entropy(logits.flatten(0, 1), y.flatten()), leaves)

    def one(ps, xb, yb, mb):
        h = xb
        for i in range(3):
            h = F.linear(h, ps[2 * i], ps[2 * i + 1])
            if i < 2:
                h = torch.relu(h) * mb[:, (0, 128)[i] : (128, 192)[i]]
        return F.cross_entropy(h, yb)

    per_client_grad = torch.func.vmap(torch.func.grad(one))

    def vmap() -> None:
        per_client_grad(params, x, y, mask)

    fns = {"hand_backward_ms": hand, "bmm_autograd_ms": autograd, "vmap_grad_ms": vmap}
    return _interleaved_ms(fns, reps, warm_up=True)


def masks_hash_vs_dropout(
    clients: int = 1000, batch: int = 32, units: int = 192, reps: int = 5
) -> dict[str, float]:
    """Dropout applied to one step of ``clients`` clients' activations, two ways (ms)."""
    bits = seeding.DropoutBits(0.2, batch, units, "cpu")
    keys = seeding.client_keys(torch.arange(clients), 0, 1, seeding.DROPOUT)
    step = torch.zeros(clients, dtype=torch.long)
    act = torch.randn(clients, batch, units)
    fns = {
        "hash_masks_ms": lambda: act.mul_(bits.masks(keys, step)),
        "f_dropout_ms": lambda: F.dropout(act, 0.2),
    }
    return _interleaved_ms(fns, reps, warm_up=False)


def _interleaved_ms(fns: dict[str, Any], reps: int, *, warm_up: bool) -> dict[str, float]:
    """Median ms of each function, the functions taking turns (same machine load)."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    if warm_up:
        for fn in fns.values():
            fn()
    for _ in range(reps):
        for name, fn in fns.items():
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    return {k: 1e3 * statistics.median(v) for k, v in times.items()}


# name -> (config, in_features, classes, image shape, samples per client, batch size):
# the field's standard shapes, kept small enough for a shared 2-core machine (the LSTM at
# hidden 128 over 40 characters; LEAF's 256 over 80 costs ~8x the FLOPs per sample).
MODEL_CASES: dict[str, tuple[dict[str, Any], int, int, tuple | None, int, int]] = {
    "mlp": ({"name": "mlp"}, 64, 10, None, 144, 32),
    "logreg": ({"name": "logreg"}, 64, 10, None, 144, 32),
    "cnn": ({"name": "cnn"}, 784, 10, (1, 28, 28), 64, 32),
    "femnist_cnn": ({"name": "femnist_cnn"}, 784, 62, (1, 28, 28), 32, 16),
    "char_lstm": ({"name": "char_lstm", "hidden": 128}, 40, 80, None, 32, 16),
    "resnet": ({"name": "resnet"}, 3072, 10, (3, 32, 32), 32, 16),
}


def _case_data(name: str, clients: int, device: str):
    cfg, features, classes, image, per_client, batch = MODEL_CASES[name]
    spec = models.build(cfg, features, classes, image)
    gen = torch.Generator().manual_seed(0)
    n = clients * per_client
    if name == "char_lstm":
        X = torch.randint(0, classes, (n, features), generator=gen).float()
    else:
        X = torch.randn(n, features, generator=gen)
    y = torch.randint(0, classes, (n,), generator=gen)
    ids = torch.arange(clients)
    cohort = cohort_engine.Cohort(
        clients=ids,
        index=torch.arange(n).view(clients, per_client).to(device),
        n=torch.full((clients,), per_client).to(device),
        shuffle_keys=seeding.client_keys(ids, 0, 1, seeding.SHUFFLE, device=device),
        dropout_keys=seeding.client_keys(ids, 0, 1, seeding.DROPOUT, device=device),
    )
    opt = cohort_engine.LocalSGD(
        lr=0.01, momentum=0.9, weight_decay=0.0, batch_size=batch, local_epochs=1, local_steps=None
    )
    start = [p.to(device) for p in spec.init(seeding.generator("cpu", 0, seeding.INIT))]
    return spec, start, X.to(device), y.to(device), cohort, opt


def train_flops_per_sample(spec: ModelSpec, X: torch.Tensor, batch: int) -> float:
    """FLOPs of one client's forward + backward per sample (matmuls and convs)."""
    from torch.utils.flop_counter import FlopCounterMode

    module = spec.module().to(X.device).train()
    x = X[:batch]
    mask = torch.ones(batch, spec.dropout_units, device=X.device) if spec.takes_mask else None
    with FlopCounterMode(display=False) as counter:
        logits = module(x, mask) if spec.takes_mask else module(x)
        logits.sum().backward()
    return counter.get_total_flops() / batch


def mm_gflops(device: str, n: int = 1024, reps: int = 5) -> float:
    """GFLOP/s of a square float32 ``torch.mm`` on ``device``, now."""
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    torch.mm(a, b)
    _sync(device)
    t = time.perf_counter()
    for _ in range(reps):
        torch.mm(a, b)
    _sync(device)
    return 2 * n**3 * reps / (time.perf_counter() - t) / 1e9


def _sync(device: str) -> None:
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def _peak_chunk_mb(fn, device: str) -> float:
    """Peak memory (MB) ``fn()`` adds: CUDA's allocator peak, or the sampled RSS growth."""
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    peak, stop = [0], threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], _rss_bytes())
            time.sleep(0.001)

    before = _rss_bytes()
    watcher = threading.Thread(target=sample, daemon=True)
    watcher.start()
    try:
        fn()
    finally:
        stop.set()
        watcher.join()
    return max(peak[0] - before, 0) / 2**20


def _chunks(cohort: cohort_engine.Cohort, size: int) -> list[cohort_engine.Cohort]:
    return [
        cohort_engine.Cohort(*(getattr(cohort, f)[lo : lo + size] for f in
                               ("clients", "index", "n", "shuffle_keys", "dropout_keys")))
        for lo in range(0, len(cohort.clients), size)
    ]  # fmt: skip


def model_case(
    name: str,
    clients: int,
    reps: int,
    device: str,
    gflops: float,
    memory_mb: float | None,
    keep: bool = True,
) -> dict[str, Any]:
    """Cohort vs loop local training of ``clients`` clients of model ``name``; the cohort
    in the chunks ``cohort_chunk: auto`` picks for ``memory_mb``. The first chunk's peak
    memory is measured on glibc's default heap (a kept heap would reuse what the model's
    dry run freed); the times with the heap kept (``keep``) as in ``engine.run``."""
    spec, start, X, y, cohort, opt = _case_data(name, clients, device)
    samples = int(cohort.n.sum()) * opt.local_epochs
    chunk = models.auto_chunk(spec, opt.batch_size, clients, memory_mb, device)
    parts = _chunks(cohort, chunk)

    def once(engine: str) -> None:
        if engine == "cohort":
            for part in parts:
                cohort_engine.train(spec, start, X, y, part, opt)
        else:
            loop_engine.train(spec, start, X, y, cohort, opt)
        _sync(device)

    engines = ("cohort", "loop")

    peak = _peak_chunk_mb(lambda: cohort_engine.train(spec, start, X, y, parts[0], opt), device)
    if keep:
        heap.keep_heap()
    once("cohort")  # warm-up
    once("loop")
    ms = _interleaved_ms({k: (lambda k=k: once(k)) for k in engines}, reps, warm_up=False)
    flops = train_flops_per_sample(spec, X, opt.batch_size)
    per_s = samples / (ms["cohort"] / 1e3)
    return {
        "model": name,
        "params": spec.num_params,
        "clients": clients,
        "batchable": spec.batchable,
        "fast_path": spec.fast is not None,
        "cohort_ms_per_client_round": ms["cohort"] / clients,
        "loop_ms_per_client_round": ms["loop"] / clients,
        "speedup": ms["loop"] / ms["cohort"],
        "cohort_samples_per_s": per_s,
        "loop_samples_per_s": samples / (ms["loop"] / 1e3),
        "train_mflops_per_sample": flops / 1e6,
        "mm_gflops": gflops,
        "fraction_of_mm": flops * per_s / 1e9 / gflops,
        "chunk": chunk,
        "peak_chunk_mb": peak,
    }


def _model_case_fresh(threads: int, keep: bool, case: tuple) -> dict[str, Any]:
    torch.set_num_threads(threads)
    return model_case(*case, keep=keep)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--rounds", type=int, default=5, help="timed cohort rounds per case")
    ap.add_argument("--loop-rounds", type=int, default=3, help="timed loop rounds per case")
    ap.add_argument("--loop-at-1000", action="store_true", help="also time the loop at 1,000")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--json", default=None, help="write the results here too")
    ap.add_argument("--models", default=",".join(MODEL_CASES), help="built-in models to time")
    ap.add_argument("--model-clients", type=int, default=10, help="clients per model case")
    ap.add_argument("--model-reps", type=int, default=2, help="timed calls per engine and model")
    ap.add_argument("--models-only", action="store_true", help="skip the MLP engine cases")
    ap.add_argument(
        "--memory-mb", type=float, default=None, help="cohort_memory_mb (default: per device)"
    )
    ap.add_argument(
        "--glibc-heap",
        action="store_true",
        help="leave glibc's heap thresholds at their defaults (engine.run raises them)",
    )
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    threads, keep = torch.get_num_threads(), not args.glibc_heap
    dev = [f"device={args.device}"]
    results: dict[str, Any] = {"threads": threads, "device": args.device, "keep_heap": keep}
    if args.models:
        gflops = mm_gflops(args.device)
        results["models"] = []
        spawn = multiprocessing.get_context("spawn")
        for name in args.models.split(","):
            case = (name, args.model_clients, args.model_reps, args.device, gflops, args.memory_mb)
            with spawn.Pool(1) as pool:  # a fresh process: its memory growth is this chunk's
                out = pool.apply(_model_case_fresh, (threads, keep, case))
            results["models"].append(out)
            print(json.dumps(out), flush=True)
    if args.models_only:
        if args.json:
            with open(args.json, "w") as f:
                json.dump(results, f, indent=2)
        return
    if keep:
        heap.keep_heap()  # this process's own cases (the 1,000-client ones run in fresh ones)
    results["10_digits"] = compare(10, args.rounds, args.loop_rounds, dev)
    print(json.dumps(results["10_digits"]), flush=True)
    results["100_synthetic"] = compare(100, args.rounds, args.loop_rounds, [*SYNTHETIC_144, *dev])
    print(json.dumps(results["100_synthetic"]), flush=True)
    spawn = multiprocessing.get_context("spawn")
    for chunk in (64, 256):
        key = f"1000_synthetic_chunk{chunk}"
        loops = args.loop_rounds if args.loop_at_1000 and chunk == 256 else 0
        case = (
            1000,
            max(2, args.rounds // 2),
            loops,
            [*SYNTHETIC_144, *dev, f"cohort_chunk={chunk}"],
        )
        with spawn.Pool(1) as pool:  # a fresh process: its memory growth is this case's
            results[key] = pool.apply(_compare_with_memory, (threads, keep, case))
        print(json.dumps(results[key]), flush=True)
    results["step_256_clients"] = step_three_ways()
    results["masks_1000_clients"] = masks_hash_vs_dropout()
    print(json.dumps(results["step_256_clients"]), json.dumps(results["masks_1000_clients"]))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
