"""Synthetic(alpha, beta) of Li et al. 2020 (FedProx): one generating model per client."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from fedbench.sim import memory
from fedbench.sim.datasets import base
from fedbench.sim.datasets.base import Dataset, DataSource


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


class Synthetic(DataSource):
    """Synthetic(alpha, beta) of Li et al. 2020 (FedProx), Sec. 5.1 / Appendix C.1.

    Client k: u_k ~ N(0, alpha), B_k ~ N(0, beta); W_k (classes x d) and b_k have entries
    ~ N(u_k, 1); x ~ N(v_k, Sigma) with v_k,j ~ N(B_k, 1) and Sigma_jj = j^-1.2;
    y = argmax softmax(W_k x + b_k). alpha controls how much local models differ, beta
    how much local features differ. As in the authors' code, alpha and beta are used as
    standard deviations. Each client's samples are split into train and held-out test.
    """

    label = "synthetic"

    def __init__(
        self, alpha: float = 1.0, beta: float = 1.0, dimension: int = 60, num_classes: int = 10,
        size_mu: float = 4.0, size_sigma: float = 2.0, min_samples: int = 50,
        max_samples: int | None = 1000, test_fraction: float = 0.2, standardize: bool = True,
    ) -> None:  # fmt: skip
        self.alpha = base.real("alpha", alpha, lo=0)
        self.beta = base.real("beta", beta, lo=0)
        self.dimension = base.integer("dimension", dimension, 1)
        self.num_classes = base.integer("num_classes", num_classes, 2)
        self.size_mu = base.real("size_mu", size_mu)
        self.size_sigma = base.real("size_sigma", size_sigma, lo=0)
        self.min_samples = base.integer("min_samples", min_samples, 2)
        self.max_samples = base.integer("max_samples", max_samples, 2, optional=True)
        self.test_fraction = base.fraction("test_fraction", test_fraction)
        self.standardize = base.flag("standardize", standardize)

    def _knobs(self) -> dict[str, Any]:
        keys = ("dimension", "size_mu", "size_sigma", "min_samples", "max_samples")
        return {k: getattr(self, k) for k in keys}

    def has_clients(self) -> bool:
        return True

    def check(self, *, num_clients: int, max_memory_gb: float | None = None) -> None:
        bound = {"dataset": self._knobs(), "num_clients": num_clients}
        memory.check_synthetic(bound | {"max_memory_gb": max_memory_gb})

    def load(self, seed: int, num_clients: int, *, max_memory_gb: float | None = None) -> Dataset:
        from fedbench.sim import seeding

        d, classes = self.dimension, self.num_classes
        rng = base.rng(seed, seeding.INIT, 1)
        bound = {"dataset": self._knobs(), "num_clients": num_clients}
        bound["max_memory_gb"] = max_memory_gb
        memory.check_synthetic(bound)  # before drawing sizes: a bound, cheap for any count
        sizes = synthetic_sizes(num_clients, self._knobs(), rng)
        memory.check_synthetic(bound, sizes)  # the exact sizes, before generating
        sigma = np.arange(1, d + 1, dtype=np.float64) ** -1.2
        # Filled in place (no per-client list to concatenate): peak memory is X plus its
        # train/test copies, what memory.synthetic_bytes counts.
        X = np.empty((int(sizes.sum()), d))
        y = np.empty(len(X), dtype=np.int64)
        tr_parts, te_parts = [], []
        offset = 0
        for k in range(num_clients):
            u, B = rng.normal(0, self.alpha), rng.normal(0, self.beta)
            W = rng.normal(u, 1, (classes, d))
            b = rng.normal(u, 1, classes)
            v = rng.normal(B, 1, d)
            n_k = int(sizes[k])
            x = X[offset : offset + n_k]
            x[:] = v + rng.standard_normal((n_k, d)) * np.sqrt(sigma)
            y[offset : offset + n_k] = np.argmax(x @ W.T + b, axis=1)
            n_test = max(1, round(n_k * self.test_fraction))
            perm = rng.permutation(n_k)
            te_parts.append(perm[:n_test] + offset)
            tr_parts.append(perm[n_test:] + offset)
            offset += n_k
        tr, te = np.concatenate(tr_parts), np.concatenate(te_parts)
        # Client k's indices, in positions of X_train / X_test (which follow tr / te).
        natural = _blocks([len(p) for p in tr_parts])
        client_test = _blocks([len(p) for p in te_parts])
        X_tr, X_te = X[tr], X[te]
        del X  # only the train/test copies from here on
        if self.standardize:
            X_train, X_test = base.standardise(X_tr, X_te)
        else:
            X_train, X_test = X_tr.astype(np.float32), X_te.astype(np.float32)
        return Dataset(
            self.label, X_train, y[tr].astype(np.int64), X_test, y[te].astype(np.int64),
            classes, None, natural, client_test=client_test,
        )  # fmt: skip


def _blocks(sizes: list[int]) -> list[np.ndarray]:
    """Consecutive index blocks of the given sizes: [0..s0), [s0..s0+s1), ..."""
    bounds = np.cumsum([0, *sizes])
    return [np.arange(bounds[k], bounds[k + 1]) for k in range(len(sizes))]
