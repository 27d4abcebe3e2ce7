"""scikit-learn's bundled handwritten digits: 1,797 images of 8x8, 10 classes."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

from fedbench.sim.datasets import base
from fedbench.sim.datasets.base import Dataset, DataSource


def load_digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's bundled digits (1,797 x 64), read from its csv.gz directly.

    Importing scikit-learn itself costs seconds (scipy and friends); the file is what we
    need. Same file and layout as ``sklearn.datasets.load_digits``: 64 pixels, then the label.
    """
    spec = importlib.util.find_spec("sklearn")  # locates the package without importing it
    if spec is None or not spec.submodule_search_locations:
        raise ValueError("dataset=digits needs scikit-learn: pip install scikit-learn")
    path = Path(spec.submodule_search_locations[0]) / "datasets" / "data" / "digits.csv.gz"
    if not path.is_file():
        raise ValueError(f"dataset=digits: scikit-learn's bundled file {path} is missing")
    data = np.loadtxt(path, delimiter=",")
    return data[:, :-1], data[:, -1].astype(np.int64)


class Digits(DataSource):
    """The digits with a stratified held-out test split, standardised with train statistics."""

    label = "digits"

    def __init__(self, test_fraction: float = 0.2, standardize: bool = True) -> None:
        self.test_fraction = base.fraction("test_fraction", test_fraction)
        self.standardize = base.flag("standardize", standardize)

    def load(self, seed: int, num_clients: int, *, max_memory_gb: float | None = None) -> Dataset:
        X, y = load_digits()
        return base.split_by_class(
            self.label, X, y, self.test_fraction, seed, (1, 8, 8), self.standardize
        )
