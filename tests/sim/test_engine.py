from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fedbench.compress import build, config_dir
from fedbench.compress.dense import Dense
from fedbench.sim.engine import Simulation, run, validate

TIMING = {"encode_seconds", "decode_seconds", "downlink_codec_seconds", "wall_seconds"}
ROW_KEYS = [
    "round",
    "test_accuracy",
    "test_loss",
    "train_loss",
    "uplink_bytes",
    "downlink_bytes",
    "cum_uplink_bytes",
    "cum_downlink_bytes",
    "compression_ratio",
    "encode_seconds",
    "decode_seconds",
    "wall_seconds",
    "sim_seconds",
    "cum_sim_seconds",
    "clients_dropped",
]
SUMMARY_KEYS = [
    "status",
    "error",
    "final_accuracy",
    "best_accuracy",
    "rounds_to_target",
    "uplink_bytes_to_target",
    "sim_seconds_to_target",
    "uplink_bytes",
    "downlink_bytes",
    "compression_ratio",
    "wall_seconds",
    "sim_seconds",
    "rounds_completed",
    "client_sizes",
    "client_label_hist",
    "num_params",
]


def _rounds(sim: Simulation, n: int) -> list[dict]:
    return [sim.round(r) for r in range(1, n + 1)]


def test_end_to_end_digits_well_above_chance(make_cfg) -> None:
    rows: list[dict] = []
    summary = run(make_cfg("rounds=4", small=False), on_round=rows.append)
    assert summary["status"] == "ok" and summary["error"] is None
    assert summary["final_accuracy"] > 0.5  # 10 classes: chance is 0.1
    assert len(rows) == summary["rounds_completed"] == 4
    for row in rows:
        assert set(ROW_KEYS) <= set(row)
        assert row["test_accuracy"] is not None
    assert set(SUMMARY_KEYS) <= set(summary)
    assert sum(summary["client_sizes"]) == np.sum(summary["client_label_hist"])
    assert summary["compression_ratio"] == pytest.approx(1.0)
    assert summary["uplink_bytes"] == rows[-1]["cum_uplink_bytes"]


def test_same_config_same_metrics_bit_for_bit(make_cfg) -> None:
    cfg = make_cfg("eval_every=2", "downlink=fp16", "server_momentum=0.5")
    a, b = [], []
    sa, sb = run(cfg, on_round=a.append), run(cfg, on_round=b.append)
    strip = lambda rows: [{k: v for k, v in r.items() if k not in TIMING} for r in rows]  # noqa: E731
    assert strip(a) == strip(b)
    assert a[0]["test_accuracy"] is None and a[1]["test_accuracy"] is not None  # eval_every
    assert a[-1]["test_accuracy"] is not None  # the last round is always evaluated
    assert sa["final_accuracy"] == sb["final_accuracy"]
    other = []
    run(
        make_cfg("eval_every=2", "downlink=fp16", "server_momentum=0.5", "seed=1"),
        on_round=other.append,
    )
    assert strip(other) != strip(a)


