"""Splitting the training set among clients: IID, label skew, shards, natural.

Every ``conf/partition/*.yaml`` names a :class:`Partition` subclass by ``_target_``
(fedbench's below, or the user's own) with typed keyword arguments. Every partition
returns one sorted array of train indices per client; no index is given to two clients
and no client is left empty. Torch-free at import (``fedbench.schema`` builds it).
"""

from __future__ import annotations

import abc
import math
import numbers
from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np

from fedbench.sim.datasets.base import Dataset, instantiate


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


class Partition(abc.ABC):
    """How the training set is split among clients: ``partition._target_: pkg.Class``.

    Subclasses take typed keyword arguments (checked in ``__init__``, ValueError naming
    ``partition.<key>``) and implement :meth:`split`. ``needs_clients``: the split is
    the data's own clients, so the data set must bring them (refused before any work
    otherwise).
    """

    needs_clients: ClassVar[bool] = False

    @abc.abstractmethod
    def split(self, data: Dataset, num_clients: int, rng: np.random.Generator) -> list[np.ndarray]:
        """Train indices (into ``data.X_train``) of each of ``num_clients`` clients."""


class IID(Partition):
    """Uniformly random; client sizes differ by at most one sample."""

    def split(self, data: Dataset, num_clients: int, rng: np.random.Generator):
        return iid(data.y_train, num_clients, rng)


class Dirichlet(Partition):
    """Label skew by Dirichlet(alpha) proportions (Hsu et al. 2019)."""

    def __init__(self, alpha: float = 0.5) -> None:
        ok = isinstance(alpha, numbers.Real) and not isinstance(alpha, bool)
        if not (ok and math.isfinite(alpha) and alpha > 0):
            raise ValueError(f"partition.alpha={alpha!r} is invalid: must be a number > 0")
        self.alpha = float(alpha)

    def split(self, data: Dataset, num_clients: int, rng: np.random.Generator):
        return dirichlet(data.y_train, num_clients, self.alpha, rng)


class Shards(Partition):
    """Label-sorted shards, ``shards_per_client`` each (McMahan et al. 2017)."""

    def __init__(self, shards_per_client: int = 2) -> None:
        s = shards_per_client
        if isinstance(s, bool) or not isinstance(s, numbers.Integral) or s < 1:
            raise ValueError(
                f"partition.shards_per_client={s!r} is invalid: must be an integer >= 1"
            )
        self.shards_per_client = int(s)

    def split(self, data: Dataset, num_clients: int, rng: np.random.Generator):
        return shards(data.y_train, num_clients, self.shards_per_client, rng)


class Natural(Partition):
    """The data's own clients (Synthetic's generators, Shakespeare's roles, FEMNIST's
    writers, an npz's ``client_train`` ids): client k trains on ``data.natural[k]``."""

    needs_clients = True

    def split(self, data: Dataset, num_clients: int, rng: np.random.Generator):
        if data.natural is None:
            raise ValueError(
                f"partition=natural is invalid for dataset={data.name}: the data has no "
                "clients of its own (an npz gets them from a client_train array); use iid, "
                "dirichlet or shards"
            )
        if len(data.natural) != num_clients:
            raise ValueError(
                f"num_clients={num_clients} is invalid with partition=natural: "
                f"dataset={data.name} has {len(data.natural)} clients; set "
                f"num_clients={len(data.natural)}"
            )
        empty = [k for k, p in enumerate(data.natural) if len(p) == 0]
        if empty:
            raise ValueError(f"partition=natural: client(s) {empty[:10]} have no training samples")
        return [np.asarray(p, dtype=np.int64) for p in data.natural]


_SHIPPED = {"iid": IID, "dirichlet": Dirichlet, "shards": Shards, "natural": Natural}


def build(cfg: Mapping[str, Any]) -> Partition:
    """The partition a ``conf/partition`` config describes; ValueError naming the key.
    A config without ``_target_`` (written before it) names a shipped one by ``name``."""
    if "_target_" not in cfg:
        cls = _SHIPPED.get(cfg.get("name"))
        if cls is None:
            raise ValueError(
                f"partition._target_ is missing and partition.name={cfg.get('name')!r} names "
                f"no shipped partition: choose partition=NAME, one of {', '.join(_SHIPPED)}"
            )
        cfg = {"_target_": f"{cls.__module__}.{cls.__qualname__}", **cfg}
    return instantiate("partition", cfg, Partition)


def validate(cfg: Mapping[str, Any]) -> None:
    """Check a ``conf/partition`` group; ValueError naming the key."""
    build(cfg)


def partition(
    data: Dataset, num_clients: int, cfg: Mapping[str, Any], seed: int
) -> list[np.ndarray]:
    """Train indices per client for the ``conf/partition`` group ``cfg``."""
    from fedbench.sim import seeding  # imports torch: at partition time only

    rng = np.random.default_rng(seeding.mix(seed, seeding.SHUFFLE, 1))
    return build(cfg).split(data, num_clients, rng)


def label_histograms(y: np.ndarray, parts: list[np.ndarray], num_classes: int) -> np.ndarray:
    """Label counts per client. # (clients, classes)"""
    return np.stack([np.bincount(y[p], minlength=num_classes) for p in parts])
