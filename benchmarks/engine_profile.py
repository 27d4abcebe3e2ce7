"""Where a client-round's time goes, cohort engine vs the per-client loop, in one run.

    python benchmarks/engine_profile.py --models cnn,char_lstm      # one thread
    python benchmarks/engine_profile.py --models cnn --threads 2 --memory-mb 256

For each built-in model, on ``bench_engine``'s workload (``MODEL_CASES``: 10 clients,
the chunk ``cohort_chunk: auto`` picks for ``--memory-mb``), both engines train under
``torch.profiler`` (interleaved, ``--reps`` times each) and every op's own CPU time is
split in two: the compute kernels (convolutions and matrix products: the FLOPs, run by
oneDNN and MKL in both engines) and everything else (normalisation, pooling,
activations, copies, the optimiser, dispatch). Printed per engine: ms per client-round
in each part, the kernels' GFLOP/s, and the speed-up over the loop that the cohort
could reach if everything but its kernels cost nothing (``kernel_bound``): what batching
can still win on this machine once the kernels dominate.

Not a pytest test; a diagnostic whose figures go in the README and the issues' notes.
The profiler adds a few percent of dispatch overhead to both engines alike.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import bench_engine as be

from fedbench.sim import cohort as cohort_engine
from fedbench.sim import heap, models
from fedbench.sim import loop as loop_engine

# The ops that carry the FLOPs (their own time, not their callers').
KERNELS = frozenset({
    "aten::mkldnn_convolution", "aten::convolution_backward", "aten::_slow_conv2d_forward",
    "aten::_slow_conv2d_backward", "aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm",
})  # fmt: skip


def _split_ms(prof) -> tuple[float, float]:
    """(kernel ms, other ms): every op's self CPU time, summed by kind."""
    kernel = other = 0.0
    for ev in prof.key_averages():
        if ev.key in KERNELS:
            kernel += ev.self_cpu_time_total
        else:
            other += ev.self_cpu_time_total
    return kernel / 1e3, other / 1e3


def profile_case(name: str, clients: int, reps: int, memory_mb: float | None) -> dict:
    spec, start, X, y, cohort, opt = be._case_data(name, clients, "cpu")
    chunk = models.auto_chunk(spec, opt.batch_size, clients, memory_mb, "cpu")
    parts = be._chunks(cohort, chunk)
    runs = {
        "cohort": lambda: [cohort_engine.train(spec, start, X, y, p, opt) for p in parts],
        "loop": lambda: loop_engine.train(spec, start, X, y, cohort, opt),
    }
    for fn in runs.values():  # warm-up: compiled kernels, oneDNN primitives
        fn()
    parts_ms = {k: [0.0, 0.0] for k in runs}
    for _ in range(reps):
        for k, fn in runs.items():
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                fn()
            kern, rest = _split_ms(prof)
            parts_ms[k][0] += kern / (reps * clients)
            parts_ms[k][1] += rest / (reps * clients)
    flops = be.train_flops_per_sample(spec, X, opt.batch_size) * int(cohort.n.sum()) / clients
    out: dict = {
        "model": name,
        "clients": clients,
        "chunk": chunk,
        "threads": torch.get_num_threads(),
    }
    for k, (kern, rest) in parts_ms.items():
        out[k] = {
            "ms_per_client_round": kern + rest,
            "kernel_ms": kern,
            "other_ms": rest,
            "kernel_gflops": flops / (kern / 1e3) / 1e9,
        }
    loop_ms, cohort = out["loop"]["ms_per_client_round"], out["cohort"]
    out["speedup"] = loop_ms / cohort["ms_per_client_round"]
    out["kernel_bound"] = loop_ms / cohort["kernel_ms"]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default="cnn,char_lstm", help="built-in models (MODEL_CASES)")
    ap.add_argument("--clients", type=int, default=10)
    ap.add_argument("--reps", type=int, default=3, help="profiled calls per engine")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--memory-mb", type=float, default=None, help="cohort_memory_mb")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    heap.keep_heap()  # as engine.run does
    for name in args.models.split(","):
        if name not in be.MODEL_CASES:
            ap.error(f"--models: {name!r} is not one of {sorted(be.MODEL_CASES)}")
    for name in args.models.split(","):
        out = profile_case(name, args.clients, args.reps, args.memory_mb)
        print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
