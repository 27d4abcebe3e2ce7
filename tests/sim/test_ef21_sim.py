"""EF21 in the simulation: the server's running sum is the clients' estimates (sampled,
sitting out, dropped by a deadline), an identity codec gives FedAvg's numbers, top-k with
EF21 learns digits, and settings it cannot run with are refused before any work."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from fedbench.compress import from_config
from fedbench.compress.ef21 import EF21, EF21Mean
from fedbench.sim.aggregate import check_downlink, check_run
from fedbench.sim.engine import Simulation, run


def ef21(cfg: dict[str, Any]) -> dict[str, Any]:
    """``cfg`` with its compressor wrapped in EF21 (the form ``compressor.error_feedback=
    ef21`` builds; here through EF21's own ``_target_`` with the inner config)."""
    inner = {**cfg["compressor"], "error_feedback": False}
    inner.pop("entropy", None)
    return {**cfg, "compressor": {"_target_": "fedbench.compress.ef21.EF21", "inner": inner}}


def _server_invariant(sim: Simulation) -> None:
    """S_k == sum_i w_i g_i over every client the server has heard from."""
    agg = sim.aggregator
    assert isinstance(agg, EF21Mean)
    seen = np.flatnonzero(agg.weight.numpy() > 0)
    assert set(seen) <= set(sim.client_states)
    np.testing.assert_array_equal(agg.weight.numpy()[seen], sim.sizes[seen])
    for k in range(len(sim.params)):
        expect = sum(
            float(sim.sizes[c]) * sim.client_states[c][k].g.double() for c in sim.client_states
        )
        torch.testing.assert_close(agg.sums[k], expect)


def test_identity_codec_with_every_client_is_fedavg(make_cfg) -> None:
    a = Simulation(make_cfg("compressor=none", "clients_per_round=6"))
    b = Simulation(ef21(make_cfg("compressor=none", "clients_per_round=6")))
    assert isinstance(b.codec, EF21) and isinstance(b.aggregator, EF21Mean)
    for r in (1, 2, 3):
        ra, rb = a.round(r), b.round(r)
        assert rb["uplink_bytes"] == ra["uplink_bytes"]
        for pa, pb in zip(a.params, b.params, strict=True):
            torch.testing.assert_close(pb, pa)


def test_server_sum_is_the_clients_estimates_under_partial_participation(make_cfg) -> None:
    sim = Simulation(ef21(make_cfg("compressor=topk10", "rounds=4")))
    for r in range(1, 5):
        sim.round(r)
        _server_invariant(sim)
    assert len(sim.client_states) == 6  # 4 of 6 a round: all seen by now
    assert any(float(s[0].g.abs().sum()) > 0 for s in sim.client_states.values())


def test_a_client_dropped_by_the_deadline_changes_neither_side(make_cfg) -> None:
    sim = Simulation(ef21(make_cfg("compressor=topk10")))
    sim.network.deadline = float("inf")  # keep a snapshot of the states each round
    sim.network.dropped = lambda seconds: np.arange(len(seconds)) == 0  # the first client
    first = int(sim.sample(1)[np.argsort(sim.sizes[sim.sample(1)], kind="stable")][0])
    row = sim.round(1)
    assert row["clients_dropped"] == 1
    assert all(float(s.g.abs().sum()) == 0 for s in sim.client_states[first])  # restored
    assert float(sim.aggregator.weight[first]) == 0  # never applied on the server
    _server_invariant(sim)


def test_topk10_with_ef21_learns_digits_close_to_dense(make_cfg) -> None:
    base = ["rounds=20", "num_clients=10", "clients_per_round=10"]
    dense = run(make_cfg("compressor=none", *base, small=False))
    s = run(ef21(make_cfg("compressor=topk10", *base, small=False)))
    assert s["status"] == "ok", s["error"]
    assert s["final_accuracy"] > dense["final_accuracy"] - 0.05, (s, dense)
    assert s["compression_ratio"] > 5


def test_ef21_with_partial_participation_learns_digits(make_cfg) -> None:
    s = run(
        ef21(
            make_cfg(
                "compressor=topk10",
                "rounds=15",
                "num_clients=20",
                "clients_per_round=5",
                small=False,
            )
        )
    )
    assert s["status"] == "ok", s["error"]
    assert s["final_accuracy"] > 0.6  # 10 classes: chance is 0.1


@pytest.mark.parametrize(
    "override, match",
    [
        ("lazy_threshold=0.5", "lazy"),
        ("upload_budget_s=1.0", "adaptive"),
        ("aggregation=fedbuff", "aggregation=sync"),
    ],
)
def test_plug_ins_ef21_cannot_follow_are_refused(make_cfg, override, match) -> None:
    cfg = ef21(make_cfg("compressor=topk10", override))
    with pytest.raises(ValueError, match=match):
        check_run(from_config(cfg["compressor"]), cfg)


def test_plain_codecs_pass_the_run_check(make_cfg) -> None:
    cfg = make_cfg("compressor=topk10", "lazy_threshold=0.5")
    check_run(from_config(cfg["compressor"]), cfg)  # nothing to refuse


def test_ef21_on_the_downlink_is_refused() -> None:
    codec = from_config(
        {
            "_target_": "fedbench.compress.ef21.EF21",
            "inner": {"_target_": "fedbench.compress.sparse.TopK", "ratio": 0.1},
        }
    )
    with pytest.raises(ValueError, match="downlink codec ef21-topk is invalid"):
        check_downlink(codec)
