"""The server-side aggregation hook: the default decode + weighted average is unchanged,
a codec with ``aggregate`` (FetchSGD's sketch) runs end to end, and settings that would
apply error feedback twice are refused."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fedbench.compress import build, wire
from fedbench.sim.aggregate import Mean, Merge
from fedbench.sim.engine import Simulation, run, validate


def _spy_uplink(sim: Simulation) -> list[tuple[np.ndarray, list[torch.Tensor]]]:
    seen: list[tuple[np.ndarray, list[torch.Tensor]]] = []
    inner = sim.uplink

    def spy(ids, deltas, states, round_):  # Simulation.uplink's positional form
        seen.append((ids.copy(), [d.clone() for d in deltas]))
        return inner(ids, deltas, states, round_)

    sim.uplink = spy
    return seen


def test_default_path_is_the_weighted_average_by_hand(make_cfg) -> None:
    sim = Simulation(make_cfg("compressor=none", "cohort_chunk=3"))
    assert isinstance(sim.aggregator, Mean)
    seen = _spy_uplink(sim)
    before = [p.clone() for p in sim.params]
    sim.round(1)
    ids = np.concatenate([i for i, _ in seen])
    assert len(seen) == 2 and len(ids) == 4  # two chunks, every sampled client
    w = torch.from_numpy(sim.sizes[ids].astype(np.float32))
    for k, p in enumerate(sim.params):
        deltas = torch.cat([d[k] for _, d in seen])
        avg = (w.reshape(-1, *[1] * (deltas.dim() - 1)) * deltas).sum(0) / w.sum()
        torch.testing.assert_close(p, before[k] + avg)


def test_sketch_uses_the_server_hook_and_counts_table_bytes(make_cfg) -> None:
    sim = Simulation(make_cfg("compressor=sketch"))
    codec = sim.codec
    assert isinstance(sim.aggregator, Merge)
    calls = []
    inner = codec.aggregate

    def spy(msgs, weights, state, device=None):
        calls.append((len(msgs), float(weights.sum())))
        return inner(msgs, weights, state, device)

    codec.aggregate = spy
    row = sim.round(1)
    n_tensors = len(sim.params)
    assert calls == [(row["clients"], pytest.approx(1.0))] * n_tensors
    per_client = 0
    for p in sim.params:
        n = p.numel()
        ts = codec.table_shape(n)
        head = wire.header_size(p.dim())
        per_client += head + 1 + 4 * n if ts is None else head + 13 + 4 * ts[0] * ts[1]
    assert any(codec.table_shape(p.numel()) is not None for p in sim.params)  # sketched
    assert row["uplink_bytes"] == row["clients"] * per_client
    assert row["uplink_bytes"] < row["dense_uplink_bytes"] / 5


def test_sketch_with_no_compression_and_no_momentum_is_fedavg(make_cfg) -> None:
    """Tables as large as the tensor go dense: the hook then must give FedAvg's numbers."""
    a = Simulation(make_cfg("compressor=none"))
    b = Simulation(
        make_cfg("compressor=sketch", "compressor.cols_ratio=1.0", "compressor.momentum=0")
    )
    for r in (1, 2):
        ra, rb = a.round(r), b.round(r)
        assert rb["uplink_bytes"] == ra["uplink_bytes"] + ra["clients"] * len(a.params)
    for pa, pb in zip(a.params, b.params, strict=True):
        torch.testing.assert_close(pb, pa)


def test_sketch_learns_digits(make_cfg) -> None:
    summary = run(
        make_cfg(
            "compressor=sketch",
            "compressor.ratio=0.05",
            "rounds=6",
            "num_clients=10",
            "clients_per_round=10",
            small=False,
        )
    )
    assert summary["status"] == "ok", summary["error"]
    assert summary["final_accuracy"] > 0.5  # 10 classes: chance is 0.1
    assert summary["compression_ratio"] > 5


@pytest.mark.parametrize("name", ["dgc", "sketch"])
def test_error_feedback_on_a_codec_with_its_own_residual_is_refused(make_cfg, name) -> None:
    with pytest.raises(ValueError, match="error_feedback"):
        validate(make_cfg(f"compressor={name}", "compressor.error_feedback=true"))


def test_dgc_runs_with_its_state_per_client(make_cfg) -> None:
    sim = Simulation(make_cfg("compressor=dgc"))
    assert isinstance(sim.aggregator, Mean)
    row1, row2 = sim.round(1), sim.round(2)
    assert row2["uplink_bytes"] < row1["uplink_bytes"]  # warm-up: sparser each call
    st = next(iter(sim.client_states.values()))
    assert all(s.calls >= 1 for s in st)
    assert all(math.isfinite(float(p.sum())) for p in sim.params)
    assert build("dgc").keeps_residual


@pytest.mark.parametrize("override", ["lazy_threshold=0.5", "aggregation=fedbuff"])
def test_sketch_refuses_plug_ins_that_need_decoded_updates(make_cfg, override) -> None:
    with pytest.raises(ValueError, match="merges messages on the server"):
        Simulation(make_cfg("compressor=sketch", override))
