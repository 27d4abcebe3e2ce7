"""``python -m fedbench`` end to end: sweeps, resume, failures, validation, launchers."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fedbench import schema
from fedbench.configs import compressor_names

SIMULATED = {"sim_seconds", "cum_sim_seconds"}  # derived from bytes: part of the numbers
TINY = ["rounds=2", "local_epochs=1", "eval_every=1"]


def fedbench(tmp_path: Path, *args: str, sweep: str = "sweep") -> subprocess.CompletedProcess:
    flags = [a for a in args if a.startswith("-")]  # argparse wants flags before overrides
    args = tuple(a for a in args if not a.startswith("-"))
    cmd = [
        sys.executable,
        "-m",
        "fedbench",
        *flags,
        f"store_dir={tmp_path / 'store'}",
        f"hydra.sweep.dir={tmp_path / sweep}",
        f"hydra.run.dir={tmp_path / 'run'}",
        *args,
    ]
    env = {**os.environ, "MPLBACKEND": "Agg", "HYDRA_FULL_ERROR": "1"}
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)


def summaries(sweep: Path) -> dict[str, dict]:
    out = {}
    for f in sorted(sweep.rglob("summary.json")):
        if "report" in f.parts:
            continue
        out[str(f.parent.relative_to(sweep))] = json.loads(f.read_text())
    return out


def metrics(run_dir: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    # measured timings differ run to run; everything else must be identical
    return [
        {k: v for k, v in r.items() if not k.endswith("_seconds") or k in SIMULATED} for r in rows
    ]


@pytest.mark.slow
def test_used_by_command_end_to_end(tmp_path: Path) -> None:
    res = fedbench(tmp_path, "-m", "compressor=quant,topk,powersgd", *TINY)
    assert res.returncode == 0, res.stderr[-3000:]
    sweep = tmp_path / "sweep"
    cells = summaries(sweep)
    # three cells plus the dense baseline the sweep lacked
    assert {s["method"] for s in cells.values()} == {"quant", "topk", "powersgd", "none"}
    assert all(s["status"] == "ok" for s in cells.values())
    for name in ("0", "1", "2"):
        run = sweep / name
        assert (run / ".hydra" / "config.yaml").is_file()
        rows = metrics(run)
        assert [r["round"] for r in rows] == [1, 2]
        assert cells[name]["uplink_bytes"] == rows[-1]["cum_uplink_bytes"]
        assert cells[name]["config_hash"]
    assert "quant" in res.stdout and "powersgd" in res.stdout  # the end-of-sweep table
    assert (sweep / "report" / "report.md").is_file()


@pytest.mark.slow
def test_resume_runs_only_missing_cells(tmp_path: Path) -> None:
    args = ["-m", "compressor=none,fp16,bf16", *TINY]
    assert fedbench(tmp_path, *args, sweep="first").returncode == 0
    # Simulate a sweep killed before bf16 finished: its cell never reached the store.
    store = tmp_path / "store"
    for entry in store.iterdir():
        s = json.loads((entry / "summary.json").read_text())
        if s["method"] == "bf16":
            import shutil

            shutil.rmtree(entry)
    res = fedbench(tmp_path, *args, sweep="second")
    assert res.returncode == 0, res.stderr[-3000:]
    second = summaries(tmp_path / "second")
    reused = {s["method"]: s.get("reused", False) for s in second.values()}
    assert reused == {"none": True, "fp16": True, "bf16": False}
    # a reused cell carries the very numbers of the run that made it
    first = summaries(tmp_path / "first")
    by_method = {s["method"]: k for k, s in first.items()}
    for k, s in second.items():
        assert metrics(tmp_path / "second" / k) == metrics(
            tmp_path / "first" / by_method[s["method"]]
        )
    # force recomputes everything
    res = fedbench(tmp_path, *args, "force=true", sweep="third")
    assert not any(s.get("reused") for s in summaries(tmp_path / "third").values())


@pytest.mark.slow
def test_failing_cell_leaves_others_finished(tmp_path: Path) -> None:
    res = fedbench(tmp_path, "-m", "compressor=quant", "compressor.bits=4,0", *TINY)
    assert res.returncode != 0
    cells = summaries(tmp_path / "sweep")
    status = sorted((s["status"], s.get("error") or "") for s in cells.values())
    assert [s for s, _ in status] == ["failed", "ok", "ok"]  # bits=4, bits=0, dense baseline
    assert "compressor.bits=0" in status[0][1]
    assert "failed" in res.stdout


def test_single_run_and_bad_value_exit_codes(tmp_path: Path) -> None:
    res = fedbench(tmp_path, "rounds=2", "local_epochs=1", "compressor=fp16")
    assert res.returncode == 0, res.stderr[-3000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "ok" and summary["final_accuracy"] > 0.1
    res = fedbench(tmp_path, "lr=-1")
    assert res.returncode != 0
    assert "lr=-1" in res.stderr + res.stdout


BAD = [
    ("compressor.bits", 0),
    ("compressor.ratio", 1.5),
    ("compressor.rank", 0),
    ("lr", -0.1),
    ("clients_per_round", 11),
    ("rounds", "many"),
    ("engine", "threads"),
]


def _base_cfg() -> dict:
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from fedbench.configs import config_dir

    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = OmegaConf.to_container(compose("config"), resolve=True)
    return cfg


@pytest.mark.parametrize(("key", "value"), BAD, ids=[k for k, _ in BAD])
def test_validation_names_key_value_and_allowed(key: str, value: object) -> None:
    cfg = _base_cfg()
    section, _, leaf = key.rpartition(".")
    (cfg[section] if section else cfg)[leaf] = value
    with pytest.raises(ValueError) as e:
        schema.validate(cfg, compressors=compressor_names())
    msg = str(e.value)
    assert key in msg and str(value) in msg and "must be" in msg
    assert "\n" not in msg


def test_validation_unknown_key_and_missing_npz_path() -> None:
    cfg = _base_cfg()
    cfg["learning_rate"] = 0.1
    with pytest.raises(ValueError, match="learning_rate"):
        schema.validate(cfg)
    cfg = _base_cfg()
    cfg["dataset"] = {"name": "npz", "path": None}
    with pytest.raises(ValueError, match=r"dataset\.path"):
        schema.validate(cfg)


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["parallel", "local_jobs"])
def test_launchers_give_the_same_numbers(tmp_path: Path, launcher: str) -> None:
    args = ["-m", "compressor=quant,topk", *TINY, "baseline=false", "force=true"]
    assert fedbench(tmp_path, *args, sweep="basic").returncode == 0
    res = fedbench(tmp_path, *args, f"hydra/launcher={launcher}", sweep=launcher)
    assert res.returncode == 0, res.stderr[-3000:]
    for cell in ("0", "1"):
        assert metrics(tmp_path / launcher / cell) == metrics(tmp_path / "basic" / cell)