@pytest.mark.parametrize(
    "extra",
    [
        ("partition=dirichlet", "partition.alpha=0.3"),  # unequal sizes: masked clients
        ("local_steps=7", "weight_decay=0.01", "batch_size=20", "server_momentum=0.5"),
    ],
    ids=["epochs-unequal", "local-steps"],
)
def test_cohort_equals_loop_with_dropout(make_cfg, extra) -> None:
    """Round by round from the same global model: the engines agree to round-off.

    (Unsynchronised, a 1e-8 difference occasionally flips a ReLU or a near-zero
    pre-activation and grows to ~1e-4 over rounds: float chaos, not a bug; without
    dropout the runs stay within 1e-7, checked below.)
    """
    sims = {e: Simulation(make_cfg(f"engine={e}", *extra)) for e in ("cohort", "loop")}
    assert sims["cohort"].spec.dropout > 0
    for r in range(1, 4):
        ra, rb = (s.round(r) for s in sims.values())
        for a, b in zip(sims["cohort"].params, sims["loop"].params, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
        assert ra["uplink_bytes"] == rb["uplink_bytes"]
        assert ra["train_loss"] == pytest.approx(rb["train_loss"], rel=1e-5)
        sims["loop"].params = [p.clone() for p in sims["cohort"].params]
        if sims["cohort"].server.buffers is not None:
            sims["loop"].server.buffers = [b.clone() for b in sims["cohort"].server.buffers]
    init = Simulation(make_cfg(*extra)).params
    assert all(not torch.equal(a, b) for a, b in zip(init, sims["cohort"].params, strict=True))


def test_cohort_equals_loop_without_dropout_over_rounds(make_cfg) -> None:
    extra = ("partition=dirichlet", "partition.alpha=0.3", "model.dropout=0", "rounds=4")
    sims = [Simulation(make_cfg(f"engine={e}", *extra)) for e in ("cohort", "loop")]
    for s in sims:
        _rounds(s, 4)
    for a, b in zip(sims[0].params, sims[1].params, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_results_do_not_depend_on_cohort_chunk(make_cfg) -> None:
    whole = Simulation(make_cfg("cohort_chunk=256", "partition=dirichlet", "partition.alpha=0.5"))
    split = Simulation(make_cfg("cohort_chunk=1", "partition=dirichlet", "partition.alpha=0.5"))
    ra, rb = _rounds(whole, 3), _rounds(split, 3)
    for a, b in zip(whole.params, split.params, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert [r["uplink_bytes"] for r in ra] == [r["uplink_bytes"] for r in rb]


def test_error_feedback_state_persists_for_clients_that_sit_out(make_cfg) -> None:
    sim = Simulation(make_cfg("compressor=fp16", "compressor.error_feedback=true", "rounds=6"))
    seen: dict[int, list[torch.Tensor]] = {}
    skipped_then_back = 0
    for r in range(1, 7):
        before = {c: [s.residual.clone() for s in st] for c, st in sim.client_states.items()}
        chosen = set(sim.sample(r).tolist())
        sim.round(r)
        for c, st in sim.client_states.items():
            now = [s.residual for s in st]
            if c in chosen:
                assert any(float(x.abs().sum()) > 0 for x in now)  # fp16 rounding is kept
                if c in before:
                    skipped_then_back += int(r - 1 not in seen.get(c, [r - 1]))
                    assert any(not torch.equal(x, y) for x, y in zip(now, before[c], strict=True))
                seen.setdefault(c, []).append(r)
            else:  # sat out: state untouched, same values
                for x, y in zip(now, before[c], strict=True):
                    assert torch.equal(x, y)
    assert skipped_then_back > 0  # some client skipped a round and came back with its residual


class _Recording(Dense):
    """The dense codec that records every message and lies about its own decode."""

    def __init__(self) -> None:
        self.sent: list[int] = []

    def compress_batch(self, x, generators=None, states=None):
        msgs, decoded = super().compress_batch(x, generators, states)
        self.sent += [len(m) for m in msgs]
        return msgs, decoded * 0 + 1e3  # never what the server should aggregate


def test_bytes_are_message_lengths_and_the_server_decodes_them(make_cfg) -> None:
    honest, lying = Simulation(make_cfg()), Simulation(make_cfg())
    lying.codec = _Recording()
    rows = _rounds(lying, 2)
    _rounds(honest, 2)
    assert sum(r["uplink_bytes"] for r in rows) == sum(lying.codec.sent)
    for a, b in zip(honest.params, lying.params, strict=True):
        assert torch.equal(a, b)
    # dense bytes are exactly what `none` would send
    none = build("none")
    per_client = sum(len(none.encode(torch.zeros(p.shape))) for p in honest.params)
    assert lying.dense_bytes == per_client
    assert rows[0]["downlink_bytes"] == per_client * 4  # 4 clients, the dense broadcast


def test_compression_ratio_from_totals(make_cfg) -> None:
    rows: list[dict] = []
    every = "clients_per_round=6"  # all 6 clients every round: up to date from round 2
    s = run(make_cfg("compressor=fp16", "downlink=bf16", "rounds=2", every), on_round=rows.append)
    dense = Simulation(make_cfg()).dense_bytes * 6 * 2
    assert s["compression_ratio"] == pytest.approx(dense / s["uplink_bytes"])
    assert 1.9 < s["compression_ratio"] < 2.0  # headers are not halved
    assert rows[0]["downlink_bytes"] == dense / 2  # new clients receive the dense model
    assert rows[1]["downlink_bytes"] < dense / 2 / 1.9  # then bf16 changes


def test_divergence_is_recorded_not_raised(make_cfg) -> None:
    rows: list[dict] = []
    s = run(make_cfg("lr=1e6", "rounds=5"), on_round=rows.append)
    assert s["status"] == "diverged"
    assert "non-finite" in s["error"] or "codec" in s["error"]
    assert s["rounds_completed"] == len(rows) < 5


def test_deadline_drops_clients_keeps_their_residual_and_loses_their_update(make_cfg) -> None:
    cfg = make_cfg("network=lte", "network.deadline=1e-6", "compressor=fp16",
                   "compressor.error_feedback=true", "rounds=1")  # fmt: skip
    sim = Simulation(cfg)
    start = [p.clone() for p in sim.params]
    row = sim.round(1)
    assert row["clients_dropped"] == 4 and row["clients"] == 0
    assert row["uplink_bytes"] == 0 and row["sim_seconds"] == pytest.approx(1e-6)
    for a, b in zip(start, sim.params, strict=True):
        assert torch.equal(a, b)
    for st in sim.client_states.values():  # as before the lost round: zero residual
        assert all(float(s.residual.abs().sum()) == 0 for s in st)


def test_network_time_accumulates(make_cfg) -> None:
    rows: list[dict] = []
    run(make_cfg("network=lte"), on_round=rows.append)
    assert all(r["sim_seconds"] > 0.1 for r in rows)  # two latencies alone are 0.1 s
    assert rows[-1]["cum_sim_seconds"] == pytest.approx(sum(r["sim_seconds"] for r in rows))


@pytest.mark.parametrize(
    ("override", "match"),
    [
        ("clients_per_round=7", "clients_per_round=7 is invalid"),
        ("engine=fast", "engine='fast' is invalid"),
        ("lr=0", "lr=0 is invalid"),
        ("downlink=nope", "downlink='nope' is invalid"),
        ("num_clients=5000", "num_clients=5000 is too large"),
        ("partition=natural", "partition=natural is invalid for dataset=digits"),
        ("model=cnn", None),
        ("network.availability=0", "network.availability=0"),
    ],
)
def test_validate_names_the_key(make_cfg, override: str, match: str | None) -> None:
    cfg = make_cfg(override)
    if match is None:
        validate(cfg)
        return
    with pytest.raises(ValueError, match=match):
        validate(cfg)


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present")
def test_cuda_without_a_device_is_a_config_error(make_cfg) -> None:
    with pytest.raises(ValueError, match="device='cuda' is invalid"):
        validate(make_cfg("device=cuda"))


CODECS = [n for n in ("quant", "qsgd", "topk", "randk", "powersgd", "sign")
          if (config_dir() / "compressor" / f"{n}.yaml").is_file()]  # fmt: skip


@pytest.mark.parametrize("name", CODECS)
def test_any_codec_runs_through_the_engine(make_cfg, name: str) -> None:
    rows: list[dict] = []
    s = run(make_cfg(f"compressor={name}", "rounds=2"), on_round=rows.append)
    assert s["status"] == "ok", s["error"]
    assert s["compression_ratio"] > 1.0
    assert all(math.isfinite(r["train_loss"]) for r in rows)


def test_cnn_and_synthetic_run(make_cfg) -> None:
    s = run(make_cfg("model=cnn", "rounds=1"))
    assert s["status"] == "ok" and s["final_accuracy"] is not None
    s = run(make_cfg("dataset=synthetic", "partition=natural", "num_clients=30",
                     "clients_per_round=8", "rounds=2", "cohort_chunk=3"))  # fmt: skip
    assert s["status"] == "ok" and len(s["client_sizes"]) == 30


def _direct_cohort(sizes: list[int], seed: int = 0):
    """A cohort built by hand: clients in the given size order (not sorted by size)."""
    from fedbench.sim import seeding
    from fedbench.sim.cohort import Cohort

    gen = torch.Generator().manual_seed(seed)
    n_total = sum(sizes)
    X = torch.randn(n_total, 64, generator=gen)
    y = torch.randint(0, 10, (n_total,), generator=gen)
    perm = torch.randperm(n_total, generator=gen)
    index = torch.zeros(len(sizes), max(sizes), dtype=torch.long)
    lo = 0
    for i, k in enumerate(sizes):
        index[i, :k] = perm[lo : lo + k]
        lo += k
    ids = torch.arange(len(sizes)) * 7 + 3
    cohort = Cohort(
        clients=ids,
        index=index,
        n=torch.tensor(sizes),
        shuffle_keys=seeding.client_keys(ids, seed, 1, seeding.SHUFFLE),
        dropout_keys=seeding.client_keys(ids, seed, 1, seeding.DROPOUT),
    )
    return X, y, cohort


@pytest.mark.parametrize(
    ("model", "opt_kw"),
    [
        ("mlp", {"momentum": 0.9, "weight_decay": 0.01, "local_epochs": 2, "local_steps": None}),
        ("mlp", {"momentum": 0.0, "weight_decay": 0.0, "local_epochs": 1, "local_steps": 9}),
        ("cnn", {"momentum": 0.9, "weight_decay": 0.0, "local_epochs": 2, "local_steps": None}),
    ],
    ids=["mlp-epochs-interleaved", "mlp-steps-no-momentum", "cnn-autograd"],
)
def test_cohort_train_equals_loop_for_interleaved_sizes(model, opt_kw) -> None:
    """Uneven clients in no particular order: the active clients of a step are not
    contiguous and their own steps differ (the engine's index paths, not its slices)."""
    from fedbench.sim import cohort as cohort_engine
    from fedbench.sim import loop as loop_engine
    from fedbench.sim.models import CNN, MLP

    spec = MLP(64, 10, [32, 16], 0.3) if model == "mlp" else CNN((1, 8, 8), 10, [4, 8], 0.3)
    X, y, cohort = _direct_cohort([41, 9, 40, 17, 3, 40])
    opt = cohort_engine.LocalSGD(lr=0.05, batch_size=8, **opt_kw)
    start = spec.init(torch.Generator().manual_seed(1))
    a = cohort_engine.train(spec, start, X, y, cohort, opt)
    b = loop_engine.train(spec, start, X, y, cohort, opt)
    for pa, pb in zip(a.params, b.params, strict=True):
        torch.testing.assert_close(pa, pb, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(a.loss, b.loss, rtol=1e-5, atol=1e-6)
    assert torch.equal(a.samples, b.samples)
    assert all(not torch.equal(p, s.expand_as(p)) for p, s in zip(a.params, start, strict=True))
    # Each client alone gives the same result (no dependence on the rest of the cohort).
    i = 3
    alone = cohort_engine.Cohort(
        clients=cohort.clients[i : i + 1],
        index=cohort.index[i : i + 1, : int(cohort.n[i])],
        n=cohort.n[i : i + 1],
        shuffle_keys=cohort.shuffle_keys[i : i + 1],
        dropout_keys=cohort.dropout_keys[i : i + 1],
    )
    c = cohort_engine.train(spec, start, X, y, alone, opt)
    for pa, pc in zip(a.params, c.params, strict=True):
        torch.testing.assert_close(pa[i], pc[0], rtol=1e-5, atol=1e-6)
