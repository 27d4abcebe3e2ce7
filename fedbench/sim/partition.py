"""Splitting the training set among clients: IID, label skew, shards, natural.

Every partition returns one sorted array of train indices per client; no index is
given to two clients and no client is left empty.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from fedbench.sim import seeding
from fedbench.sim.data import Dataset

PARTITIONS = ("iid", "dirichlet", "shards", "natural")


def _too_many(num_clients: int, n: int, need: str) -> ValueError:
    return ValueError(
        f"num_clients={num_clients} is too large for this data: {n} training samples, "
        f"{need}; lower num_clients or pick a larger dataset"
    )


def iid(y: np.ndarray, num_clients: int, rng: np.random.Generator) -> list[np.ndarray]:
    """A random split into ``num_clients`` parts whose sizes differ by at most one."""
    if num_clients > len(y):
        raise _too_many(num_clients, len(y), "each client needs at least one")
    return [np.sort(p) for p in np.array_split(rng.permutation(len(y)), num_clients)]


def dirichlet(
    y: np.ndarray, num_clients: int, alpha: float, rng: np.random.Generator
) -> list[np.ndarray]:
    """Label skew (Hsu et al. 2019): class c's samples go to clients in proportions
    drawn from Dirichlet(alpha); lower alpha => each client sees fewer labels.

    Every client first receives one sample (so none is empty), the rest follow the
    Dirichlet proportions.
    """
    if num_clients > len(y):
        raise _too_many(num_clients, len(y), "each client needs at least one")
    order = rng.permutation(len(y))
    parts: list[list[int]] = [[int(i)] for i in order[:num_clients]]
    rest = order[num_clients:]
    for c in np.unique(y):
        idx = rest[y[rest] == c]
        if len(idx) == 0:
            continue
        p = rng.dirichlet(np.full(num_clients, alpha))
        cuts = (np.cumsum(p)[:-1] * len(idx)).astype(np.int64)
        for k, chunk in enumerate(np.split(idx, cuts)):
            parts[k].extend(int(i) for i in chunk)
    return [np.sort(np.asarray(p, dtype=np.int64)) for p in parts]


def shards(
    y: np.ndarray, num_clients: int, shards_per_client: int, rng: np.random.Generator
) -> list[np.ndarray]:
    """McMahan et al. 2017: sort by label, cut into ``num_clients * shards_per_client``
    equal shards, give each client ``shards_per_client`` random shards; each client
    then sees at most that many labels (lower => more skew)."""
    total = num_clients * shards_per_client
    if total > len(y):
        raise _too_many(num_clients, len(y), f"{total} shards of at least one sample are needed")
    order = np.argsort(y, kind="stable")
    pieces = np.array_split(order, total)
    assign = rng.permutation(total).reshape(num_clients, shards_per_client)
    return [np.sort(np.concatenate([pieces[s] for s in row])) for row in assign]


def validate(cfg: Mapping[str, Any]) -> None:
    """Check a ``conf/partition`` group; ValueError naming the key."""
    name = cfg.get("name")
    if name not in PARTITIONS:
        raise ValueError(
            f"partition.name={name!r} is invalid: must be one of {', '.join(PARTITIONS)}"
        )
    if name == "dirichlet":
        a = cfg.get("alpha")
        if isinstance(a, bool) or not isinstance(a, int | float) or not a > 0:
            raise ValueError(f"partition.alpha={a!r} is invalid: must be a number > 0")
    if name == "shards":
        s = cfg.get("shards_per_client")
        if isinstance(s, bool) or not isinstance(s, int) or s < 1:
            raise ValueError(
                f"partition.shards_per_client={s!r} is invalid: must be an integer >= 1"
            )


def partition(
    data: Dataset, num_clients: int, cfg: Mapping[str, Any], seed: int
) -> list[np.ndarray]:
    """Train indices per client for the ``conf/partition`` group ``cfg``."""
    validate(cfg)
    name = cfg["name"]
    rng = np.random.default_rng(seeding.mix(seed, seeding.SHUFFLE, 1))
    y = data.y_train
    if name == "iid":
        return iid(y, num_clients, rng)
    if name == "dirichlet":
        return dirichlet(y, num_clients, float(cfg["alpha"]), rng)
    if name == "shards":
        return shards(y, num_clients, int(cfg["shards_per_client"]), rng)
    if data.natural is None:
        raise ValueError(
            f"partition=natural is invalid for dataset={data.name}: only dataset=synthetic "
            "has a natural split; use iid, dirichlet or shards"
        )
    if len(data.natural) != num_clients:
        raise ValueError(
            f"partition=natural: the data has {len(data.natural)} clients, num_clients={num_clients}"
        )
    return [np.asarray(p, dtype=np.int64) for p in data.natural]


def label_histograms(y: np.ndarray, parts: list[np.ndarray], num_classes: int) -> np.ndarray:
    """Label counts per client. # (clients, classes)"""
    return np.stack([np.bincount(y[p], minlength=num_classes) for p in parts])
