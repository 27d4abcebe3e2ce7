"""One run folder's files: their names, writing them as a run goes, reading them back.

The writer side (:class:`RunWriter`, :func:`write_json_atomic`) is used by the app; the
readers (:func:`read_summary`, :func:`read_metrics`) by the loader,
:mod:`fedbench.results_load`. Re-exported by :mod:`fedbench.results`.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

METRICS = "metrics.jsonl"
SUMMARY = "summary.json"
CONFIG = Path(".hydra") / "config.yaml"
HYDRA = Path(".hydra") / "hydra.yaml"

STATUSES = ("ok", "failed", "diverged", "partial")

# Config keys that say where or how a run is computed, never what is computed: two runs
# that differ only in these are the same experiment.
EXECUTION_KEYS = frozenset(
    {
        "store_dir",
        "force",
        "baseline",
        "device",
        "engine",
        "cohort_chunk",
        "threads",
        "max_memory_gb",
        "cohort_memory_mb",
    }
)


def _json_default(obj: Any) -> Any:
    """Make numpy scalars, tensors of one element and paths JSON-serialisable."""
    if hasattr(obj, "item"):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def shared_mode(mode: int) -> int:
    """``mode`` less the process umask: what ``open()`` would give a new file.

    ``mkstemp``/``mkdtemp`` create 0600/0700 whatever the umask, which makes a results
    folder or store on a shared filesystem unreadable by colleagues.
    """
    try:  # Linux: read the umask without changing it (os.umask would, for every thread)
        with open("/proc/self/status", encoding="ascii") as f:
            umask = int(next(x for x in f if x.startswith("Umask:")).split()[1], 8)
    except (OSError, StopIteration, ValueError, IndexError):
        umask = os.umask(0o022)
        os.umask(umask)
    return mode & ~umask


def write_json_atomic(path: Path, obj: Any) -> None:
    """Write ``obj`` as JSON to ``path`` so a reader sees the old file or the new one.

    Writes a temporary file in the same folder, fsyncs it, then ``os.replace``s it.
    NaN and inf are written as ``NaN``/``Infinity`` (Python's json), which the loader reads.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, shared_mode(0o666))  # mkstemp makes 0600; a shared folder needs umask
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(obj, f, indent=2, sort_keys=True, default=_json_default)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class RunWriter:
    """Writes one run folder: ``metrics.jsonl`` as rounds finish, ``summary.json`` at the end.

    Creates ``run_dir`` and starts ``metrics.jsonl`` afresh: a run restarted into the same
    folder (after a kill, or ``force=true`` twice) never appends a second round 1..N.
    A stale ``summary.json`` is removed first, so a crash cannot leave an old summary
    beside new metrics.
    """

    def __init__(self, run_dir: Path, *, fsync: bool = False) -> None:
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._fsync = fsync  # true => each round survives a power cut too (slower)
        (self.run_dir / SUMMARY).unlink(missing_ok=True)
        self._metrics = open(self.run_dir / METRICS, "w", encoding="utf-8")  # noqa: SIM115

    def append_round(self, row: dict) -> None:
        """Append one metrics row as a JSON line and flush it at once."""
        if self._metrics.closed:
            raise ValueError(f"RunWriter for {self.run_dir} is finished; cannot append rounds")
        self._metrics.write(json.dumps(row, sort_keys=True, default=_json_default) + "\n")
        self._metrics.flush()
        if self._fsync:
            os.fsync(self._metrics.fileno())

    def finish(self, summary: dict) -> None:
        """Write ``summary.json`` atomically and close the metrics file."""
        self.close()
        write_json_atomic(self.run_dir / SUMMARY, summary)

    def close(self) -> None:
        """Close the metrics file (idempotent); no summary is written."""
        if not self._metrics.closed:
            self._metrics.close()

    def __enter__(self) -> RunWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_summary(run_dir: Path) -> dict | None:
    """The run's ``summary.json`` as a dict, or None when it is missing or unreadable."""
    path = Path(run_dir) / SUMMARY
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return obj if isinstance(obj, dict) else None


def read_metrics(run_dir: Path) -> tuple[list[dict], list[str]]:
    """Rows of ``metrics.jsonl`` as far as they can be read, and the defects found.

    A last line cut by a kill is dropped (reported); an unreadable line in the middle
    is skipped (reported).
    """
    path = Path(run_dir) / METRICS
    rows: list[dict] = []
    problems: list[str] = []
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return rows, problems
    lines = text.split("\n")
    last = max((i for i, line in enumerate(lines) if line.strip()), default=-1)
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except ValueError:
            where = "truncated last line" if i == last else f"unreadable line {i + 1}"
            problems.append(f"{where} in {path}")
            continue
        if isinstance(obj, dict):
            rows.append(obj)
        else:
            problems.append(f"line {i + 1} of {path} is not a JSON object")
    return rows, problems
