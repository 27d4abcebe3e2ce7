"""Compatibility shim: the data sets live in :mod:`fedbench.sim.datasets`, one module per
data set, built by ``_target_``. ``from fedbench.sim import data`` keeps working."""

from __future__ import annotations

from fedbench.sim.datasets import Dataset, DataSource, build, load
from fedbench.sim.datasets.base import rng as _rng
from fedbench.sim.datasets.synthetic import synthetic_sizes

__all__ = ["DataSource", "Dataset", "_rng", "build", "load", "synthetic_sizes"]
