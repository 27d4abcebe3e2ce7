from __future__ import annotations

import time

import pytest

from fedbench.sim import data, memory

DIGITS = {"name": "digits", "test_fraction": 0.2}
SYNTHETIC = {"name": "synthetic", "alpha": 1.0, "beta": 1.0, "dimension": 60, "num_classes": 10,
             "size_mu": 4.0, "size_sigma": 2.0, "min_samples": 50, "max_samples": 1000,
             "test_fraction": 0.2}  # fmt: skip


@pytest.fixture(scope="module")
def digits() -> data.Dataset:
    return data.load(DIGITS, seed=0, num_clients=10)


def _cfg(**over) -> dict:
    cfg = {"num_clients": 10, "clients_per_round": 10, "cohort_chunk": 256, "batch_size": 32,
           "rounds": 50, "aggregation": "sync", "async_concurrency": None, "lazy_threshold": None,
           "device": "cpu", "max_memory_gb": None, "compressor": {"error_feedback": False},
           "model": {"name": "mlp", "hidden": [128, 64]}, "dataset": DIGITS}  # fmt: skip
    cfg.update(over)
    return cfg


MLP_PARAMS = 64 * 128 + 128 + 128 * 64 + 64 + 64 * 10 + 10


def test_estimate_of_the_default_run_is_small_and_worked_out_by_hand(digits) -> None:
    parts = memory.estimate_bytes(_cfg(), digits, MLP_PARAMS, client_sizes=[144] * 10)
    assert parts["data"] == 1797 * (64 * 4 + 8)
    assert parts["server_params"] == 3 * MLP_PARAMS * 4
    assert parts["client_states"] == 0
    assert parts["cohort_params"] == 10 * 4 * MLP_PARAMS * 4
    assert parts["activations"] == 10 * 32 * 128 * 4 * 3  # widest layer: 128 units
    assert sum(parts.values()) < 20e6
    memory.check(_cfg(), digits, MLP_PARAMS)


def test_error_feedback_keeps_one_residual_per_participant(digits) -> None:
    cfg = _cfg(num_clients=100, clients_per_round=10, rounds=3, compressor={"error_feedback": True})
    assert memory.estimate_bytes(cfg, digits, 1000)["client_states"] == 30 * 1000 * 4


def test_a_huge_batch_is_refused_naming_batch_size(digits) -> None:
    with pytest.raises(
        ValueError, match=r"^batch_size=100000000 is invalid: the run needs at least"
    ):
        memory.check(_cfg(batch_size=100_000_000), digits, MLP_PARAMS)
    memory.check(_cfg(batch_size=100_000_000, max_memory_gb=1e5), digits, MLP_PARAMS)


def test_the_chunk_is_named_when_it_dominates(digits) -> None:
    cfg = _cfg(num_clients=1000, clients_per_round=1000, cohort_chunk=1000, max_memory_gb=0.1)
    with pytest.raises(ValueError, match=r"^cohort_chunk=1000 is invalid: .*max_memory_gb=0.1"):
        memory.check(cfg, digits, MLP_PARAMS)
    memory.check(dict(cfg, cohort_chunk=64), digits, MLP_PARAMS)  # the chunk bounds memory


def test_synthetic_is_refused_before_generating_in_well_under_a_second() -> None:
    for n, cap in ((100_000, 8), (1_000_000_000, None)):
        cfg = {"dataset": SYNTHETIC, "num_clients": n, "max_memory_gb": cap}
        t0 = time.perf_counter()
        with pytest.raises(
            ValueError, match=rf"^num_clients={n} is invalid: .*synthetic_generation"
        ):
            memory.check_synthetic(cfg)
        assert time.perf_counter() - t0 < 0.5
    memory.check_synthetic({"dataset": SYNTHETIC, "num_clients": 1000, "max_memory_gb": None})


def test_synthetic_estimate_is_below_the_exact_need() -> None:
    from fedbench.sim import seeding

    sizes = data.synthetic_sizes(20_000, SYNTHETIC, data._rng(0, seeding.INIT, 1))  # the real draw
    estimate = memory._synthetic_samples_estimate(SYNTHETIC, 20_000)
    assert 0.8 * sizes.sum() < estimate <= sizes.sum()


def test_data_load_checks_the_exact_sizes_too() -> None:
    t0 = time.perf_counter()
    with pytest.raises(ValueError, match=r"^num_clients=100000 is invalid"):
        data.load(SYNTHETIC, seed=0, num_clients=100_000, max_memory_gb=1)
    assert time.perf_counter() - t0 < 1.0


def test_available_memory_is_read() -> None:
    n, where = memory.available_bytes("cpu")
    assert n > 0 and where
    assert memory.limit_bytes({"max_memory_gb": 2}) == (2_000_000_000, "max_memory_gb=2")


def test_measured_activation_bytes_replace_the_widest_layer_guess(digits) -> None:
    parts = memory.estimate_bytes(_cfg(), digits, MLP_PARAMS, activation_bytes_per_sample=1000)
    assert parts["activations"] == 10 * 32 * 1000
