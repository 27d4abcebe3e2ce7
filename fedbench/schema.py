"""Fast config validation that runs before torch is imported.

Each rule names the key, the value and what is allowed, in one line, so a bad cell of
a sweep fails in well under a second. The simulation core's own ``validate`` and the
compressor constructors check again (deeper, after imports), still before training.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

GROUPS = ("compressor", "dataset", "partition", "model", "network")
# Output, store and launcher settings: they change where results go, never the numbers.
OUTPUT_KEYS = ("store_dir", "force", "baseline", "hydra")

# The dense baseline of any run (accuracy impact is measured against it): these settings,
# compressor none. Edge strategies are off: they exist to save bytes or time.
DENSE_SETTINGS: dict[str, Any] = {
    "downlink": "none",
    "downlink_error_feedback": False,
    "upload_budget_s": None,
    "adaptive_choices": None,
    "lazy_threshold": None,
    "aggregation": "sync",
    "async_concurrency": None,
    "async_buffer_size": None,
}

Rule = Callable[[Any], str | None]  # returns what is allowed, or None when the value is fine


def _is_int(v: Any) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _is_real(v: Any) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)


def int_at_least(lo: int) -> Rule:
    return lambda v: None if _is_int(v) and v >= lo else f"an integer >= {lo}"


def opt_int_at_least(lo: int) -> Rule:
    return lambda v: (
        None if v is None or (_is_int(v) and v >= lo) else f"null or an integer >= {lo}"
    )


def real_in(lo: float, hi: float, *, lo_open: bool = False, hi_open: bool = False) -> Rule:
    def rule(v: Any) -> str | None:
        ok = _is_real(v) and (v > lo if lo_open else v >= lo) and (v < hi if hi_open else v <= hi)
        return (
            None
            if ok
            else f"a number in {'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"
        )

    return rule


def positive() -> Rule:
    return lambda v: None if _is_real(v) and v > 0 else "a finite number > 0"


def non_negative() -> Rule:
    return lambda v: None if _is_real(v) and v >= 0 else "a finite number >= 0"


def one_of(*choices: Any) -> Rule:
    return lambda v: None if v in choices else "one of " + ", ".join(map(str, choices))


def boolean() -> Rule:
    return lambda v: None if isinstance(v, bool) else "true or false"


def device() -> Rule:
    def rule(v: Any) -> str | None:
        ok = isinstance(v, str) and (
            v in ("cpu", "cuda") or (v.startswith("cuda:") and v[5:].isdigit())
        )
        return None if ok else "cpu, cuda or cuda:N"

    return rule


TOP_LEVEL: dict[str, Rule] = {
    "seed": int_at_least(0),
    "rounds": int_at_least(1),
    "num_clients": int_at_least(1),
    "clients_per_round": int_at_least(1),
    "local_epochs": int_at_least(1),
    "local_steps": opt_int_at_least(1),
    "batch_size": int_at_least(1),
    "lr": positive(),
    "momentum": real_in(0, 1, hi_open=True),
    "weight_decay": non_negative(),
    "server_lr": positive(),
    "server_momentum": real_in(0, 1, hi_open=True),
    "eval_every": int_at_least(1),
    "target_accuracy": lambda v: (
        None if v is None or (_is_real(v) and 0 < v <= 1) else "null or a number in (0, 1]"
    ),
    "engine": one_of("cohort", "loop"),
    "cohort_chunk": int_at_least(1),
    "device": device(),
    "threads": int_at_least(0),
    "downlink": lambda v: None if isinstance(v, str) and v else "a compressor name",
    "downlink_error_feedback": boolean(),
    "upload_budget_s": lambda v: None if v is None or (_is_real(v) and v > 0) else "null or > 0",
    "adaptive_choices": lambda v: (
        None if v is None or (isinstance(v, list | tuple) and v) else "null or a non-empty list"
    ),
    "lazy_threshold": lambda v: (
        None if v is None or (_is_real(v) and 0 < v <= 1) else "null or a number in (0, 1]"
    ),
    "aggregation": one_of("sync", "fedbuff"),
    "async_concurrency": opt_int_at_least(1),
    "async_buffer_size": opt_int_at_least(1),
    "store_dir": lambda v: None if isinstance(v, str) and v else "a folder path",
    "force": boolean(),
    "baseline": boolean(),
}

# Compressor knobs by name: whichever codec has them, they mean the same thing.
COMPRESSOR: dict[str, Rule] = {
    "bits": lambda v: (
        None if _is_int(v) and (1 <= v <= 8 or v == 16) else "an integer in 1..8 or 16"
    ),
    "ratio": lambda v: (
        None if v is None or (_is_real(v) and 0 < v <= 1) else "null or a number in (0, 1]"
    ),
    "k": opt_int_at_least(1),
    "rank": int_at_least(1),
    "levels": int_at_least(1),
    "bucket_size": int_at_least(0),
    "power_iterations": int_at_least(1),
    "error_feedback": boolean(),
    "stochastic": boolean(),
    "approximate": boolean(),
    "shared_seed": boolean(),
}

PARTITION: dict[str, Rule] = {
    "alpha": positive(),
    "shards_per_client": int_at_least(1),
}


def _check(section: str, cfg: Mapping[str, Any], rules: Mapping[str, Rule]) -> None:
    for key, rule in rules.items():
        if key in cfg:
            allowed = rule(cfg[key])
            if allowed is not None:
                name = f"{section}.{key}" if section else key
                raise ValueError(f"{name}={cfg[key]!r} is invalid: must be {allowed}")


def validate(cfg: Mapping[str, Any], *, compressors: list[str] | None = None) -> None:
    """Check a resolved config (plain dict) without importing torch; ValueError if bad."""
    known = set(TOP_LEVEL) | set(GROUPS) | set(OUTPUT_KEYS)
    unknown = sorted(set(cfg) - known)
    if unknown:
        raise ValueError(
            f"unknown config key(s) {unknown}; allowed top-level keys: {sorted(known)}"
        )
    for group in GROUPS:
        if not isinstance(cfg.get(group), Mapping):
            raise ValueError(f"{group}: missing config group (choose one with {group}=NAME)")
    _check("", cfg, TOP_LEVEL)
    if cfg["clients_per_round"] > cfg["num_clients"]:
        raise ValueError(
            f"clients_per_round={cfg['clients_per_round']} is invalid: must be <= "
            f"num_clients={cfg['num_clients']}"
        )
    if compressors is not None and cfg["downlink"] not in compressors:
        raise ValueError(
            f"downlink={cfg['downlink']!r} is invalid: must be a compressor name, one of "
            + ", ".join(compressors)
        )
    comp = cfg["compressor"]
    if not isinstance(comp.get("_target_"), str):
        raise ValueError("compressor._target_ is missing: choose compressor=NAME")
    _check("compressor", comp, COMPRESSOR)
    if comp.get("ratio") is not None and comp.get("k") is not None:
        raise ValueError(
            f"compressor.ratio={comp['ratio']!r} and compressor.k={comp['k']!r}: "
            "set one of them, not both (the other to null)"
        )
    _check("partition", cfg["partition"], PARTITION)
    dataset = cfg["dataset"]
    if dataset.get("name") == "npz":
        path = dataset.get("path")
        if not path:
            raise ValueError("dataset.path is missing: dataset=npz needs dataset.path=FILE.npz")
        if not Path(str(path)).expanduser().is_file():
            raise ValueError(f"dataset.path={path!r} is invalid: no such file")
