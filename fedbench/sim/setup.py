"""Before a run: the device, the data (loaded and partitioned once per process), and the
whole-config check that refuses a bad run before any training.

``validate(cfg)`` checks a composed config (a plain dict): the torch-free rules of
``fedbench.schema`` first, then what needs imports (codec constructors, plug-ins, the
model on the real data, the memory estimate). ValueError names key, value and what is
allowed.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from fedbench import schema
from fedbench.compress import from_config
from fedbench.configs import compressor_names
from fedbench.sim import (
    adaptive,
    aggregate,
    downlink,
    fedbuff,
    lazy,
    memory,
    models,
    network,
    partition,
)
from fedbench.sim import data as data_mod


def device(name: Any) -> torch.device:
    """``cpu``, ``cuda`` or ``cuda:N`` as a device; ValueError when it is not available."""
    if not isinstance(name, str) or not (
        name in ("cpu", "cuda") or (name.startswith("cuda:") and name[5:].isdigit())
    ):
        raise ValueError(f"device={name!r} is invalid: must be cpu, cuda or cuda:N")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device={name!r} is invalid: no CUDA device is available; use cpu")
    return torch.device(name)


@functools.lru_cache(maxsize=2)
def _prepare(key: str) -> tuple[data_mod.Dataset, list[np.ndarray]]:
    spec = json.loads(key)
    ds = data_mod.load(
        spec["dataset"], spec["seed"], spec["num_clients"], max_memory_gb=spec["max_memory_gb"]
    )
    parts = partition.partition(ds, spec["num_clients"], spec["partition"], spec["seed"])
    return ds, parts


def prepare(cfg: Mapping[str, Any]) -> tuple[data_mod.Dataset, list[np.ndarray]]:
    """The data set and per-client train indices (cached: ``validate`` then ``run``)."""
    key = {k: cfg.get(k) for k in ("dataset", "partition", "seed", "num_clients", "max_memory_gb")}
    return _prepare(json.dumps(key, sort_keys=True, default=str))


def build_model(cfg: Mapping[str, Any], ds: data_mod.Dataset) -> models.ModelSpec:
    """The run's model for data set ``ds`` (the sizes its constructor declares)."""
    return models.build(
        cfg["model"],
        ds.X_train.shape[1],
        ds.num_classes,
        ds.image_shape,
        vocab_size=getattr(ds, "vocab_size", None),
        seq_len=getattr(ds, "seq_len", None),
    )


def chunk_size(cfg: Mapping[str, Any], spec: models.ModelSpec, clients: int) -> int:
    """Clients trained at once: ``cohort_chunk``, or with ``auto`` as many as fit
    ``cohort_memory_mb`` (``models.auto_chunk``)."""
    chunk = cfg["cohort_chunk"]
    if chunk == "auto":
        return models.auto_chunk(
            spec,
            int(cfg["batch_size"]),
            max(int(clients), 1),
            cfg.get("cohort_memory_mb"),
            str(cfg["device"]),
        )
    return int(chunk)


def validate(cfg: Mapping[str, Any]) -> None:
    """Check a composed config; loads the data and builds the partition (cached)."""
    schema.validate(cfg, compressors=compressor_names())
    device(cfg.get("device"))
    codec = from_config(cfg["compressor"])  # constructor checks: ranges, unknown keys
    aggregate.check_run(codec, cfg)  # a codec's own server side and what it cannot run with
    aggregate.check_downlink(downlink.codec(cfg["downlink"]))
    partition.validate(cfg["partition"])
    network.validate(cfg["network"])
    for plugin in (adaptive, lazy, fedbuff):
        plugin.validate(cfg)
    ds, parts = prepare(cfg)
    spec = build_model(cfg, ds)
    # refuse a run that cannot fit, naming the key to lower
    memory.check(
        {**cfg, "cohort_chunk": chunk_size(cfg, spec, int(cfg["clients_per_round"]))},
        ds,
        spec.num_params,
        client_sizes=[len(p) for p in parts],
        activation_bytes_per_sample=spec.activation_bytes_per_sample,
    )
