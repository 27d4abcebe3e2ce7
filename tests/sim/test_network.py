from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml

from fedbench.compress import config_dir
from fedbench.sim import network

LINK = {
    "name": "hand",
    "downlink_bps": 8.0e6,  # 1 MB/s
    "uplink_bps": 8.0e5,  # 100 kB/s
    "latency_s": 0.1,
    "compute_sps": 1000.0,
    "spread": 0.0,
    "availability": 1.0,
    "deadline": None,
}


def test_round_time_hand_worked() -> None:
    net = network.from_config(LINK, num_clients=3, seed=0)
    clients = np.array([0, 2])
    # download 1e6 B: 1 s + 0.1; compute 500 samples: 0.5 s; upload 5e4 B: 0.5 s + 0.1
    # and 2e5 B: 2 s + 0.1  => 2.2 s and 3.7 s; the round waits for the slower one.
    t = net.client_seconds(clients, 1_000_000, np.array([50_000, 200_000]), np.array([500, 500]))
    np.testing.assert_allclose(t, [2.2, 3.7])
    dropped = net.dropped(t)
    assert not dropped.any()
    assert net.round_seconds(t, dropped) == pytest.approx(3.7)


def test_deadline_drops_exactly_the_late_clients() -> None:
    net = network.from_config({**LINK, "deadline": 3.0}, num_clients=4, seed=0)
    up = np.array([50_000, 200_000, 180_000, 190_001])  # 2.2, 3.7, 3.5, 3.6 s (+1e-5)
    t = net.client_seconds(np.arange(4), 1_000_000, up, np.array([500, 500, 100, 500]))
    # client 2 computes 100 samples: 0.1 s => 1.1 + 0.1 + 1.9 = 3.1 s: still late
    np.testing.assert_allclose(t, [2.2, 3.7, 3.1, 3.60001])
    assert net.dropped(t).tolist() == [False, True, True, True]
    assert net.round_seconds(t, net.dropped(t)) == 3.0  # the server waited out the deadline
    on_time = net.client_seconds(np.arange(1), 1_000_000, up[:1], np.array([500]))
    assert net.round_seconds(on_time, net.dropped(on_time)) == pytest.approx(2.2)


def test_upload_seconds_and_budget_bytes_hand_worked() -> None:
    net = network.from_config(LINK, num_clients=3, seed=0)
    # 100 kB/s uplink, latency excluded: 5e4 B => 0.5 s; 0.25 s => 25 kB
    np.testing.assert_allclose(net.upload_seconds(np.array([1, 2]), [50_000, 0]), [0.5, 0.0])
    np.testing.assert_allclose(net.budget_bytes(np.array([0]), 0.25), [25_000.0])
    free = network.from_config({"name": "ideal"}, num_clients=2, seed=0)
    assert free.upload_seconds(np.arange(2), [10**9, 1]).tolist() == [0.0, 0.0]
    assert np.isinf(free.budget_bytes(np.arange(2), 1.0)).all()


def test_ideal_costs_nothing() -> None:
    net = network.from_config({"name": "ideal"}, num_clients=2, seed=0)
    t = net.client_seconds(np.arange(2), 10**9, np.array([10**9, 1]), np.array([10**6, 1]))
    assert t.tolist() == [0.0, 0.0]


def test_spread_is_fixed_per_client_by_the_seed() -> None:
    cfg = {**LINK, "spread": 0.5}
    a = network.from_config(cfg, num_clients=50, seed=3)
    b = network.from_config(cfg, num_clients=50, seed=3)
    c = network.from_config(cfg, num_clients=50, seed=4)
    np.testing.assert_array_equal(a.uplink_bps, b.uplink_bps)
    assert not np.array_equal(a.uplink_bps, c.uplink_bps)
    assert a.uplink_bps.std() > 0
    assert 0.5 < np.median(a.uplink_bps) / LINK["uplink_bps"] < 2  # the preset is the median


def test_availability_is_a_seeded_coin_per_round_and_client() -> None:
    net = network.from_config({**LINK, "availability": 0.5}, num_clients=2000, seed=0)
    ids = np.arange(2000)
    first = net.available(ids, 1)
    assert 0.45 < first.mean() < 0.55
    assert np.array_equal(first, net.available(ids, 1))
    assert not np.array_equal(first, net.available(ids, 2))
    assert np.array_equal(first[10:20], net.available(ids[10:20], 1))


@pytest.mark.parametrize(
    ("key", "value"),
    [("uplink_bps", 0), ("latency_s", -1), ("availability", 0), ("spread", -0.1), ("deadline", 0)],
)
def test_bad_knobs_are_named(key: str, value: float) -> None:
    with pytest.raises(ValueError, match=f"network.{key}="):
        network.validate({**LINK, key: value})


PRESETS = sorted((config_dir() / "network").glob("*.yaml"))


@pytest.mark.parametrize("path", PRESETS, ids=[p.stem for p in PRESETS])
def test_presets_are_valid_and_ordered(path: Path) -> None:
    cfg = yaml.safe_load(path.read_text())
    network.validate(cfg)
    assert set(cfg) == {"_target_", "name", *network.KEYS}


def test_presets_get_slower_towards_the_edge() -> None:
    def up(name: str) -> float:
        return yaml.safe_load((config_dir() / "network" / f"{name}.yaml").read_text())["uplink_bps"]

    assert up("datacenter") > up("broadband") > up("lte") > up("3g") > up("iot")


def test_network_group_is_strict_and_takes_a_users_subclass(tmp_path, monkeypatch) -> None:
    with pytest.raises(ValueError, match=r"network.uplnk_bps is not a parameter"):
        network.validate({"_target_": "fedbench.sim.network.Network", "uplnk_bps": 1e6})
    with pytest.raises(ValueError, match=r"network._target_='os.system' is invalid: must name"):
        network.validate({"_target_": "os.system"})
    (tmp_path / "mynet.py").write_text(
        "from fedbench.sim.network import Network\n"
        "class Slow(Network):\n"
        "    def __init__(self, *, factor=2.0, **kw):\n"
        "        super().__init__(**kw)\n"
        "        self.factor = factor\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    net = network.from_config(
        {"_target_": "mynet.Slow", "factor": 3.0, "uplink_bps": 1e6}, num_clients=2, seed=0
    )
    assert type(net).__name__ == "Slow" and net.factor == 3.0
