"""docs/extending.md, run: its `# file:` blocks become a user package in a temporary
working directory, and its commands run against it, so the page cannot go stale.

A piece plugs in from the user's own package without editing fedbench, under the basic
and the ``parallel`` launchers, from ``python -m fedbench`` and the ``fedbench`` script.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parents[1] / "docs" / "extending.md"
FILE_BLOCK = re.compile(r"```(?:python|yaml)\n# file: (\S+)\n(.*?)```", re.S)
BASH_BLOCK = re.compile(r"```bash\n(.*?)```", re.S)


def _package(root: Path) -> None:
    for m in FILE_BLOCK.finditer(DOC.read_text()):
        path = root / m.group(1)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(m.group(2))


def _commands() -> list[list[str]]:
    out = []
    for block in BASH_BLOCK.findall(DOC.read_text()):
        for cmd in block.replace("\\\n", " ").splitlines():
            if cmd.strip():
                out.append(shlex.split(cmd))
    return out


def _run(root: Path, argv: list[str], *extra: str) -> subprocess.CompletedProcess:
    if argv[:3] == ["python", "-m", "fedbench"]:
        argv = [sys.executable, *argv[1:]]
    elif argv[0] == "fedbench":  # the console script, next to this interpreter
        argv = [str(Path(sys.executable).with_name("fedbench")), *argv[1:]]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env |= {"MPLBACKEND": "Agg", "FEDBENCH_STORE": str(root / "store")}
    cmd = [*argv, "local_epochs=1", "hydra.run.dir=run", "hydra.sweep.dir=sweep", *extra]
    return subprocess.run(cmd, cwd=root, capture_output=True, text=True, env=env, timeout=600)


def _summaries(root: Path) -> list[dict]:
    return [
        json.loads(p.read_text())
        for p in sorted(root.rglob("summary.json"))
        if "report" not in p.parts and "store" not in p.parts
    ]


@pytest.fixture
def user_dir(tmp_path: Path) -> Path:
    _package(tmp_path)
    assert (tmp_path / "myfl" / "codecs.py").is_file()
    return tmp_path


def test_the_page_has_every_kind_of_piece() -> None:
    files = [m.group(1) for m in FILE_BLOCK.finditer(DOC.read_text())]
    for f in ("myfl/codecs.py", "myfl/models.py", "myfl/data.py", "myfl/strategies.py"):
        assert f in files
    assert len(_commands()) >= 6


@pytest.mark.parametrize("index", range(5))
def test_each_single_run_command_of_the_page(user_dir: Path, index: int) -> None:
    single = [c for c in _commands() if "-m" not in c[2:]]
    argv = single[index]
    res = _run(user_dir, argv)
    assert res.returncode == 0, res.stderr[-3000:]
    (summary,) = _summaries(user_dir / "run")
    assert summary["status"] == "ok", summary.get("error")
    targets = [a.split("=", 1)[1] for a in argv if "_target_=" in a]
    config = (user_dir / "run" / ".hydra" / "config.yaml").read_text()
    for t in targets:
        assert t in config  # the user's class, not a built-in, was configured and ran
        assert t.rsplit(".", 1)[0] in json.dumps(summary["fingerprint"]["user_modules"])


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["basic", "parallel"])
def test_all_four_pieces_in_one_sweep(user_dir: Path, launcher: str) -> None:
    (sweep,) = [c for c in _commands() if "-m" in c[2:]]
    res = _run(user_dir, sweep, f"hydra/launcher={launcher}")
    assert res.returncode == 0, res.stderr[-3000:]
    cells = _summaries(user_dir / "sweep")
    assert sum(s.get("family") is not None for s in cells) >= 2
    assert all(s["status"] == "ok" for s in cells), [s.get("error") for s in cells]
    mods = {m for s in cells for m in s["fingerprint"]["user_modules"]}
    assert {"myfl.codecs", "myfl.models", "myfl.data", "myfl.strategies"} <= mods


def test_the_console_script_imports_from_the_working_directory(user_dir: Path) -> None:
    script = Path(sys.executable).with_name("fedbench")
    if not script.exists():
        pytest.skip("the fedbench console script is not installed next to this Python")
    argv = ["fedbench", "model=custom", "model._target_=myfl.models.Wide", "rounds=2"]
    res = _run(user_dir, argv)
    assert res.returncode == 0, res.stderr[-3000:]
    assert _summaries(user_dir / "run")[0]["status"] == "ok"
    shutil.rmtree(user_dir / "run")
