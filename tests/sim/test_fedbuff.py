from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fedbench.sim import engine
from fedbench.sim.engine import Simulation
from fedbench.sim.fedbuff import Arrival, FedBuff

SYNC_KEYS = {"round", "train_loss", "uplink_bytes", "downlink_bytes", "sim_seconds", "clients"}


@pytest.mark.parametrize("codec", ["none", "topk10"])
def test_equal_speeds_reproduce_synchronous_fedavg(make_cfg, codec: str) -> None:
    # ideal network: every client takes 0 s, so all of a launch arrive together and the
    # server steps on exactly one round's cohort from the model they all started from.
    sync = Simulation(make_cfg(f"compressor={codec}"))
    fb_sim = Simulation(make_cfg(f"compressor={codec}", "aggregation=fedbuff"))
    fb = FedBuff(fb_sim)
    for r in range(1, 4):
        a, b = sync.round(r), fb.round(r)
        assert set(b) >= SYNC_KEYS
        for key in ("uplink_bytes", "downlink_bytes", "clients"):
            assert a[key] == b[key], key
        assert b["staleness_max"] == 0
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-6)
    for p, q in zip(sync.params, fb_sim.params, strict=True):
        torch.testing.assert_close(q, p, rtol=1e-5, atol=1e-6)


def test_run_rows_have_the_sync_keys_and_a_monotone_clock(make_cfg) -> None:
    cfg = make_cfg(
        "aggregation=fedbuff",
        "async_concurrency=4",
        "async_buffer_size=2",
        "network=lte",
        "rounds=6",
        "local_epochs=1",
    )
    rows: list[dict] = []
    summary = engine.run(cfg, on_round=rows.append)
    assert summary["status"] == "ok"
    assert [r["round"] for r in rows] == list(range(1, 7))
    assert all(r["clients"] == 2 for r in rows)
    assert all(r["sim_seconds"] >= 0 for r in rows) and rows[-1]["cum_sim_seconds"] > 0
    # 4 clients training, steps every 2 arrivals: later updates come from older models
    assert max(r["staleness_max"] for r in rows) >= 1
    assert sum(r["uplink_bytes"] for r in rows) == summary["uplink_bytes"]


def test_step_weighs_by_samples_and_staleness(make_cfg) -> None:
    sim = Simulation(make_cfg("aggregation=fedbuff", "async_buffer_size=2"))
    fb = FedBuff(sim)
    before = [p.clone() for p in sim.params]
    fb.version = 3
    u1 = [torch.ones_like(p) for p in sim.params]
    u2 = [torch.full_like(p, -2.0) for p in sim.params]
    fb.buffer = [
        Arrival(client=0, version=3, update=u1, samples=10, up_bytes=5, loss=1.0),  # fresh
        Arrival(client=1, version=0, update=u2, samples=30, up_bytes=7, loss=3.0),  # 3 old
    ]
    row = fb._step(1, 0.0)
    # (10 * 1 * 1 + 30 * (-2) / sqrt(1 + 3)) / (10 + 30) = (10 - 30) / 40 = -0.5
    for p, b in zip(sim.params, before, strict=True):
        torch.testing.assert_close(p - b, torch.full_like(p, -0.5))
    assert row["staleness_mean"] == 1.5 and row["staleness_max"] == 3
    assert row["train_loss"] == 2.0 and fb.version == 4
    assert math.isclose(1 / math.sqrt(1 + 3), 0.5)


def test_clients_train_on_the_model_current_when_they_started(make_cfg) -> None:
    sim = Simulation(
        make_cfg("aggregation=fedbuff", "async_concurrency=4", "async_buffer_size=1", "network=lte")
    )
    fb = FedBuff(sim)
    fb.round(1)
    # 4 started from version 0; after one step the other 3 are still in flight with v0
    in_flight = [a for _, _, a in fb.heap] + list(fb.arrived)
    assert fb.version == 1
    assert len(in_flight) == 3 and all(a.version == 0 for a in in_flight)
    assert np.all(np.diff(sorted(t for t, _, _ in fb.heap)) >= 0)


@pytest.mark.parametrize(
    ("override", "match"),
    [
        ("aggregation=bogus", "aggregation="),
        ("async_concurrency=0", "async_concurrency="),
        ("async_buffer_size=-1", "async_buffer_size="),
    ],
)
def test_bad_settings_are_named(make_cfg, override: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        engine.validate(make_cfg("aggregation=fedbuff", override))


def test_concurrency_is_capped_at_the_federation(make_cfg) -> None:
    fb = FedBuff(Simulation(make_cfg("aggregation=fedbuff", "async_concurrency=40")))
    assert fb.concurrency == 6
    fb.round(1)
    assert len(fb.busy) <= 6


def test_deadline_is_refused(make_cfg) -> None:
    with pytest.raises(ValueError, match=r"network\.deadline"):
        engine.validate(make_cfg("aggregation=fedbuff", "network=lte", "network.deadline=5"))
