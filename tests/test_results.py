"""fedbench.results: writing run files as the app does and loading them back."""

from __future__ import annotations

import json
import math
import shutil

import pytest
from omegaconf import OmegaConf

from fedbench.results import RunWriter, load_runs, read_metrics, read_summary, write_json_atomic


def _config(tmp, target="fedbench.compress.quant.Quantize", **extra):
    cfg = {
        "seed": 0,
        "num_clients": 10,
        "clients_per_round": "${num_clients}",
        "compressor": {"_target_": target, "error_feedback": False, "bits": 8},
    } | extra
    (tmp / ".hydra").mkdir(parents=True, exist_ok=True)
    OmegaConf.save(OmegaConf.create(cfg), tmp / ".hydra" / "config.yaml")


def test_writer_round_trip(tmp_path):
    run = tmp_path / "run"
    w = RunWriter(run)
    _config(run)
    w.append_round({"round": 1, "test_accuracy": 0.5, "train_loss": float("nan")})
    # Readable at once, before finish: a kill after this line loses nothing.
    assert read_metrics(run)[0][0]["round"] == 1
    w.append_round({"round": 2, "test_accuracy": 0.7, "train_loss": float("inf")})
    w.finish({"status": "ok", "final_accuracy": 0.7, "uplink_bytes": 10, "best": float("nan")})
    with pytest.raises(ValueError, match="finished"):
        w.append_round({"round": 3})
    assert sorted(p.name for p in run.iterdir()) == [".hydra", "metrics.jsonl", "summary.json"]
    runs = load_runs([tmp_path])
    assert runs.problems == []
    row = runs.runs.iloc[0]
    assert row["status"] == "ok" and not row["partial"] and row["final_accuracy"] == 0.7
    assert math.isnan(row["best"])
    assert row["clients_per_round"] == 10  # interpolation resolved
    assert row["compressor.bits"] == 8 and row["family"] == "quant" and row["method"] == "quant"
    assert runs.rounds["round"].tolist() == [1, 2]
    assert math.isinf(runs.rounds["train_loss"].iloc[1])
    assert "compressor._target_" in runs.config_columns and "run_dir" not in runs.config_columns


def test_write_json_atomic_replaces_whole_file(tmp_path):
    path = tmp_path / "a" / "summary.json"
    write_json_atomic(path, {"x": 1})
    write_json_atomic(path, {"x": 2, "y": float("nan")})
    assert json.loads(path.read_text())["x"] == 2
    assert [p.name for p in path.parent.iterdir()] == ["summary.json"]  # no temp file left
    with pytest.raises(TypeError):
        write_json_atomic(path, {"x": object()})
    assert json.loads(path.read_text())["x"] == 2  # the failed write left the old file
    assert [p.name for p in path.parent.iterdir()] == ["summary.json"]


def test_read_summary_missing_or_corrupt(tmp_path):
    assert read_summary(tmp_path) is None
    (tmp_path / "summary.json").write_text('{"status": "ok"')
    assert read_summary(tmp_path) is None
    (tmp_path / "summary.json").write_text("[1, 2]")
    assert read_summary(tmp_path) is None


def test_truncated_and_damaged_metrics(tmp_path):
    run = tmp_path / "0"
    _config(run)
    lines = [json.dumps({"round": r, "test_accuracy": r / 10}) for r in range(1, 5)]
    lines[1] = "{not json"
    (run / "metrics.jsonl").write_text("\n".join(lines) + "\n" + '{"round": 5, "test_acc')
    runs = load_runs([tmp_path])
    assert runs.rounds["round"].tolist() == [1, 3, 4]
    row = runs.runs.iloc[0]
    assert row["status"] == "partial" and row["partial"] and row["final_accuracy"] == 0.4
    text = "\n".join(runs.problems)
    assert "unreadable line 2" in text and "truncated last line" in text
    assert "missing summary" in text


def test_method_and_family_sources(tmp_path):
    """summary.json first, then hydra.yaml's compressor choice, then the ``_target_``."""
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    _config(a, seed=1)
    _config(b, seed=2)
    _config(c, target="fedbench.compress.sparse.TopK", seed=3)
    for run in (a, b, c):
        (run / "metrics.jsonl").write_text("")
    (a / "summary.json").write_text(json.dumps({"status": "ok", "method": "q8", "family": "qq"}))
    hydra = {"hydra": {"runtime": {"choices": {"compressor": "quant8"}}}}
    OmegaConf.save(OmegaConf.create(hydra), b / ".hydra" / "hydra.yaml")
    runs = load_runs([tmp_path]).runs
    got = {
        p.rsplit("/", 1)[-1]: (m, f)
        for p, m, f in zip(runs["run_dir"], runs["method"], runs["family"], strict=True)
    }
    assert got == {"a": ("q8", "qq"), "b": ("quant8", "quant"), "c": ("topk", "topk")}


