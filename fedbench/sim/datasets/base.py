"""What every data set shares: the :class:`Dataset` arrays, the :class:`DataSource` base
class a ``conf/dataset`` ``_target_`` must name, and the `_target_` builder.

Torch-free at import (``fedbench.schema`` builds data sources before torch is loaded):
anything that needs torch (the seeded generators) is imported inside ``load``.
"""

from __future__ import annotations

import abc
import inspect
import math
import numbers
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

import numpy as np

from fedbench import registry


@dataclass
class Dataset:
    """Train/test arrays of one run.

    ``X`` are float32 ``(n, features)`` (images flattened channels-first) or, for token
    data, int64 ``(n, seq_len)`` ids in ``[0, vocab_size)``; ``y`` int64 labels in
    ``[0, num_classes)``. ``natural`` and ``client_test`` are the data's own clients:
    per-client indices into ``X_train`` and ``X_test``, aligned (client k is entry k of both).
    """

    name: str
    X_train: np.ndarray
    y_train: np.ndarray
    X_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    image_shape: tuple[int, int, int] | None  # (channels, height, width) for a CNN
    natural: list[np.ndarray] | None = None  # per-client train indices, if the data has them
    vocab_size: int | None = None  # token data: ids are in [0, vocab_size)
    seq_len: int | None = None  # token data: ids per sample (None for dense features)
    client_test: list[np.ndarray] | None = None  # per-client test indices, aligned with natural


class DataSource(abc.ABC):
    """A data set a config can name: ``dataset._target_: pkg.module.Class``.

    Subclasses take typed keyword arguments (the YAML's keys) and check their values in
    ``__init__`` with a ValueError naming ``dataset.<key>``; the constructor stays cheap and
    torch-free, since it runs before torch is imported. Files and sizes are checked in
    :meth:`check`, the arrays made in :meth:`load`.
    """

    label: ClassVar[str] = "data"  # the report's name when the YAML gives none

    def has_clients(self) -> bool:
        """Whether :meth:`load` gives the data's own clients (``partition=natural``)."""
        return False

    def check(self, *, num_clients: int, max_memory_gb: float | None = None) -> None:
        """Torch-free checks before any work (files present and well-formed, sizes);
        none by default (a data set built in memory has nothing to check)."""
        return None

    @abc.abstractmethod
    def load(self, seed: int, num_clients: int, *, max_memory_gb: float | None = None) -> Dataset:
        """The arrays: a held-out test split no client trains on, fixed by ``seed``."""


T = TypeVar("T")
META_KEYS = ("_target_", "name")  # not constructor arguments: what to build, its label


def instantiate(group: str, cfg: Mapping[str, Any], base: type[T]) -> T:
    """Build the ``_target_`` class of a config group from the other keys.

    Only a subclass of ``base`` is called (a ``_target_`` comes from the command line:
    calling whatever it names, ``os.system``, would run it), and only with keys its
    constructor declares: a misspelt key is refused, never silently ignored. Every
    refusal is one ValueError line naming ``<group>.<key>``.
    """
    cls = registry.locate(
        f"{group}._target_",
        cfg.get("_target_"),
        f"a subclass of {base.__module__}.{base.__qualname__}",
        base,
    )
    params = {
        k: p
        for k, p in inspect.signature(cls).parameters.items()
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
    }
    meta = [k for k in META_KEYS if k not in params]
    allowed = ", ".join([*meta, *params])
    for key in cfg:
        if key not in params and key not in meta:
            raise ValueError(
                f"{group}.{key}={cfg[key]!r} is invalid: {cls.__name__} takes no such key; "
                f"allowed keys: {allowed}"
            )
    for key, p in params.items():
        if p.default is p.empty and key not in cfg:
            raise ValueError(f"{group}.{key} is missing: {cls.__name__} needs it")
    return cls(**{k: v for k, v in cfg.items() if k in params})


# -- value rules shared by the data sets ------------------------------------------------------
def _real(v: Any) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)


def fraction(key: str, v: Any) -> float:
    """A share in (0, 1), e.g. ``dataset.test_fraction``."""
    if not _real(v) or not 0 < v < 1:
        raise ValueError(f"dataset.{key}={v!r} is invalid: must be a number in (0, 1)")
    return float(v)


def integer(key: str, v: Any, lo: int, *, optional: bool = False) -> int | None:
    """An integer >= ``lo`` (or None when ``optional``)."""
    if v is None and optional:
        return None
    if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < lo:
        allowed = f"{'null or ' if optional else ''}an integer >= {lo}"
        raise ValueError(f"dataset.{key}={v!r} is invalid: must be {allowed}")
    return int(v)


