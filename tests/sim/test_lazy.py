from __future__ import annotations

import numpy as np
import pytest
import torch

from fedbench.sim import engine
from fedbench.sim.engine import Simulation
from fedbench.sim.lazy import Lazy

SHAPES = [(3, 4), (5,)]


def _deltas(gen: torch.Generator, n: int, scale: torch.Tensor) -> list[torch.Tensor]:
    return [torch.randn((n, *s), generator=gen) * scale.view(-1, *[1] * len(s)) for s in SHAPES]


def test_nothing_is_lost_every_update_is_sent_or_still_held() -> None:
    lazy = Lazy(threshold=0.9)
    gen = torch.Generator().manual_seed(0)
    rng = np.random.default_rng(0)
    fresh = {c: [torch.zeros(s) for s in SHAPES] for c in range(6)}
    sent = {c: [torch.zeros(s) for s in SHAPES] for c in range(6)}
    skipped = 0
    for _ in range(40):
        ids = np.sort(rng.choice(6, size=3, replace=False))
        scale = torch.rand(3, generator=gen) * 2  # some small updates, so some are held
        deltas = _deltas(gen, 3, scale)
        acc, send = lazy.select(ids, deltas)
        skipped += int((~send).sum())
        for i, c in enumerate(ids):
            for k in range(len(SHAPES)):
                fresh[c][k] += deltas[k][i]
                if send[i]:
                    sent[c][k] += acc[k][i]
    assert skipped > 10  # the trigger did hold updates back
    for c in range(6):
        held = lazy.held.get(c, [torch.zeros(s) for s in SHAPES])
        for k in range(len(SHAPES)):
            torch.testing.assert_close(sent[c][k] + held[k], fresh[c][k])


def test_trigger_by_hand() -> None:
    lazy = Lazy(threshold=0.5)
    ids = np.array([7])
    big = [torch.full((1, 4), 1.0)]  # norm 2
    acc, send = lazy.select(ids, big)
    assert send.tolist() == [True]  # nothing sent yet: send
    small = [torch.full((1, 4), 0.2)]  # norm 0.4 < 0.5 * 2
    acc, send = lazy.select(ids, small)
    assert send.tolist() == [False]
    torch.testing.assert_close(lazy.held[7][0], small[0][0])
    acc, send = lazy.select(ids, small)  # held 0.4 + 0.4 = 0.8 < 1.0: still held
    assert send.tolist() == [False]
    acc, send = lazy.select(ids, small)  # 1.2 >= 1.0: send the accumulation
    assert send.tolist() == [True] and 7 not in lazy.held
    torch.testing.assert_close(acc[0], torch.full((1, 4), 0.6))
    assert lazy.last_norm[7] == pytest.approx(1.2)


def test_tiny_threshold_is_synchronous_fedavg(make_cfg) -> None:
    # every accumulation reaches 1e-9 of the last: nobody skips, the numbers are FedAvg's
    plain = Simulation(make_cfg("compressor=topk10"))
    lazy = Simulation(make_cfg("compressor=topk10", "lazy_threshold=1e-9"))
    for r in range(1, 4):
        a, b = plain.round(r), lazy.round(r)
        assert b["uploads_skipped"] == 0 and a["uplink_bytes"] == b["uplink_bytes"]
    for p, q in zip(plain.params, lazy.params, strict=True):
        torch.testing.assert_close(q, p)


def test_skipped_uploads_cost_zero_bytes_and_are_counted(make_cfg) -> None:
    cfg = make_cfg("lazy_threshold=1.0", "rounds=6", "clients_per_round=6")
    sim = Simulation(cfg)
    rows = [sim.round(r) for r in range(1, 7)]
    assert rows[0]["uploads_skipped"] == 0  # first upload of everyone goes out
    skipped = sum(r["uploads_skipped"] for r in rows)
    assert skipped > 0
    sent = sum(r["clients"] for r in rows) - skipped
    assert sum(r["uplink_bytes"] for r in rows) == sent * sim.dense_bytes  # dense codec
    assert len(sim.lazy.held) > 0  # held sums persist across rounds


@pytest.mark.parametrize("value", [0, 1.5, -1, True])
def test_bad_threshold_is_named(make_cfg, value) -> None:
    with pytest.raises(ValueError, match="lazy_threshold="):
        engine.validate({**make_cfg(), "lazy_threshold": value})


def test_deadline_is_refused(make_cfg) -> None:
    with pytest.raises(ValueError, match="deadline"):
        engine.validate(make_cfg("lazy_threshold=0.5", "network=lte", "network.deadline=5"))