def test_duplicates_kept_once_preferring_finished(tmp_path):
    first = tmp_path / "sweep" / "0"
    _config(first, store_dir="/somewhere")
    (first / "metrics.jsonl").write_text('{"round": 1}\n')
    copy = tmp_path / "store" / "abc"
    shutil.copytree(first, copy)
    _config(copy, store_dir="/elsewhere")  # output keys do not make a different run
    (copy / "summary.json").write_text(json.dumps({"status": "ok"}))
    runs = load_runs([tmp_path / "sweep", tmp_path / "store"])
    assert len(runs.runs) == 1 and runs.runs.iloc[0]["run_dir"].endswith("abc")
    assert any("duplicate run" in p for p in runs.problems)


def test_bad_inputs(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        load_runs([tmp_path / "missing"])
    (tmp_path / "x" / ".hydra").mkdir(parents=True)
    (tmp_path / "x" / ".hydra" / "config.yaml").write_text("a: [1, 2\n")
    runs = load_runs([tmp_path])
    assert len(runs.runs) == 1 and any("unreadable config" in p for p in runs.problems)
    assert load_runs([tmp_path / "x" / ".hydra"]).runs.empty


def test_writer_starts_a_restarted_run_afresh(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text('{"round": 1}\n{"round": 2}\n')
    (run / "summary.json").write_text(json.dumps({"status": "ok"}))
    w = RunWriter(run)
    assert read_summary(run) is None  # no old summary beside the new metrics
    w.append_round({"round": 1})
    w.close()
    assert [r["round"] for r in read_metrics(run)[0]] == [1]


def test_repeated_rounds_keep_the_last_sequence(tmp_path):
    run = tmp_path / "0"
    _config(run)
    rows = [{"round": r, "test_accuracy": a} for r, a in [(1, 0.1), (2, 0.2), (1, 0.5), (2, 0.6)]]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (run / "summary.json").write_text(json.dumps({"status": "ok", "final_accuracy": 0.6}))
    runs = load_runs([tmp_path])
    assert runs.rounds["round"].tolist() == [1, 2]
    assert runs.rounds["test_accuracy"].tolist() == [0.5, 0.6]
    assert runs.runs.iloc[0]["rounds_logged"] == 2
    assert any("rounds restart at row 3" in p for p in runs.problems)


def test_cpu_and_cuda_runs_are_different_cells(tmp_path):
    for name, device in [("cpu", "cpu"), ("gpu", "cuda:0"), ("gpu1", "cuda:1")]:
        _config(tmp_path / name, device=device)
        (tmp_path / name / "metrics.jsonl").write_text('{"round": 1}\n')
        (tmp_path / name / "summary.json").write_text(json.dumps({"status": "ok"}))
    runs = load_runs([tmp_path])
    assert len(runs.runs) == 2  # cuda:0 and cuda:1 are the same cell
    assert sum("duplicate run" in p for p in runs.problems) == 1


def test_fingerprint_becomes_columns(tmp_path):
    _config(tmp_path / "a")
    (tmp_path / "a" / "metrics.jsonl").write_text('{"round": 1}\n')
    fp = {"source_sha": "abc123", "fedbench_version": "0.1.0", "data_sha": {"x.npz": "f0"}}
    (tmp_path / "a" / "summary.json").write_text(json.dumps({"status": "ok", "fingerprint": fp}))
    row = load_runs([tmp_path]).runs.iloc[0]
    assert row["source_sha"] == "abc123" and row["fedbench_version"] == "0.1.0"
    assert json.loads(row["data_sha"]) == {"x.npz": "f0"}


BILLION_LAUGHS = """\
a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]
b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]
c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]
d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]
e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]
f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]
g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]
h: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g]
i: &i [*h,*h,*h,*h,*h,*h,*h,*h,*h]
"""


@pytest.mark.parametrize(
    ("text", "why"),
    [
        (BILLION_LAUGHS, "alias bomb"),
        ("a: &a [*a]\n", "recursive YAML alias"),
        ("x: " + "y" * (2 << 20) + "\n", "over 1048576 bytes"),
    ],
    ids=["billion_laughs", "recursive", "huge"],
)
def test_hostile_config_is_a_loading_problem_fast(tmp_path, text, why):
    import time

    from fedbench.sweep import _cell_configs

    (tmp_path / "x" / ".hydra").mkdir(parents=True)
    (tmp_path / "x" / ".hydra" / "config.yaml").write_text(text)
    _config(tmp_path / "ok")
    start = time.perf_counter()
    runs = load_runs([tmp_path])
    cells = _cell_configs(tmp_path)
    assert time.perf_counter() - start < 2
    assert [p for p in runs.problems if "unreadable config" in p and why in p]
    assert len(runs.runs) == 2 and [c.name for c, _ in cells] == ["ok"]
