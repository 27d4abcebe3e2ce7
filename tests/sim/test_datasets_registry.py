"""Data sets and partitions by `_target_`: strict keys, only the expected kind is built,
and a user's own classes from their own package work."""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import pytest

from fedbench import schema
from fedbench.sim import data, partition

USER_PKG = '''
import numpy as np
from fedbench.sim.datasets import Dataset, DataSource
from fedbench.sim.partition import Partition


class Blobs(DataSource):
    """Two Gaussian blobs; each sample's client is its index mod `clients`."""

    label = "blobs"

    def __init__(self, n: int = 40, clients: int = 0) -> None:
        if n < 4:
            raise ValueError(f"dataset.n={n!r} is invalid: must be >= 4")
        self.n, self.clients = n, clients

    def has_clients(self) -> bool:
        return self.clients > 0

    def load(self, seed, num_clients, *, max_memory_gb=None):
        rng = np.random.default_rng(seed)
        y = np.arange(self.n) % 2
        X = (rng.normal(size=(self.n, 3)) + y[:, None] * 3).astype(np.float32)
        natural = [np.arange(k, self.n, self.clients) for k in range(self.clients)] or None
        return Dataset("blobs", X, y, X[:4], y[:4], 2, None, natural)


class Halves(Partition):
    def split(self, data, num_clients, rng):
        return np.array_split(np.arange(len(data.y_train)), num_clients)
'''


@pytest.fixture
def user_pkg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    pkg = tmp_path / "fbuser_pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "blobs.py").write_text(textwrap.dedent(USER_PKG))
    monkeypatch.syspath_prepend(str(tmp_path))
    return "fbuser_pkg.blobs"


def _cfg(dataset: dict, part: dict, num_clients: int = 2) -> dict:
    return {"dataset": dataset, "partition": part, "num_clients": num_clients}


def test_a_users_own_data_set_and_partition_work_by_target(user_pkg: str) -> None:
    ds_cfg = {"_target_": f"{user_pkg}.Blobs", "n": 30, "name": "my blobs"}
    ds = data.load(ds_cfg, seed=0, num_clients=2)
    assert ds.X_train.shape == (30, 3) and ds.name == "my blobs"
    parts = partition.partition(ds, 3, {"_target_": f"{user_pkg}.Halves"}, seed=0)
    assert [len(p) for p in parts] == [10, 10, 10]
    schema.check_data(_cfg(ds_cfg, {"_target_": f"{user_pkg}.Halves"}))
    with pytest.raises(ValueError, match=r"^dataset.n=2 is invalid: must be >= 4$"):
        data.build(dict(ds_cfg, n=2))  # the class's own value rule
    with pytest.raises(
        ValueError,
        match=r"^partition=natural is invalid for dataset=my blobs: the data has no clients",
    ):
        schema.check_data(_cfg(ds_cfg, {"name": "natural"}))  # fmt: skip
    natural = dict(ds_cfg, clients=3)
    schema.check_data(_cfg(natural, {"name": "natural"}, 3))
    ds = data.load(natural, seed=0, num_clients=3)
    assert [len(p) for p in partition.partition(ds, 3, {"name": "natural"}, seed=0)] == [10] * 3
    with pytest.raises(
        ValueError,
        match=r"^num_clients=2 is invalid with partition=natural: dataset=my blobs has 3 clients; set num_clients=3$",
    ):
        partition.partition(ds, 2, {"name": "natural"}, seed=0)  # fmt: skip


@pytest.mark.parametrize(
    ("cfg", "match"),
    [
        ({"_target_": "fedbench.sim.datasets.digits.Digits", "test_fractoin": 0.5},
         r"^dataset.test_fractoin=0.5 is invalid: Digits takes no such key; allowed keys: _target_, name, test_fraction, standardize$"),
        ({"_target_": "os.system"}, r"^dataset._target_='os.system' is invalid: must name a subclass of fedbench.sim.datasets.base.DataSource"),
        ({"_target_": "fedbench.sim.partition.IID"}, r"^dataset._target_='fedbench.sim.partition.IID' is invalid: must name a subclass"),
        ({"_target_": "nopkg_xyz.Data"}, r"^dataset._target_='nopkg_xyz.Data' is invalid: cannot import Data from nopkg_xyz$"),
        ({"_target_": "Digits"}, r"^dataset._target_='Digits' is invalid: must be a dotted path pkg.Class"),
        ({"name": "cifar"}, r"^dataset._target_ is missing and dataset.name='cifar' names no shipped data set: choose dataset=NAME, one of cifar10, cifar100, custom, digits"),
        ({"name": "digits", "test_fraction": 1.5}, r"^dataset.test_fraction=1.5 is invalid: must be a number in \(0, 1\)$"),
        ({"name": "digits", "standardize": "yes"}, r"^dataset.standardize='yes' is invalid: must be true or false$"),
    ],
)  # fmt: skip
def test_bad_dataset_configs_are_refused_in_one_line(cfg: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        data.build(cfg)


@pytest.mark.parametrize(
    ("cfg", "match"),
    [
        ({"_target_": "fedbench.sim.partition.Dirichlet", "alpah": 1}, r"^partition.alpah=1 is invalid: Dirichlet takes no such key; allowed keys: _target_, name, alpha$"),
        ({"_target_": "fedbench.sim.datasets.digits.Digits"}, r"^partition._target_=.* is invalid: must name a subclass of fedbench.sim.partition.Partition"),
        ({"name": "dirichlet", "alpha": 0}, r"^partition.alpha=0 is invalid: must be a number > 0$"),
        ({"name": "shards", "shards_per_client": 0}, r"^partition.shards_per_client=0 is invalid: must be an integer >= 1$"),
        ({"name": "foo"}, r"^partition._target_ is missing and partition.name='foo' names no shipped partition"),
    ],
)  # fmt: skip
def test_bad_partition_configs_are_refused_in_one_line(cfg: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        partition.validate(cfg)


def test_a_target_is_not_called_before_it_is_checked(tmp_path: Path, monkeypatch) -> None:
    (tmp_path / "fbtrap.py").write_text("CALLED = []\ndef make(**kw):\n    CALLED.append(kw)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ValueError, match="must name a subclass"):
        data.build({"_target_": "fbtrap.make"})
    import fbtrap

    assert fbtrap.CALLED == []
    assert np.__name__  # numpy stays importable (no sys.path damage)
