"""The value rules of the top-level config keys and of the built-in codecs' knobs.

Each rule returns what is allowed (for the one-line error) or None when the value is
fine. Torch-free; used by :func:`fedbench.schema.validate`, which re-exports them.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Mapping
from typing import Any

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


SEED_MAX = 2**63 - 1  # seeds are mixed as 64-bit words: larger ones would alias smaller ones


TOP_LEVEL: dict[str, Rule] = {
    "seed": lambda v: None if _is_int(v) and 0 <= v <= SEED_MAX else f"an integer in 0..{SEED_MAX}",
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
    "cohort_chunk": lambda v: (
        None if v == "auto" or (_is_int(v) and v >= 1) else "auto or an integer >= 1"
    ),
    "cohort_memory_mb": lambda v: None if v is None or (_is_real(v) and v > 0) else "null or > 0",
    "device": device(),
    "threads": int_at_least(0),
    "downlink": lambda v: (
        None
        if (isinstance(v, str) and v)
        or (isinstance(v, Mapping) and isinstance(v.get("_target_"), str))
        else "a compressor name or a compressor config with a _target_"
    ),
    "downlink_error_feedback": boolean(),
    "upload_budget_s": lambda v: None if v is None or (_is_real(v) and v > 0) else "null or > 0",
    "adaptive_choices": lambda v: (
        None if v is None or (isinstance(v, list | tuple) and v) else "null or a non-empty list"
    ),
    "lazy_threshold": lambda v: (
        None if v is None or (_is_real(v) and 0 < v <= 1) else "null or a number in (0, 1]"
    ),
    "aggregation": lambda v: (
        None
        if v in ("sync", "fedbuff")
        or (isinstance(v, Mapping) and isinstance(v.get("_target_"), str))
        else "sync, fedbuff or {_target_: pkg.Scheduler, ...}"
    ),
    "async_concurrency": opt_int_at_least(1),
    "async_buffer_size": opt_int_at_least(1),
    "store_dir": lambda v: None if isinstance(v, str) and v else "a folder path",
    "force": boolean(),
    "baseline": boolean(),
    "max_memory_gb": lambda v: None if v is None or (_is_real(v) and v > 0) else "null or > 0",
}

# The built-in codecs' knobs by name: whichever of them has a knob, it means the same.
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
    "error_feedback": lambda v: (
        None if isinstance(v, bool) or v == "ef21" else "true, false or ef21"
    ),
    "stochastic": boolean(),
    "approximate": boolean(),
    "shared_seed": boolean(),
}
# Where one built-in codec's knob means more than the shared rule allows, by _target_:
# EDEN's rate is any number of bits in (0, 8] (fractional: a shared random share).
COMPRESSOR_BY_TARGET: dict[str, dict[str, Rule]] = {
    "fedbench.compress.rotation.Eden": {
        "bits": lambda v: (
            None
            if _is_real(v) and not isinstance(v, bool) and math.isfinite(v) and 0 < v <= 8
            else "a number in (0, 8] (fractional allowed)"
        ),
    },
}
