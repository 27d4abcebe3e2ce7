"""Fast config validation that runs before torch is imported.

Each rule names the key, the value and what is allowed, in one line, so a bad cell of
a sweep fails in well under a second. The simulation core's own ``validate`` and the
compressor constructors check again (deeper, after imports), still before training.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

# The value rules and the npz checks live beside this module (each its own job); their
# names stay importable from here, as they were before the split.
from fedbench.schema_npz import (
    MAX_CLASSES,
    NPZ_ARRAYS,
    NpzInfo,
    check_features,
    check_labels,
    inspect_npz,
    open_npz,
    read_npz_array,
)
from fedbench.schema_rules import (
    COMPRESSOR,
    COMPRESSOR_BY_TARGET,
    SEED_MAX,
    TOP_LEVEL,
    Rule,
    boolean,
    device,
    int_at_least,
    non_negative,
    one_of,
    opt_int_at_least,
    positive,
    real_in,
)

__all__ = [
    "ASYNC_KEYS",
    "COMPRESSOR",
    "DENSE_SETTINGS",
    "DOWNLINK_REFUSED",
    "GROUPS",
    "MAX_CLASSES",
    "NOT_IDENTITY_KEYS",
    "NPZ_ARRAYS",
    "SEED_MAX",
    "TOP_LEVEL",
    "NpzInfo",
    "Rule",
    "boolean",
    "check_data",
    "check_features",
    "check_labels",
    "check_overrides",
    "config_groups",
    "device",
    "inspect_npz",
    "int_at_least",
    "non_negative",
    "one_of",
    "open_npz",
    "opt_int_at_least",
    "positive",
    "read_npz_array",
    "real_in",
    "validate",
]

GROUPS = ("compressor", "dataset", "partition", "model", "network")
# Output, store and launcher settings: they change where results go, never the numbers.
NOT_IDENTITY_KEYS = (
    "store_dir", "force", "baseline", "hydra", "max_memory_gb",
)  # fmt: skip

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


# Broadcast codecs that cannot serve as a downlink, and why.
DOWNLINK_REFUSED = {
    "sketch": "its sketches merge on the server and cannot be decoded per client as a broadcast",
    "dgc": "its momentum correction and warm-up are a client-gradient scheme, not a broadcast codec",
}
ASYNC_KEYS = ("async_concurrency", "async_buffer_size")


def _check(section: str, cfg: Mapping[str, Any], rules: Mapping[str, Rule]) -> None:
    for key, rule in rules.items():
        if key in cfg:
            allowed = rule(cfg[key])
            if allowed is not None:
                name = f"{section}.{key}" if section else key
                raise ValueError(f"{name}={cfg[key]!r} is invalid: must be {allowed}")


def validate(cfg: Mapping[str, Any], *, compressors: list[str] | None = None) -> None:
    """Check a resolved config (plain dict) without importing torch; ValueError if bad.

    Also builds the data set and partition (:func:`check_data`): an npz's labels and
    array headers are read, a synthetic data set too large to generate is refused, a
    missing data folder is named, all in well under a second, before torch is imported.
    """
    known = set(TOP_LEVEL) | set(GROUPS) | set(NOT_IDENTITY_KEYS)
    unknown = sorted(set(cfg) - known)
    if unknown:
        raise ValueError(
            f"unknown config key(s) {unknown}; allowed top-level keys: {sorted(known)}"
        )
    for group in GROUPS:
        if not isinstance(cfg.get(group), Mapping):
            raise ValueError(f"{group}: missing config group (choose one with {group}=NAME)")
        if cfg[group].get("_target_") == "???":  # the `custom` choice, its class not named
            raise ValueError(
                f"{group}._target_ is missing: {group}=custom needs {group}._target_=pkg.Class"
            )
    _check("", cfg, TOP_LEVEL)
    if cfg["clients_per_round"] > cfg["num_clients"]:
        raise ValueError(
            f"clients_per_round={cfg['clients_per_round']} is invalid: must be <= "
            f"num_clients={cfg['num_clients']}"
        )
    named_downlink = isinstance(cfg["downlink"], str)
    if named_downlink and compressors is not None and cfg["downlink"] not in compressors:
        raise ValueError(
            f"downlink={cfg['downlink']!r} is invalid: must be a compressor name, one of "
            + ", ".join(compressors)
        )
    if named_downlink and cfg["downlink"] in DOWNLINK_REFUSED:
        raise ValueError(
            f"downlink={cfg['downlink']!r} is invalid: {DOWNLINK_REFUSED[cfg['downlink']]}"
        )
    if cfg.get("aggregation", "sync") != "fedbuff":
        for key in ASYNC_KEYS:
            if cfg.get(key) is not None:
                raise ValueError(
                    f"{key}={cfg[key]!r} is invalid with aggregation={cfg.get('aggregation')}: "
                    "only used with aggregation=fedbuff (set it to null)"
                )
    comp = cfg["compressor"]
    if not isinstance(comp.get("_target_"), str):
        raise ValueError("compressor._target_ is missing: choose compressor=NAME")
    # The knobs' rules are the built-in codecs' (their constructors check again after
    # torch's import); a user's codec checks its own values, whatever its keys are named.
    if comp["_target_"].startswith("fedbench.compress."):
        rules = {**COMPRESSOR, **COMPRESSOR_BY_TARGET.get(comp["_target_"], {})}
        _check("compressor", comp, rules)
    if comp.get("ratio") is not None and comp.get("k") is not None:
        raise ValueError(
            f"compressor.ratio={comp['ratio']!r} and compressor.k={comp['k']!r}: "
            "set one of them, not both (the other to null)"
        )
    check_data(cfg)


def check_data(cfg: Mapping[str, Any]) -> None:
    """Build the ``dataset`` and ``partition`` groups' ``_target_`` classes, which check
    their own keys and values, then the data's files and size (an npz's labels and
    headers, a synthetic set too large to generate) and that ``partition=natural`` gets
    data with clients of its own. Torch-free: the data modules load torch only to load."""
    from fedbench.sim import datasets, partition

    source = datasets.build(cfg["dataset"])
    split = partition.build(cfg["partition"])
    source.check(num_clients=cfg["num_clients"], max_memory_gb=cfg.get("max_memory_gb"))
    if split.needs_clients and not source.has_clients():
        name = datasets.label(cfg["dataset"], source)
        raise ValueError(
            f"partition=natural is invalid for dataset={name}: the data has no clients of "
            "its own (an npz gets them from a client_train array); use iid, dirichlet or shards"
        )


# -- overrides Hydra cannot compose ---------------------------------------------------------
_GROUP_NULL = re.compile(r"^[+~]{0,2}([\w/]+)=(.*)$")


def config_groups() -> list[str]:
    """Config group names (``compressor``, ``hydra/launcher``, ...): folders of ``conf/``."""
    from fedbench.configs import config_dir

    conf = config_dir()
    return sorted(
        str(p.relative_to(conf)) for p in conf.rglob("*") if p.is_dir() and "__" not in p.name
    )


def check_overrides(overrides: list[str], groups: list[str]) -> None:
    """Refuse ``GROUP=null`` on the command line (``compressor=null``, also inside a sweep
    list): Hydra fails composing it with a bare traceback. ``groups`` are the config
    group names (folders of ``conf/``)."""
    for arg in overrides:
        m = _GROUP_NULL.match(arg)
        if m is None or m.group(1) not in groups:
            continue
        values = [v.strip().lower() for v in m.group(2).split(",")]
        if "null" in values or m.group(2).strip() == "":
            raise ValueError(
                f"{m.group(1)}={m.group(2)!r} is invalid: must name a config, one of "
                f"conf/{m.group(1)}/*.yaml (e.g. {m.group(1)}=NAME)"
            )
