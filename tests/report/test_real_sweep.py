"""The report of a tiny real sweep made through the app: every number against the files.

Runs ``python -m fedbench -m compressor=quant8,topk10 network=lte`` (3 rounds, 1 local
epoch); the app adds the dense baseline under ``<sweep>/baseline/<hash>/`` and writes the report.
Ratios are recomputed from ``metrics.jsonl`` (cumulative dense and wire uplink bytes),
accuracy impacts and time to accuracy from the runs' and the baseline's ``summary.json``.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from matplotlib.image import imread

pytestmark = pytest.mark.slow


def _last_row(run_dir: Path) -> dict:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return json.loads(lines[-1])


def _summary(run_dir: Path) -> dict:
    return json.loads((run_dir / "summary.json").read_text())


@pytest.fixture(scope="module")
def real_sweep(tmp_path_factory) -> tuple[Path, str]:
    root = tmp_path_factory.mktemp("real")
    sweep = root / "sweep"
    cmd = [
        sys.executable,
        "-m",
        "fedbench",
        "-m",
        "compressor=quant8,topk10",
        "rounds=3",
        "local_epochs=1",
        "network=lte",  # simulated time, for the time-to-accuracy table
        "target_accuracy=0.05",  # reached within 3 rounds
        f"store_dir={root / 'store'}",
        f"hydra.sweep.dir={sweep}",
    ]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return sweep, res.stdout


def test_ratios_are_dense_bytes_over_wire_bytes(real_sweep):
    sweep, stdout = real_sweep
    t1 = pd.read_csv(sweep / "report" / "table1_method_comparison.csv")
    assert sorted(t1["label"]) == ["none", "quant8", "topk10"]  # short labels
    (baseline,) = (sweep / "baseline").iterdir()
    dense_wire = _last_row(baseline)["cum_uplink_bytes"]
    for row in t1.itertuples():
        (run_dir,) = [Path(p) for p in row.run_dirs.split(";")]
        last = _last_row(run_dir)
        rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
        assert last["cum_uplink_bytes"] == sum(r["uplink_bytes"] for r in rows)
        ratio = last["cum_dense_uplink_bytes"] / last["cum_uplink_bytes"]
        np.testing.assert_allclose(row.ratio_mean, ratio, rtol=1e-9)
        # The dense run really sent the bytes the ratio assumes.
        np.testing.assert_allclose(row.ratio_mean, dense_wire / last["cum_uplink_bytes"])
        assert f"| {row.label} | 10 |" in stdout and f"| {ratio:.2f} (n=1) |" in stdout
    compressed = t1.loc[t1["label"] != "none", "ratio_mean"]
    assert (compressed > 3).all()


def test_accuracy_impact_is_summary_difference(real_sweep):
    sweep, _ = real_sweep
    t1 = pd.read_csv(sweep / "report" / "table1_method_comparison.csv")
    (baseline,) = (sweep / "baseline").iterdir()
    cfg = yaml.safe_load((baseline / ".hydra" / "config.yaml").read_text())
    assert cfg["compressor"]["_target_"].endswith("Dense")
    dense_acc = _summary(baseline)["final_accuracy"]
    for row in t1.itertuples():
        (run_dir,) = row.run_dirs.split(";")
        expected = 100 * (_summary(Path(run_dir))["final_accuracy"] - dense_acc)
        np.testing.assert_allclose(row.impact_pts_mean, expected, atol=1e-9)


def test_time_to_accuracy_is_the_summary_s(real_sweep):
    sweep, _ = real_sweep
    t5 = pd.read_csv(sweep / "report" / "table5_time_to_accuracy.csv")
    assert sorted(t5["label"]) == ["none", "quant8", "topk10"] and set(t5["network"]) == {"lte"}
    for row in t5.itertuples():
        (run_dir,) = row.run_dirs.split(";")
        s = _summary(Path(run_dir))
        assert s["sim_seconds_to_target"] > 0
        np.testing.assert_allclose(row.sim_s_to_target_mean, s["sim_seconds_to_target"])
        np.testing.assert_allclose(row.uplink_to_target_mb_mean * 1e6, s["uplink_bytes_to_target"])
        np.testing.assert_allclose(row.sim_s_total_mean, s["sim_seconds"])


def test_figures_are_valid_and_not_blank(real_sweep):
    sweep, _ = real_sweep
    md = (sweep / "report" / "report.md").read_text()
    pngs = sorted((sweep / "report" / "figures").glob("*.png"))
    assert {p.stem for p in pngs} >= {
        "accuracy_vs_round",
        "accuracy_vs_uplink_bytes",
        "ratio_vs_accuracy",
        "accuracy_vs_sim_time",
    }
    for png in pngs:
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", png.name
        assert f"figures/{png.name}" in md
        pixels = imread(png)[::2, ::2, :3]
        assert pixels.std() > 0.05, png.name
        assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 20, png.name
