"""The report rebuilt from fixture run folders: every number checked against the files."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import DENSE_MSG, write_run
from matplotlib.image import imread

from fedbench.report import build_report, summary_table
from fedbench.report.figures import pareto_front
from fedbench.report.tables import CLAIMS, verdict
from fedbench.results import load_runs


def _runs_on_disk(sweep: Path) -> list[tuple[dict, dict]]:
    """(config, summary) of every finished run, read with plain json/yaml."""
    import yaml

    out = []
    for summary in sorted(sweep.rglob("summary.json")):
        cfg = yaml.safe_load((summary.parent / ".hydra" / "config.yaml").read_text())
        out.append((cfg, json.loads(summary.read_text()) | {"run_dir": str(summary.parent)}))
    return out


def _dense_of(cfg: dict, runs: list[tuple[dict, dict]]) -> dict:
    for c, s in runs:
        same = all(c[k] == cfg[k] for k in ("seed", "num_clients", "local_steps", "rounds"))
        if same and c["compressor"]["_target_"].endswith("Dense") and s["status"] == "ok":
            return s
    raise AssertionError(f"no dense run for {cfg}")


def test_ratios_equal_dense_bytes_over_wire_bytes(sweep, report):
    runs = _runs_on_disk(sweep)
    t1 = pd.read_csv(report.parent / "table1_method_comparison.csv")
    assert len(t1) == 14  # 6 codecs x 2 client counts + dense at local_steps 1 and 4
    for row in t1.itertuples():
        recomputed = []
        for run_dir in row.run_dirs.split(";"):
            cfg, s = next((c, s) for c, s in runs if Path(s["run_dir"]).resolve() == Path(run_dir))
            recomputed.append(_dense_of(cfg, runs)["uplink_bytes"] / s["uplink_bytes"])
        np.testing.assert_allclose(row.ratio_mean, np.mean(recomputed), rtol=1e-9)
        assert row.ratio_n == len(recomputed) == 2


def test_accuracy_impact_equals_summary_difference(sweep, report):
    runs = _runs_on_disk(sweep)
    t1 = pd.read_csv(report.parent / "table1_method_comparison.csv")
    for row in t1.itertuples():
        diffs = []
        for run_dir in row.run_dirs.split(";"):
            cfg, s = next((c, s) for c, s in runs if Path(s["run_dir"]).resolve() == Path(run_dir))
            diffs.append(100 * (s["final_accuracy"] - _dense_of(cfg, runs)["final_accuracy"]))
        np.testing.assert_allclose(row.impact_pts_mean, np.mean(diffs), atol=1e-9)
    quant = t1.loc[t1["label"].str.startswith("quant8")]
    np.testing.assert_allclose(quant["impact_pts_mean"], -0.3, atol=1e-6)  # the fixture's drop


def test_verdicts_follow_the_stated_rule(report):
    t1 = pd.read_csv(report.parent / "table1_method_comparison.csv")
    verdicts = dict(zip(t1["label"], t1["verdict"].fillna(""), strict=True))
    assert verdicts["quant8"] == "supported"  # 3.99x >= 3.6x, -0.3
    assert verdicts["powersgd"] == "supported"  # 24.8x, -1.5 pts
    assert verdicts["topk ratio=0.1"].startswith("partly (ratio ✗")  # 4.99x < 9x
    assert verdicts["topk ratio=0.01"] == ""  # no claim about 1%
    assert verdict(CLAIMS["quant8"], 3.0, -2.0) == "not supported"
    assert verdict(CLAIMS["quant8"], 4.0, float("nan")) == "no dense baseline"


def test_tradeoff_bins_and_strategies(report):
    t2 = pd.read_csv(report.parent / "table2_tradeoff.csv").set_index("bin")
    # 1x bin: dense (1.0) and fp16 (~2.0) runs, 12 in all, all at 100% of dense.
    assert t2.loc["1x", "ratio_n"] == 12
    np.testing.assert_allclose(t2.loc["1x", "rel_accuracy_pct_mean"], 100.0)
    assert t2.loc["~100x", "ratio_n"] == 4  # topk 1%: 49x
    assert t2.loc["~1000x", "ratio_n"] == 0
    t3 = pd.read_csv(report.parent / "table3_strategies.csv").set_index("strategy")
    np.testing.assert_allclose(t3.loc["low-rank", "ratio_min"], DENSE_MSG / 1616)
    np.testing.assert_allclose(t3.loc["local SGD", "ratio_max"], 4.0)  # K=4, same bytes/round
    local = pd.read_csv(report.parent / "local_sgd.csv")
    assert len(local) == 2 and not local["equal_steps"].any()  # K=1 ran 12, not 48 rounds


def test_figures_exist_and_are_not_blank(report):
    figdir = report.parent / "figures"
    names = [
        "accuracy_vs_round",
        "accuracy_vs_uplink_bytes",
        "accuracy_vs_sim_time",
        "ratio_vs_accuracy",
        "client_scaling",
    ]
    for name in names:
        png = figdir / f"{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
        assert (figdir / f"{name}.svg").stat().st_size > 1000
        pixels = imread(png)[..., :3]
        assert pixels.std() > 0.05, name
        assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 20, name
        assert f"figures/{name}.png" in report.read_text()


def test_partial_and_failed_runs_are_listed(report):
    md = report.read_text()
    partial = md.split("## Partial runs")[1].split("##")[0]
    assert "| 28 | topk ratio=0.01 | 11 |" in partial  # 11 whole rounds of 12
    failed = md.split("## Failed and diverged runs")[1].split("##")[0]
    assert "powersgd rank 64 exceeds min(shape)=10" in failed
    assert "loss is NaN at round 4" in failed and "diverged" in failed
    assert "truncated last line" in md
    html = (report.parent / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 5 and "exceeds min(shape)" in html
    assert "<img" in html and 'src="figures' not in html  # self-contained


def test_report_csvs(report):
    runs = pd.read_csv(report.parent / "runs.csv")
    rounds = pd.read_csv(report.parent / "rounds.csv")
    assert len(runs) == 31 and {"compressor._target_", "compressor.bits", "seed"} <= set(runs)
    assert len(rounds) == 30 * 12 + 11
    assert set(runs["status"]) == {"ok", "failed", "diverged", "partial"}


def test_only_bad_runs_still_report(tmp_path):
    write_run(tmp_path / "a", "topk", 10, 0, truncate=True)
    write_run(tmp_path / "b", "quant8", 10, 0, status="failed", error="ValueError: boom")
    md = build_report([tmp_path], None).read_text()
    assert "ValueError: boom" in md and "| a |" in md
    assert (tmp_path / "report" / "report.html").is_file()


def test_empty_folder_and_missing_path(tmp_path):
    md = build_report([tmp_path], tmp_path / "out")
    assert "No run folders" in md.read_text()
    with pytest.raises(ValueError, match="does not exist"):
        build_report([tmp_path / "nope"], tmp_path / "out")


def test_summary_table_one_row_per_cell(sweep):
    text = summary_table(load_runs([sweep]))
    lines = text.splitlines()
    assert len(lines) == 2 + 14
    assert any("topk ratio=0.01 | 10 |" in s and "2 ok, 1 partial" in s for s in lines)
    assert any("-0.30 ± 0.00 (n=2)" in s and s.startswith("| quant8") for s in lines)


def test_bench_figure(tmp_path, sweep):
    bench = {
        "benchmarks": [
            {
                "group": "encode",
                "name": f"test_encode[{c}-{n}]",
                "params": {"codec": c, "size": n},
                "stats": {"median": n * t},
                "extra_info": {"elements": n, "wire_bytes": n, "ratio": 4.0},
            }
            for c, t in [("quant8", 1e-9), ("topk", 5e-9)]
            for n in (1_000, 100_000, 1_000_000)
        ]
    }
    path = tmp_path / "bench.json"
    path.write_text(json.dumps(bench))
    small = tmp_path / "runs"
    write_run(small / "0", "none", 10, 0)
    md = build_report([small], tmp_path / "out", bench=path).read_text()
    assert "figures/bench_throughput.png" in md
    assert imread(tmp_path / "out" / "figures" / "bench_throughput.png").std() > 0.05
    b = pd.read_csv(tmp_path / "out" / "bench.csv")
    np.testing.assert_allclose(sorted(b["throughput_meps"].round(6).unique()), [200.0, 1000.0])
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ValueError, match="pytest-benchmark"):
        build_report([small], tmp_path / "out2", bench=tmp_path / "bad.json")


def test_pareto_front():
    ratio = np.array([1.0, 2.0, 4.0, 8.0, 3.0])
    acc = np.array([90.0, 91.0, 89.0, 85.0, 88.0])
    assert pareto_front(ratio, acc).tolist() == [1, 2, 3]  # 0 and 4 are dominated


def test_cli_and_lazy_import(tmp_path):
    write_run(tmp_path / "sweep" / "0", "none", 10, 0)
    write_run(tmp_path / "sweep" / "1", "quant8", 10, 0)
    code = (
        "import sys, fedbench.report; "
        "bad = [m for m in ('torch', 'pandas', 'matplotlib', 'fedbench.sim') if m in sys.modules]; "
        "print(bad)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    res = subprocess.run(
        [
            sys.executable,
            "-m",
            "fedbench.report",
            str(tmp_path / "sweep"),
            "--out",
            str(tmp_path / "r"),
        ],
        capture_output=True,
        text=True,
    )
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "r" / "report.md").is_file() and "torch" not in res.stderr
    res = subprocess.run(
        [sys.executable, "-m", "fedbench.report", str(tmp_path / "nope")],
        capture_output=True,
        text=True,
    )
    assert res.returncode == 2 and "does not exist" in res.stderr


def test_csv_paths_are_relative_to_the_working_directory(tmp_path, monkeypatch):
    write_run(tmp_path / "sweep" / "0", "topk", 10, 0)
    monkeypatch.chdir(tmp_path)
    build_report([tmp_path / "sweep"], tmp_path / "out")
    runs = pd.read_csv(tmp_path / "out" / "runs.csv")
    assert list(runs["run_dir"]) == ["sweep/0"]
    assert str(tmp_path) not in (tmp_path / "out" / "rounds.csv").read_text()


def test_a_rebuild_leaves_no_stale_table_or_figure(tmp_path):
    """A section left out now (client scaling: one client count here) leaves no CSV or
    figure of an earlier build behind."""
    write_run(tmp_path / "runs" / "a", "none", 10, 0)
    out = tmp_path / "out"
    (out / "figures").mkdir(parents=True)
    (out / "table4_client_scaling.csv").write_text("stale\n")
    (out / "figures" / "client_scaling.png").write_bytes(b"stale")
    build_report([tmp_path / "runs"], out)
    assert not (out / "table4_client_scaling.csv").exists()
    assert not (out / "figures" / "client_scaling.png").exists()
    assert (out / "table1_method_comparison.csv").is_file()
