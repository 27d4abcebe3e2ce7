"""FEMNIST (LEAF JSON) and CIFAR (python pickle batches) from local files, on fixtures
the tests write in exactly those formats; never a download."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest

from fedbench import schema
from fedbench.sim import data, partition
from fedbench.sim.datasets import cifar

FEMNIST = {"_target_": "fedbench.sim.datasets.femnist.FEMNIST", "name": "femnist"}
CIFAR10 = {"_target_": "fedbench.sim.datasets.cifar.CIFAR10", "name": "cifar10"}
CIFAR100 = {"_target_": "fedbench.sim.datasets.cifar.CIFAR100", "name": "cifar100"}


def _leaf(root: Path, split: str, users: dict[str, int], file: str, seed: int) -> None:
    rng = np.random.default_rng(seed)
    blob = {"users": list(users), "num_samples": list(users.values()), "user_data": {
        u: {"x": rng.random((n, 784)).round(3).tolist(), "y": rng.integers(0, 62, n).tolist()}
        for u, n in users.items()}}  # fmt: skip
    (root / split).mkdir(parents=True, exist_ok=True)
    (root / split / file).write_text(json.dumps(blob))


def _femnist(tmp_path: Path) -> Path:
    _leaf(tmp_path, "train", {"f0001_00": 6, "f0002_11": 4}, "all_data_0_niid_train.json", 0)
    _leaf(tmp_path, "train", {"f0003_22": 5}, "all_data_1_niid_train.json", 1)
    _leaf(tmp_path, "test", {"f0001_00": 2, "f0002_11": 1, "f0003_22": 3}, "t.json", 2)
    return tmp_path


def test_femnist_reads_leafs_json_layout_one_client_per_writer(tmp_path: Path) -> None:
    root = _femnist(tmp_path)
    ds = data.load(FEMNIST | {"path": str(root)}, seed=0, num_clients=3)
    assert ds.X_train.shape == (15, 784) and ds.X_test.shape == (6, 784)
    assert ds.image_shape == (1, 28, 28) and ds.num_classes == 62
    assert [len(p) for p in ds.natural] == [6, 4, 5] and [len(p) for p in ds.client_test] == [
        2,
        1,
        3,
    ]
    blob = json.loads((root / "train" / "all_data_1_niid_train.json").read_text())
    np.testing.assert_allclose(
        ds.X_train[ds.natural[2]], blob["user_data"]["f0003_22"]["x"], rtol=1e-6
    )
    np.testing.assert_array_equal(ds.y_train[ds.natural[2]], blob["user_data"]["f0003_22"]["y"])
    assert ds.X_train.min() >= 0 and ds.X_train.max() <= 1  # LEAF's raw pixels by default
    parts = partition.partition(ds, 3, {"name": "natural"}, seed=0)
    assert [len(p) for p in parts] == [6, 4, 5]


def test_femnist_refuses_bad_files_and_a_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(
        ValueError,
        match=r"^dataset.path is missing: dataset=femnist needs LEAF's FEMNIST JSON files",
    ):
        data.build(FEMNIST | {"path": None})  # fmt: skip
    with pytest.raises(ValueError, match=r"no train/\*\.json there; dataset=femnist needs"):
        data.build(FEMNIST | {"path": str(tmp_path)}).check(num_clients=3)
    root = _femnist(tmp_path)
    blob = json.loads((root / "test" / "t.json").read_text())
    blob["user_data"]["f0001_00"]["x"][0] = [0.5] * 783
    (root / "test" / "t.json").write_text(json.dumps(blob))
    with pytest.raises(ValueError, match=r"user 'f0001_00': x must be rows of 784 numbers$"):
        data.load(FEMNIST | {"path": str(root)}, seed=0, num_clients=3)
    blob["user_data"]["f0001_00"]["x"][0] = [0.5] * 784
    blob["user_data"]["f0001_00"]["y"][0] = 62
    (root / "test" / "t.json").write_text(json.dumps(blob))
    with pytest.raises(ValueError, match=r"user 'f0001_00': labels must be integers 0\.\.61$"):
        data.load(FEMNIST | {"path": str(root)}, seed=0, num_clients=3)


def _batch(n: int, classes: int, seed: int, label_key: str = "labels") -> dict:
    rng = np.random.default_rng(seed)
    return {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
            label_key.encode(): rng.integers(0, classes, n).tolist(), b"batch_label": b"x"}  # fmt: skip


def _cifar10(root: Path, protocol: int = 2) -> Path:
    root.mkdir(exist_ok=True)
    for i in range(1, 6):
        (root / f"data_batch_{i}").write_bytes(pickle.dumps(_batch(4, 10, i), protocol=protocol))
    (root / "test_batch").write_bytes(pickle.dumps(_batch(3, 10, 9), protocol=protocol))
    return root


@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_cifar10_reads_the_official_batches(tmp_path: Path, protocol: int) -> None:
    root = _cifar10(tmp_path / "c", protocol)
    ds = data.load(CIFAR10 | {"path": str(root), "standardize": False}, seed=0, num_clients=2)
    assert ds.X_train.shape == (20, 3072) and ds.X_test.shape == (3, 3072)
    assert ds.image_shape == (3, 32, 32) and ds.num_classes == 10 and ds.natural is None
    first = _batch(4, 10, 1)
    np.testing.assert_array_equal(ds.X_train[:4], first[b"data"].astype(np.float32))
    np.testing.assert_array_equal(ds.y_train[:4], first[b"labels"])


def test_cifar_channels_last_arrays_and_cifar100_labels(tmp_path: Path) -> None:
    root = tmp_path / "c100"
    root.mkdir()
    official = _batch(5, 100, 0, "fine_labels") | {b"coarse_labels": [1, 2, 3, 4, 19]}
    hwc = official[b"data"].reshape(5, 3, 32, 32).transpose(0, 2, 3, 1).copy()
    (root / "train").write_bytes(pickle.dumps(official))
    (root / "test").write_bytes(pickle.dumps(official | {b"data": hwc}))
    cfg = CIFAR100 | {"path": str(root), "standardize": False, "layout": "hwc"}
    ds = data.load(cfg, seed=0, num_clients=1)
    np.testing.assert_array_equal(ds.X_test, ds.X_train)  # hwc read back to the official chw
    assert ds.num_classes == 100
    coarse = data.load(cfg | {"labels": "coarse"}, seed=0, num_clients=1)
    assert coarse.num_classes == 20 and coarse.y_train.tolist() == [1, 2, 3, 4, 19]
    with pytest.raises(
        ValueError,
        match=r"images of \(32, 32, 3\) .* with dataset.layout=chw: must be \(3, 32, 32\)",
    ):
        data.load(cfg | {"layout": "chw"}, seed=0, num_clients=1)  # fmt: skip


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_cifar_pickles_that_name_code_are_refused_unrun(tmp_path: Path) -> None:
    root = _cifar10(tmp_path / "c")
    (root / "test_batch").write_bytes(pickle.dumps({b"data": _Evil(), b"labels": [0]}))
    with pytest.raises(
        ValueError,
        match=r"test_batch: not a CIFAR python batch: UnpicklingError: refused to load posix.system",
    ):
        data.load(CIFAR10 | {"path": str(root)}, seed=0, num_clients=1)  # fmt: skip
    with pytest.raises(ValueError, match=r"refused to load builtins.eval"):
        cifar.read_batch(_write(tmp_path / "e", b"cbuiltins\neval\n(S'1'\ntR."))


def _write(path: Path, raw: bytes) -> Path:
    path.write_bytes(raw)
    return path


def test_cifar_missing_files_are_named_before_any_work(tmp_path: Path) -> None:
    cfg = {"dataset": CIFAR10 | {"path": str(tmp_path)}, "partition": {"name": "iid"},
           "num_clients": 2}  # fmt: skip
    with pytest.raises(
        ValueError,
        match=r"^dataset.path='.*' is invalid: missing data_batch_1, .*test_batch; dataset=cifar10 needs the official python batches .*cifar-10-python.tar.gz",
    ):
        schema.check_data(cfg)  # fmt: skip
    with pytest.raises(ValueError, match=r"^dataset.path is missing: dataset=cifar10 needs"):
        schema.check_data(cfg | {"dataset": CIFAR10 | {"path": None}})
