"""signSGD with majority vote in the simulation: the server steps by the vote of what it
decoded, the 1-bit broadcast of that step is exact, and the scheme learns digits."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fedbench.compress import from_config, wire
from fedbench.compress.majority import MajorityVoteAggregator, short_mantissa
from fedbench.sim.aggregate import check_downlink, check_run
from fedbench.sim.engine import Simulation, run


def _sign_bytes(shape: torch.Size) -> int:
    return wire.header_size(len(shape)) + 4 + math.ceil(math.prod(shape) / 8)


def test_server_step_is_the_vote_of_the_decoded_signs(make_cfg) -> None:
    sim = Simulation(make_cfg("compressor=majority_vote", "clients_per_round=5"))
    assert isinstance(sim.aggregator, MajorityVoteAggregator)
    seen = []
    inner = sim.uplink

    def spy(ids, deltas, states, round_):
        seen.append([d.clone() for d in deltas])
        return inner(ids, deltas, states, round_)

    sim.uplink = spy
    before = [p.clone() for p in sim.params]
    row = sim.round(1)
    assert row["uplink_bytes"] == 5 * sum(_sign_bytes(p.shape) for p in sim.params)
    for k, p in enumerate(sim.params):
        deltas = torch.cat([d[k] for d in seen]).flatten(1)  # (5, d)
        scales = deltas.abs().sum(1) / deltas.shape[1]  # each client's mean |update|
        vote = torch.where(torch.signbit(deltas), -1.0, 1.0).sum(0)  # 5 voters: no ties
        s = short_mantissa(scales.mean())
        expect = torch.where(vote > 0, s, -s).reshape(p.shape)
        torch.testing.assert_close(p - before[k], expect, rtol=1e-5, atol=0)


def test_one_bit_broadcast_of_the_vote_is_exact(make_cfg) -> None:
    sim = Simulation(make_cfg("compressor=majority_vote", "downlink=sign", "clients_per_round=6"))
    rows = [sim.round(r) for r in (1, 2, 3)]
    per_client = sum(_sign_bytes(p.shape) for p in sim.params)
    # round 1 sends the dense model to clients never seen; then 1 bit a value per change
    assert rows[1]["downlink_bytes"] == rows[2]["downlink_bytes"] == 6 * per_client
    held, _, _ = sim.broadcast(np.arange(6), 4)  # the last step, as round 4 would send it
    for ref, p in zip(held, sim.params, strict=True):
        assert torch.equal(ref, p)  # what the clients hold is the server's model, bit for bit


def test_majority_vote_with_one_bit_down_learns_digits(make_cfg) -> None:
    s = run(make_cfg("compressor=majority_vote", "downlink=sign", "rounds=20", small=False))
    assert s["status"] == "ok", s["error"]
    assert s["final_accuracy"] > 0.8  # 10 classes: chance is 0.1
    assert s["compression_ratio"] > 25  # 1 bit a value plus a scale and a header per tensor
    assert s["downlink_bytes"] < s["uplink_bytes"] * 5  # dense once, then 1 bit a value


@pytest.mark.parametrize(
    "overrides, match",
    [
        (["compressor.error_feedback=true"], "would hide"),
        (["+compressor.entropy=zstd"], "would hide"),
        (["aggregation=fedbuff"], "aggregation=sync"),
    ],
)
def test_settings_that_would_hide_the_vote_are_refused(make_cfg, overrides, match) -> None:
    cfg = make_cfg("compressor=majority_vote", *overrides)
    with pytest.raises(ValueError, match=match):
        check_run(from_config(cfg["compressor"]), cfg)


def test_the_vote_is_not_a_downlink_codec(make_cfg) -> None:
    cfg = make_cfg("compressor=majority_vote", "lazy_threshold=0.5")
    check_run(from_config(cfg["compressor"]), cfg)  # a held (zero) update just abstains
    with pytest.raises(ValueError, match="downlink codec majority_vote is invalid"):
        check_downlink(from_config(cfg["compressor"]))


def test_a_fixed_step_size_moves_every_coordinate_by_it(make_cfg) -> None:
    sim = Simulation(make_cfg("compressor=majority_vote", "compressor.step_size=0.01"))
    before = [p.clone() for p in sim.params]
    sim.round(1)
    s = float(short_mantissa(torch.tensor(0.01)))
    for b, p in zip(before, sim.params, strict=True):
        torch.testing.assert_close((p - b).abs(), torch.full_like(p, s), rtol=1e-6, atol=0)