def real(key: str, v: Any, *, lo: float | None = None) -> float:
    """A finite number (>= ``lo`` when given)."""
    if not _real(v) or (lo is not None and v < lo):
        allowed = "a finite number" + (f" >= {lo}" if lo is not None else "")
        raise ValueError(f"dataset.{key}={v!r} is invalid: must be {allowed}")
    return float(v)


def flag(key: str, v: Any) -> bool:
    if not isinstance(v, bool):
        raise ValueError(f"dataset.{key}={v!r} is invalid: must be true or false")
    return v


def choice(key: str, v: Any, *choices: str) -> str:
    if v not in choices:
        raise ValueError(f"dataset.{key}={v!r} is invalid: must be one of {', '.join(choices)}")
    return v


def path(key: str, v: Any, what: str) -> str:
    """A required local path; ``what`` says what belongs there (nothing is downloaded)."""
    if not isinstance(v, str) or not v:
        raise ValueError(f"dataset.{key} is missing: {what}")
    return v


# -- arrays ---------------------------------------------------------------------------------
def rng(seed: int, *words: int) -> np.random.Generator:
    """numpy generator for ``(seed, words...)``, from fedbench's seed mixer."""
    from fedbench.sim import seeding  # imports torch: only at load time

    return np.random.default_rng(seeding.mix(seed, *words))


def stratified_split(
    y: np.ndarray, fraction: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, test): ``fraction`` of every class goes to test (at least one)."""
    train, test = [], []
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        k = max(1, round(len(idx) * fraction)) if len(idx) > 1 else 0
        test.append(idx[:k])
        train.append(idx[k:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def standardise(X_train: np.ndarray, X_test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Standardise both with the train statistics, in place (the callers pass fresh
    float64 copies): no float64 temporaries beside the arrays, same values."""
    mean = X_train.mean(0)
    std = X_train.std(0)
    std[std < 1e-8] = 1.0  # constant features (blank pixels) stay at 0
    for X in (X_train, X_test):
        X -= mean
        X /= std
    return X_train.astype(np.float32), X_test.astype(np.float32)


def features(
    X_train: np.ndarray, X_test: np.ndarray, standardize: bool
) -> tuple[np.ndarray, np.ndarray]:
    """float32 ``(n, features)`` of both splits, standardised with the train statistics
    when ``standardize`` (computed in float64, as fedbench always has)."""
    Xtr = X_train.reshape(len(X_train), -1).astype(np.float64)
    Xte = X_test.reshape(len(X_test), -1).astype(np.float64)
    if standardize:
        return standardise(Xtr, Xte)
    return Xtr.astype(np.float32), Xte.astype(np.float32)


def split_by_class(
    name: str, X: np.ndarray, y: np.ndarray, fraction: float, seed: int,
    image_shape: tuple[int, int, int] | None, standardize: bool = True,
) -> Dataset:  # fmt: skip
    """A held-out stratified test split (fixed by ``seed``) of one pool of samples."""
    from fedbench.sim import seeding

    tr, te = stratified_split(y, fraction, rng(seed, seeding.SHUFFLE, 0))
    X_train, X_test = features(X[tr], X[te], standardize)
    return Dataset(
        name, X_train, y[tr].astype(np.int64), X_test, y[te].astype(np.int64),
        int(y.max()) + 1, image_shape,
    )  # fmt: skip


def images_chw(X: np.ndarray, layout: str, key: str) -> tuple[np.ndarray, tuple[int, int, int]]:
    """``(n, c, h, w)`` images from ``(n, h, w)`` or ``(n, a, b, c)`` in ``layout``.

    ``layout``: ``chw`` (channels first), ``hwc`` (channels last, the usual CIFAR/PIL
    layout) or ``auto`` (channels last when the last axis has at most 4 entries and the
    first more). A shape that is no image is reported as the shape it is.
    """
    shape = X.shape[1:]
    if len(shape) == 2:
        return X[:, None], (1, *shape)
    if len(shape) != 3:
        raise ValueError(
            f"dataset {key}: samples of shape {shape} are no images: must be (height, width), "
            "(channels, height, width) or (height, width, channels)"
        )
    if layout == "auto":
        layout = "hwc" if shape[2] <= 4 < shape[0] else "chw"
    if layout == "hwc":
        X = np.moveaxis(X, 3, 1)
    c, h, w = X.shape[1:]
    return X, (int(c), int(h), int(w))
