from __future__ import annotations

import numpy as np
import pytest
import torch

from fedbench.sim import engine
from fedbench.sim.engine import Simulation

# (compressor, its knob's candidates): the budget picks among them per client.
FAMILIES = [
    ("topk", [0.3, 0.1, 0.03, 0.01]),
    ("quant", [8, 4, 2, 1]),
    ("powersgd", [8, 4, 2, 1]),
]


def _sim(make_cfg, codec: str, choices: list, budget: float) -> Simulation:
    return Simulation(
        make_cfg(
            f"compressor={codec}",
            "network=lte",
            "num_clients=60",
            f"upload_budget_s={budget}",
            f"adaptive_choices=[{','.join(map(str, choices))}]",
        )
    )


def _encode(sim: Simulation) -> tuple[np.ndarray, dict, list, list]:
    ids = np.arange(60)
    gen = torch.Generator().manual_seed(0)
    deltas = [torch.randn((60, *p.shape), generator=gen) * 0.01 for p in sim.params]
    states = [sim.states(int(c)) for c in ids]
    sent, metrics = sim.adaptive.uplink(ids=ids, deltas=deltas, states=states, round_=1)
    return sim.network.upload_seconds(ids, sent.nbytes), metrics, deltas, sent.payload


@pytest.mark.parametrize(("codec", "choices"), FAMILIES, ids=[f for f, _ in FAMILIES])
def test_choices_meet_their_budget(make_cfg, codec, choices) -> None:
    probe = _sim(make_cfg, codec, choices, 1.0).adaptive
    # a budget between the 2nd and 3rd settings' upload time at the median uplink (10 Mbit/s)
    budget = float(np.sqrt(probe.probe_bytes[1] * probe.probe_bytes[2]) * 8 / 1e7)
    sim = _sim(make_cfg, codec, choices, budget)
    seconds, extras, deltas, decoded = _encode(sim)
    counts = extras["adaptive_choices"]
    assert sum(counts.values()) == 60 and len(counts) >= 3  # the spread gives several
    over = seconds > budget
    assert extras["adaptive_over_budget"] == int(over.sum())
    assert over.sum() <= counts.get(str(sim.adaptive.values[-1]), 0)  # only the coarsest
    assert (~over).sum() >= 30
    for k, d in enumerate(decoded):
        assert d.shape == deltas[k].shape and torch.isfinite(d).all()


def test_a_real_upload_over_budget_is_retried_coarser(make_cfg) -> None:
    sim = _sim(make_cfg, "topk", [0.3, 0.1, 0.03, 0.01], 0.004)
    sim.adaptive.probe_bytes[:] = 0  # a wrong first guess: everyone tries the finest
    seconds, extras, _, _ = _encode(sim)
    counts = extras["adaptive_choices"]
    assert counts.get("0.3", 0) < 60 and len(counts) >= 2  # the real bytes moved them
    over = seconds > 0.004
    assert over.sum() <= counts.get("0.01", 0)


def test_choice_is_the_finest_setting_whose_real_upload_fits(make_cfg) -> None:
    sim = _sim(make_cfg, "topk", [0.3, 0.1, 0.03, 0.01], 0.01)
    ad = sim.adaptive
    ids = np.arange(60)
    bps = sim.network.uplink_bps
    first = ad.choose(ids)
    for i, j in enumerate(first):
        fits = ad.probe_bytes * 8 / bps[i] <= 0.01
        want = int(np.argmax(fits)) if fits.any() else len(fits) - 1
        assert j == want
    assert len(set(first.tolist())) >= 2


def test_one_choice_and_a_loose_budget_is_the_fixed_codec(make_cfg) -> None:
    # same codec for everyone: residuals and bytes must match the fixed top-k 10% run
    fixed = Simulation(make_cfg("compressor=topk10", "network=lte"))
    adap = Simulation(
        make_cfg(
            "compressor=topk10", "network=lte", "upload_budget_s=100", "adaptive_choices=[0.1]"
        )
    )
    for r in range(1, 4):
        a, b = fixed.round(r), adap.round(r)
        assert a["uplink_bytes"] == b["uplink_bytes"]
        assert b["adaptive_choices"] == {"0.1": a["clients"]}
    for p, q in zip(fixed.params, adap.params, strict=True):
        torch.testing.assert_close(q, p)


def test_runs_end_to_end_and_records_choices(make_cfg) -> None:
    rows: list[dict] = []
    cfg = make_cfg("compressor=topk", "network=iot", "upload_budget_s=0.5", "rounds=2")
    summary = engine.run(cfg, on_round=rows.append)
    assert summary["status"] == "ok"
    assert all(sum(r["adaptive_choices"].values()) == r["clients"] for r in rows)


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        (["upload_budget_s=1.0"], "upload_budget_s"),  # compressor none has no knob
        (["compressor=topk", "upload_budget_s=0"], "upload_budget_s="),
        (["compressor=topk", "adaptive_choices=[0.1]"], "adaptive_choices"),  # no budget
        (["compressor=topk", "upload_budget_s=1", "adaptive_choices=[2.0]"], "ratio=2.0"),
    ],
)
def test_bad_settings_are_named(make_cfg, overrides: list[str], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        engine.validate(make_cfg(*overrides))
