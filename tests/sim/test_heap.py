"""``sim.heap.keep_heap``: freed activations stay mapped (no page faults on reuse), the
user's own glibc tunables win, and the policy is set once a process.

Each case runs in a fresh interpreter: the thresholds are process-wide and one-way.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import pytest

glibc = pytest.mark.skipif(
    sys.platform != "linux" or platform.libc_ver()[0] != "glibc", reason="glibc's mallopt"
)

# A step's pattern: six 2 MiB activations alive at once, then all freed; ten steps.
# Count the minor page faults of the last nine (the first maps the pages either way).
PROBE = """
import json, resource, sys
import numpy as np
from fedbench.sim import heap
kept = heap.keep_heap() if sys.argv[1] == "keep" else None
def step():
    return [np.ones(2**19, dtype=np.float32) for _ in range(6)]
step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(9):
    step()
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
print(json.dumps({"kept": kept, "again": heap.keep_heap() if kept is not None else None,
                  "faults": faults}))
"""


def _probe(mode: str, **env: str) -> dict:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    environ.pop("GLIBC_TUNABLES", None)
    out = subprocess.run(
        [sys.executable, "-c", PROBE, mode],
        env=environ | env,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout)


@glibc
def test_kept_heap_reuses_freed_blocks_without_faulting_them_in_again():
    default, kept = _probe("default"), _probe("keep")
    assert kept["kept"] is True and kept["again"] is True
    # glibc's default hands the 12 MiB back every step (its trim threshold follows the
    # largest block freed, 2 MiB): ~3,000 faults a step
    assert default["faults"] > 9 * 1000
    assert kept["faults"] < 200


@glibc
@pytest.mark.parametrize(
    ("env", "kept"),
    [
        ({"MALLOC_TRIM_THRESHOLD_": "131072"}, False),
        ({"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=131072"}, False),
        ({"GLIBC_TUNABLES": "glibc.pthread.rseq=0"}, True),  # not about malloc
    ],
)
def test_the_users_own_tunables_win(env, kept):
    assert _probe("keep", **env)["kept"] is kept


def test_engine_run_keeps_the_heap(monkeypatch):
    from fedbench.sim import engine, heap

    calls = []
    monkeypatch.setattr(heap, "keep_heap", lambda: calls.append(1) or True)
    monkeypatch.setattr(engine, "_run", lambda cfg, on_round: {"status": "ok"})
    assert engine.run({"device": "cpu"}) == {"status": "ok"}
    assert calls == [1]
