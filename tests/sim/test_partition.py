from __future__ import annotations

import numpy as np
import pytest

from fedbench.sim import data, partition


@pytest.fixture(scope="module")
def digits() -> data.Dataset:
    return data.load({"name": "digits", "test_fraction": 0.2}, seed=0, num_clients=10)


@pytest.mark.parametrize(
    "cfg",
    [
        {"name": "iid"},
        {"name": "dirichlet", "alpha": 0.5},
        {"name": "shards", "shards_per_client": 2},
    ],
)
def test_every_sample_goes_to_exactly_one_client(digits: data.Dataset, cfg: dict) -> None:
    parts = partition.partition(digits, 20, cfg, seed=0)
    assert len(parts) == 20 and all(len(p) > 0 for p in parts)
    allidx = np.concatenate(parts)
    assert len(allidx) == len(digits.y_train) == len(np.unique(allidx))


def test_iid_sizes_differ_by_at_most_one(digits: data.Dataset) -> None:
    sizes = [len(p) for p in partition.partition(digits, 10, {"name": "iid"}, seed=0)]
    assert max(sizes) - min(sizes) <= 1


def _skew(ds: data.Dataset, alpha: float) -> float:
    parts = partition.partition(ds, 10, {"name": "dirichlet", "alpha": alpha}, seed=0)
    hist = partition.label_histograms(ds.y_train, parts, 10)
    return float((hist.max(1) / hist.sum(1)).mean())  # share of each client's top label


def test_lower_dirichlet_alpha_means_more_label_skew(digits: data.Dataset) -> None:
    assert _skew(digits, 0.1) > _skew(digits, 1.0) > _skew(digits, 100.0)
    assert _skew(digits, 100.0) < 0.2


def test_shards_limit_labels_per_client(digits: data.Dataset) -> None:
    parts = partition.partition(digits, 10, {"name": "shards", "shards_per_client": 2}, seed=0)
    labels = [len(np.unique(digits.y_train[p])) for p in parts]
    assert max(labels) <= 4  # two label-sorted shards straddle at most two boundaries
    assert np.mean(labels) <= 3


def test_too_many_clients_is_a_clear_error(digits: data.Dataset) -> None:
    n = len(digits.y_train)
    with pytest.raises(ValueError, match=f"num_clients={n + 1} is too large"):
        partition.partition(digits, n + 1, {"name": "iid"}, seed=0)
    with pytest.raises(ValueError, match=r"num_clients=1000 is too large"):
        partition.partition(digits, 1000, {"name": "shards", "shards_per_client": 2}, seed=0)


def test_natural_needs_synthetic_and_bad_knobs_are_named(digits: data.Dataset) -> None:
    with pytest.raises(
        ValueError,
        match=r"^partition=natural is invalid for dataset=digits: the data has no clients",
    ):
        partition.partition(digits, 10, {"name": "natural"}, seed=0)
    with pytest.raises(ValueError, match=r"partition.alpha=0"):
        partition.validate({"name": "dirichlet", "alpha": 0})
    with pytest.raises(ValueError, match=r"partition.shards_per_client=0"):
        partition.validate({"name": "shards", "shards_per_client": 0})
    with pytest.raises(ValueError, match=r"partition.name='foo' names no shipped partition"):
        partition.validate({"name": "foo"})
