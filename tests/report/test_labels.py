"""Short labels, the settings a table shows, number formats, time to accuracy, and loading
runs whose rows carry keys the report does not know."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import DENSE_MSG, write_run
from omegaconf import OmegaConf

from fedbench.report import analysis, build, figures
from fedbench.report import build_report as public_build_report
from fedbench.results import load_runs

NAN = float("nan")


def test_labels_show_only_what_varies_within_a_method():
    df = pd.DataFrame(
        {
            "method": ["quant", "quant", "topk", "topk", "none", "powersgd4"],
            "compressor._target_": ["q.Quant"] * 2 + ["s.TopK"] * 2 + ["d.Dense", "l.PowerSGD"],
            "compressor.bits": [4, 8, NAN, NAN, NAN, NAN],
            "compressor.stochastic": [False, False, NAN, NAN, NAN, NAN],
            "compressor.ratio": [NAN, NAN, 0.1, 0.1, NAN, NAN],
            "compressor.rank": [NAN] * 5 + [4],
            "compressor.error_feedback": [False, False, True, False, False, True],
        }
    )
    labels = analysis.method_labels(df).tolist()
    assert labels == ["quant bits=4", "quant bits=8", "topk +EF", "topk", "none", "powersgd4"]
    full = [analysis.full_label(r) for _, r in df.iterrows()]
    assert full[0] == "quant (bits=4, stochastic=False)" and full[2] == "topk (ratio=0.1, EF)"


def test_splitting_settings_drop_columns_that_split_nothing_new():
    df = pd.DataFrame(
        {
            "network.uplink_bps": [1e7, 5e4, 1e7, 5e4],
            "network.name": ["lte", "iot", "lte", "iot"],
            "clients_per_round": [10, 10, 20, 20],
            "num_clients": [10, 10, 20, 20],
            "lr": [0.1, 0.1, 0.1, 0.1],
        }
    )
    cols = list(df.columns)
    assert analysis.splitting_settings(df, cols) == ["network.name", "num_clients"]
    assert analysis.splitting_settings(df.iloc[:1], cols) == []


def test_counts_print_as_integers_and_means_with_spread():
    assert analysis.fmt(pd.Series([10.0]), 1, integer=True) == "10 (n=1)"
    assert analysis.fmt(pd.Series([11.0, 12.0, 14.0]), 1, integer=True) == "12.3 ± 1.5 (n=3)"
    assert analysis.fmt(pd.Series([1.0]), 2) == "1.00 (n=1)"  # ratios keep their decimals
    assert analysis.fmt(pd.Series([NAN]), 1, integer=True) == "–"


def test_styles_stay_distinct_past_ten_labels():
    labels = ["none"] + [f"m{i:02d}" for i in range(24)]
    look = figures.styles(labels)
    keys = {(v["color"], v["ls"], v["marker"]) for v in look.values()}
    assert len(keys) == len(labels)
    assert look["none"]["color"] == "black" and look["m00"]["ls"] == look["m09"]["ls"] == "-"
    assert look["m10"]["ls"] == "--" and look["m10"]["color"] == look["m00"]["color"]


def test_the_reference_line_is_the_baseline_dense_run_not_fedbuffs():
    """Edge sweeps hold several codec-none cells; the thick reference line is the one the
    other runs are measured against (``dense_run``), though FedBuff's sorts first."""
    ok = pd.DataFrame(
        {
            "cell_key": ["fb", "sync", "topk"],
            "run_dir": ["r0", "r1", "r2"],
            "dense_run": ["r1", "r1", "r1"],
        }
    )
    names = {"fb": "none [aggregation=fedbuff]", "sync": "none [aggregation=sync]",
             "topk": "topk [aggregation=sync]"}  # fmt: skip
    baselines = figures.baseline_labels(ok, names, "cell_key")
    assert baselines == {"none [aggregation=sync]"}
    look = figures.styles(sorted(names.values()), baselines)
    assert look["none [aggregation=sync]"]["color"] == "black"
    assert look["none [aggregation=fedbuff]"]["color"] != "black"
    # without the analysis column: the first dense label, as before
    assert figures.styles(sorted(names.values()))["none [aggregation=fedbuff]"]["color"] == "black"


def test_no_cap_on_panels():
    ok = pd.DataFrame({"num_clients": range(8), "run_dir": [f"r{i}" for i in range(8)]})
    assert len(figures._panel_groups(ok, ["num_clients"])) == 8


def _sim_at_target(run_dir: Path, target: float) -> tuple[float, float]:
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    t = 0.0
    for r in rows:
        t += r["sim_seconds"]
        if r["test_accuracy"] >= target:
            return t, r["cum_uplink_bytes"]
    return NAN, NAN


