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
        if not entry.is_symlink():  # .entries/ and locks: the published cells are links
            continue
        s = json.loads((entry / "summary.json").read_text())
        if s["method"] == "bf16":
            entry.unlink()
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


def _cell_cfg(tmp_path: Path, *overrides: str) -> dict:
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from fedbench.configs import config_dir

    with initialize_config_dir(config_dir=str(config_dir()), version_base="1.3"):
        cfg = compose("config", overrides=[*TINY, f"store_dir={tmp_path / 'store'}", *overrides])
    return OmegaConf.to_container(cfg, resolve=True)


def _rounds(run_dir: Path) -> list[int]:
    return [json.loads(x)["round"] for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_rerun_into_the_same_folder_never_duplicates_a_round(tmp_path: Path) -> None:
    """A killed sweep rerun into its own folder: the finished cell is reused, the killed
    one recomputed from round 1, and no round appears twice (nor in the report loader)."""
    from fedbench.app import run_cell
    from fedbench.results import load_runs

    sweep = tmp_path / "sweep"
    done, killed = _cell_cfg(tmp_path, "compressor=fp16"), _cell_cfg(tmp_path, "compressor=none")
    assert run_cell(done, sweep / "0", method="fp16")["status"] == "ok"
    # cell 1 was killed after its first round: a row, no summary, nothing in the store
    (sweep / "1").mkdir()
    (sweep / "1" / "metrics.jsonl").write_text(json.dumps({"round": 1, "test_accuracy": 0}) + "\n")
    first = (sweep / "0" / "metrics.jsonl").read_text()
    again = run_cell(done, sweep / "0", method="fp16")
    assert again.get("reused") and _rounds(sweep / "0") == [1, 2]
    assert (sweep / "0" / "metrics.jsonl").read_text() == first
    s = run_cell(killed, sweep / "1", method="none")
    assert s["status"] == "ok" and not s.get("reused") and _rounds(sweep / "1") == [1, 2]
    # force=true twice into one folder
    for _ in range(2):
        run_cell(done | {"force": True}, sweep / "0", method="fp16")
    assert _rounds(sweep / "0") == [1, 2]
    runs = load_runs([sweep])
    assert not runs.rounds.duplicated(["run_dir", "round"]).any()
    assert not [p for p in runs.problems if "restart" in p or "summary" in p]
    assert not list((tmp_path / "store").glob("*.lock"))  # every claim released


def test_two_processes_compute_a_cell_once(tmp_path: Path) -> None:
    """Two sweeps sharing a store: the second waits for the first's cell and reuses it."""
    script = (
        "import json, logging, sys; from pathlib import Path; from fedbench.app import run_cell; "
        "logging.basicConfig(level=logging.INFO); cfg = json.loads(sys.argv[1]); "
        "print(json.dumps(run_cell(cfg, Path(sys.argv[2]), method='fp16')))"
    )
    cfg = json.dumps(_cell_cfg(tmp_path, "compressor=fp16", "rounds=3"))
    procs = []
    for name in ("a", "b"):
        procs.append(
            subprocess.Popen(
                [sys.executable, "-c", script, cfg, str(tmp_path / name)],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
        if name == "a":  # b starts while a holds the cell (a then imports torch, runs)
            _wait_for_glob(tmp_path / "store", "*.lock")
    outs = [p.communicate(timeout=300) for p in procs]
    summaries = [json.loads(out.strip().splitlines()[-1]) for out, _ in outs]
    assert [s["status"] for s in summaries] == ["ok", "ok"]
    assert [bool(s.get("reused")) for s in summaries] == [False, True]
    assert "being computed by pid" in "".join(err for _, err in outs)


def _wait_for_glob(folder: Path, pattern: str, timeout: float = 120) -> None:
    import time

    deadline = time.monotonic() + timeout
    while not (folder.is_dir() and list(folder.glob(pattern))):
        assert time.monotonic() < deadline, f"no {pattern} in {folder}"
        time.sleep(0.05)


def _wait_for(path: Path, timeout: float = 120) -> None:
    import time

    deadline = time.monotonic() + timeout
    while not (path.exists() and path.stat().st_size > 0):
        assert time.monotonic() < deadline, f"{path} never got a line"
        time.sleep(0.1)


def test_ctrl_c_ends_in_one_line_with_130(tmp_path: Path) -> None:
    import signal

    cmd = [
        sys.executable,
        "-m",
        "fedbench",
        "rounds=100000",
        "local_epochs=1",
        f"store_dir={tmp_path / 'store'}",
        f"hydra.run.dir={tmp_path / 'run'}",
    ]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _wait_for(tmp_path / "run" / "metrics.jsonl")
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 130, err[-2000:]
    assert "Traceback" not in err and "interrupted" in err
    assert not (tmp_path / "run" / "summary.json").exists()  # partial, not final
    assert _rounds(tmp_path / "run")  # the finished rounds are kept
    store = tmp_path / "store"
    assert not [p for p in store.iterdir() if not p.name.startswith(".")]  # no entry, no lock


@pytest.mark.slow
def test_parallel_workers_end_with_their_parent(tmp_path: Path) -> None:
    import signal
    import time

    cmd = [
        sys.executable,
        "-m",
        "fedbench",
        "-m",
        "hydra/launcher=parallel",
        "compressor=fp16,bf16",
        "rounds=100000",
        "local_epochs=1",
        f"store_dir={tmp_path / 'store'}",
        f"hydra.sweep.dir={tmp_path / 'sweep'}",
    ]
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    store = tmp_path / "store"
    deadline = time.monotonic() + 180
    while len(list(store.glob("*.lock"))) < 2:
        assert time.monotonic() < deadline and p.poll() is None
        time.sleep(0.2)
    pids = [json.loads(f.read_text())["pid"] for f in store.glob("*.lock")]
    assert p.pid not in pids
    p.send_signal(signal.SIGKILL)
    p.wait()
    deadline = time.monotonic() + 30
    alive = pids
    while alive and time.monotonic() < deadline:
        time.sleep(0.2)
        alive = [pid for pid in pids if _alive(pid)]
    assert alive == []


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie (exited, not yet reaped by init) counts as ended
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False
