"""Options and the timing helper shared by the kernel benchmarks (``bench_*.py``).

Every kernel is timed with ``benchmark.pedantic(setup=...)`` so each round gets fresh
inputs (a freshly seeded generator, a fresh compressor state); the number of rounds is
calibrated here from ``--benchmark-max-time`` and ``--benchmark-min-rounds``, the same
knobs pytest-benchmark's own calibration reads.

Options (all also settable from the gate, ``benchmarks/gate.py``):

``--bench-sizes=1e4,1e6,1e7``   values per tensor; more sizes => longer run
``--bench-cohort=100x1e5``      clients x values of the batched path; ``0`` skips it
``--bench-devices=cpu,cuda``    cuda cases skip themselves where no GPU is present
``--bench-threads=N``           torch intra-op threads; 0 keeps torch's default. The gate
                                uses 1: on a shared 2-core machine a second OpenMP thread
                                that gets descheduled stalls a 60 us copy for 8 ms
``--bench-slowdown=GLOB``       run every kernel whose id matches GLOB three times (>= 2x slower):
                                how the gate is shown to catch a slowdown; also read
                                from ``$FEDBENCH_BENCH_SLOWDOWN``
"""

from __future__ import annotations

import fnmatch
import math
import os
import time
from collections.abc import Callable
from typing import Any

import pytest
import torch

SLOWDOWN_ENV = "FEDBENCH_BENCH_SLOWDOWN"
# More rounds than this add little to a median and cost minutes at 10^4 values.
MAX_ROUNDS = 1000


def parse_count(text: str, what: str) -> int:
    """``"1e6"`` or ``"1000000"`` -> 1000000; anything else is a ValueError naming ``what``."""
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{what}: {text!r} is not a number (e.g. 1e6)") from None
    if value < 1 or value != int(value):
        raise ValueError(f"{what}: {text!r} must be a positive whole number")
    return int(value)


def size_label(n: int) -> str:
    """1000000 -> ``"1e6"``; other counts as plain integers."""
    exp = math.log10(n)
    return f"1e{int(exp)}" if exp == int(exp) else str(n)


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("fedbench kernels")
    group.addoption("--bench-sizes", default="1e4,1e6,1e7", help="values per tensor")
    group.addoption(
        "--bench-cohort", default="100x1e5", help="clients x values of the batched path; 0 skips"
    )
    group.addoption("--bench-devices", default="cpu,cuda", help="devices to time on")
    group.addoption("--bench-threads", type=int, default=0, help="torch threads; 0 = default")
    group.addoption(
        "--bench-slowdown",
        default=os.environ.get(SLOWDOWN_ENV, ""),
        help="glob of kernel ids to run three times per round (an injected >= 2x slowdown)",
    )


def pytest_configure(config: pytest.Config) -> None:
    threads = config.getoption("bench_threads", 0)
    if threads < 0:
        raise ValueError(f"--bench-threads must be >= 0 (0 = torch's default), got {threads}")
    if threads:
        torch.set_num_threads(threads)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    opt = metafunc.config.getoption
    if "size" in metafunc.fixturenames:
        sizes = [parse_count(s, "--bench-sizes") for s in opt("bench_sizes").split(",") if s]
        metafunc.parametrize("size", sizes, ids=[size_label(n) for n in sizes])
    if "cohort" in metafunc.fixturenames:
        spec = opt("bench_cohort")
        cohorts = []
        if spec not in ("", "0"):
            clients, _, values = spec.partition("x")
            cohorts = [
                (parse_count(clients, "--bench-cohort"), parse_count(values, "--bench-cohort"))
            ]
        metafunc.parametrize("cohort", cohorts, ids=[f"{c}x{size_label(v)}" for c, v in cohorts])
    if "device" in metafunc.fixturenames:
        devices = []
        for name in opt("bench_devices").split(","):
            if name not in ("cpu", "cuda"):
                raise ValueError(f"--bench-devices: {name!r} is not one of cpu, cuda")
            marks = []
            if name == "cuda" and not torch.cuda.is_available():
                marks = [pytest.mark.skip(reason="no CUDA device on this machine")]
            devices.append(pytest.param(name, marks=marks, id=name))
        metafunc.parametrize("device", devices)


class Timer:
    """Times one kernel in a benchmark: calibrated rounds, fresh inputs, optional slowdown."""

    def __init__(self, benchmark: Any, config: pytest.Config) -> None:
        self.benchmark = benchmark
        self.max_time = float(config.getoption("benchmark_max_time"))
        self.min_rounds = int(config.getoption("benchmark_min_rounds"))
        self.slowdown = config.getoption("bench_slowdown")

    def __call__(
        self,
        kernel_id: str,
        target: Callable[..., Any],
        setup: Callable[[], tuple[tuple, dict]],
        *,
        device: str,
    ) -> Any:
        """Time ``target(*args)`` with ``args`` from a fresh ``setup()`` each round.

        On CUDA the device is synchronised inside the timed call, so the time is the
        kernel's, not its launch's. Returns the last round's result (to be checked).
        """
        sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
        injected = bool(self.slowdown) and fnmatch.fnmatchcase(kernel_id, self.slowdown)
        repeats = 3 if injected else 1  # the 2nd call finds its input in cache: 3 for >= 2x

        def kernel(*args: Any, **kwargs: Any) -> Any:
            for _ in range(repeats):
                out = target(*args, **kwargs)
            sync()
            return out

        # One warm-up call (first-touch allocations, lazy init), then one to estimate.
        args, kwargs = setup()
        kernel(*args, **kwargs)
        args, kwargs = setup()
        start = time.perf_counter()
        kernel(*args, **kwargs)
        elapsed = max(time.perf_counter() - start, 1e-7)
        rounds = min(MAX_ROUNDS, max(self.min_rounds, math.ceil(self.max_time / elapsed)))
        self.benchmark.extra_info.update(
            slowdown_injected=injected, threads=torch.get_num_threads()
        )
        return self.benchmark.pedantic(kernel, setup=setup, rounds=rounds, warmup_rounds=1)


@pytest.fixture
def timer(benchmark: Any, request: pytest.FixtureRequest) -> Timer:
    return Timer(benchmark, request.config)