def test_time_to_accuracy_table_recomputed_from_metrics(sweep, report):
    md = report.read_text()
    assert "## 5. Time to accuracy" in md
    t5 = pd.read_csv(report.parent / "table5_time_to_accuracy.csv")
    assert set(t5["network"]) == {"lte"} and len(t5) == 14
    runs = load_runs([sweep])
    df = analysis.derive(runs)
    for row in t5.itertuples():
        times, ups = [], []
        for run_dir in row.run_dirs.split(";"):
            target = df.loc[df["run_dir"] == run_dir, "target"].item()
            t, up = _sim_at_target(Path(run_dir), target)
            times.append(t)
            ups.append(up / 1e6)
        assert math.isfinite(row.sim_s_to_target_mean)
        np.testing.assert_allclose(row.sim_s_to_target_mean, np.nanmean(times), rtol=1e-9)
        np.testing.assert_allclose(row.uplink_to_target_mb_mean, np.nanmean(ups), rtol=1e-9)
    # Worked by hand: top-k at 1% needs more rounds (9 vs 6) but each is shorter.
    same = t5.loc[t5["local_steps"].isna() & (t5["num_clients"] == 10)]
    secs = same.set_index("label")["sim_s_to_target_mean"]
    # dense: 6 rounds of 0.05 s latency + 40,016 B; top-k 1%: 9 rounds of 0.05 s + 816 B.
    expected = [6 * (0.05 + DENSE_MSG / 1e6), 9 * (0.05 + 816 / 1e6)]
    np.testing.assert_allclose([secs["none"], secs["topk ratio=0.01"]], expected)


def test_no_time_table_under_the_ideal_network(tmp_path):
    write_run(tmp_path / "runs" / "0", "none", 10, 0)
    for path in (tmp_path / "runs" / "0").glob("*.json*"):
        text = path.read_text()
        rows = [json.loads(x) for x in text.splitlines()] if path.suffix == ".jsonl" else None
        if rows is None:
            path.write_text(json.dumps(json.loads(text) | {"sim_seconds": 0.0}))
        else:
            path.write_text("".join(json.dumps(r | {"sim_seconds": 0.0}) + "\n" for r in rows))
    md = public_build_report([tmp_path / "runs"], tmp_path / "out").read_text()
    assert "Time to accuracy" not in md and "simulated time is zero" in md
    assert not (tmp_path / "out" / "table5_time_to_accuracy.csv").exists()


def test_prebuilt_runs_are_not_loaded_again_and_unknown_keys_pass(tmp_path, monkeypatch):
    root = tmp_path / "runs"
    write_run(root / "0", "none", 10, 0)
    write_run(root / "1", "quant8", 10, 0)
    # Rows from other engines (FedBuff, lazy uploads, adaptive codecs) carry extra keys.
    metrics = root / "1" / "metrics.jsonl"
    rows = [json.loads(x) for x in metrics.read_text().splitlines()]
    extra = {"uploads_skipped": 3, "adaptive_choices": [0.1, 0.01], "staleness": {"max": 2}}
    metrics.write_text("".join(json.dumps(r | extra) + "\n" for r in rows))
    summary = root / "1" / "summary.json"
    summary.write_text(json.dumps(json.loads(summary.read_text()) | {"buffer": {"k": 4}}))
    runs = load_runs([root])

    def no_second_load(paths):
        raise AssertionError("build_report loaded the runs again")

    monkeypatch.setattr(build, "load_runs", no_second_load)
    md = public_build_report([root], tmp_path / "out", runs=runs).read_text()
    assert "| quant8 |" in md and "| none |" in md
    rounds = pd.read_csv(tmp_path / "out" / "rounds.csv")
    assert rounds["uploads_skipped"].max() == 3
    with pytest.raises(AssertionError, match="loaded the runs again"):
        public_build_report([root], tmp_path / "out2")


def _set_config(run_dir: Path, **keys) -> None:
    path = run_dir / ".hydra" / "config.yaml"
    cfg = OmegaConf.load(path)
    for k, v in keys.items():
        cfg[k] = v
    OmegaConf.save(cfg, path)


def test_edge_strategies_are_matched_to_the_synchronous_dense_baseline(tmp_path):
    # The sweep's baseline of a FedBuff or downlink-compressed run is dense and sync.
    write_run(tmp_path / "base", "none", 10, 0)
    write_run(tmp_path / "fb_none", "none", 10, 0)
    write_run(tmp_path / "fb_topk", "topk", 10, 0)
    write_run(tmp_path / "down", "quant8", 10, 0)
    for name in ("base", "fb_none", "fb_topk", "down"):
        _set_config(tmp_path / name, aggregation="sync", downlink="none", lazy_threshold=None)
    _set_config(tmp_path / "fb_none", aggregation="fedbuff")
    _set_config(tmp_path / "fb_topk", aggregation="fedbuff")
    _set_config(tmp_path / "down", downlink="quant8")
    df = analysis.derive(load_runs([tmp_path]))
    assert len(df) == 4
    base = str((tmp_path / "base").resolve())
    assert (df["dense_run"] == base).all(), df["dense_run"]
    # Without the sync baseline the codec-none run of the same setting is used.
    (tmp_path / "base" / "summary.json").unlink()
    df = analysis.derive(load_runs([tmp_path]))
    fb_topk = df.loc[df["run_dir"].str.endswith("fb_topk")].iloc[0]
    assert fb_topk["dense_run"].endswith("fb_none")
    assert pd.isna(df.loc[df["run_dir"].str.endswith("down"), "dense_run"]).all()
