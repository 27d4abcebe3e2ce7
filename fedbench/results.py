"""Per-run result files and loading a whole sweep into pandas.

A run folder holds (see DESIGN.md):

- ``.hydra/config.yaml``: the composed config (``.hydra/hydra.yaml`` names the chosen
  compressor variant under ``hydra.runtime.choices.compressor``);
- ``metrics.jsonl``: one JSON object per round, appended and flushed as the run goes,
  so a killed run leaves every finished round readable (the last line may be cut);
- ``summary.json``: written once, atomically, when the run ends.

The writer side (:class:`RunWriter`) is used by the app; the reader side
(:func:`load_runs`) by the report. Loading never raises on a damaged run folder: what
can be read is loaded and every defect is listed in :attr:`Runs.problems`.
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pandas is imported lazily: the app imports this module on every run
    import pandas as pd

log = logging.getLogger(__name__)

METRICS = "metrics.jsonl"
SUMMARY = "summary.json"
CONFIG = Path(".hydra") / "config.yaml"
HYDRA = Path(".hydra") / "hydra.yaml"

STATUSES = ("ok", "failed", "diverged", "partial")

# Config keys that say where or how a run is computed, never what is computed: two runs
# that differ only in these are the same experiment.
OUTPUT_KEYS = frozenset(
    {"store_dir", "force", "baseline", "device", "engine", "cohort_chunk", "threads"}
)

# Codec class name (lower case) -> family name, for run folders whose summary does not
# name the family. Families are the codecs' ``name`` attribute.
_CLASS_FAMILY = {
    "dense": "none",
    "none": "none",
    "fp16": "fp16",
    "bf16": "bf16",
    "quantize": "quant",
    "quant": "quant",
    "qsgd": "qsgd",
    "terngrad": "terngrad",
    "signsgd": "sign",
    "sign": "sign",
    "scaledsign": "sign",
    "natural": "natural",
    "topk": "topk",
    "randk": "randk",
    "stc": "stc",
    "dgc": "dgc",
    "powersgd": "powersgd",
    "svd": "svd",
}


def _json_default(obj: Any) -> Any:
    """Make numpy scalars, tensors of one element and paths JSON-serialisable."""
    if hasattr(obj, "item"):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON serialisable")


def write_json_atomic(path: Path, obj: Any) -> None:
    """Write ``obj`` as JSON to ``path`` so a reader sees the old file or the new one.

    Writes a temporary file in the same folder, fsyncs it, then ``os.replace``s it.
    NaN and inf are written as ``NaN``/``Infinity`` (Python's json), which the loader reads.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
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

    Creates ``run_dir`` and opens ``metrics.jsonl`` for append (a resumed run adds to it).
    """

    def __init__(self, run_dir: Path, *, fsync: bool = False) -> None:
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self._fsync = fsync  # true => each round survives a power cut too (slower)
        self._metrics = open(self.run_dir / METRICS, "a", encoding="utf-8")  # noqa: SIM115

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


def read_config(run_dir: Path) -> tuple[dict, str | None]:
    """The run's resolved ``.hydra/config.yaml`` as nested dicts, and a problem or None."""
    path = Path(run_dir) / CONFIG
    if not path.is_file():
        return {}, f"missing config {path}"
    from omegaconf import OmegaConf

    try:
        cfg = OmegaConf.load(path)
    except Exception as e:  # any parse error: a damaged file must not stop the report
        return {}, f"unreadable config {path}: {e}"
    try:
        return OmegaConf.to_container(cfg, resolve=True), None
    except Exception as e:  # an interpolation that cannot be resolved here
        return OmegaConf.to_container(cfg, resolve=False), f"unresolved config {path}: {e}"


def read_compressor_choice(run_dir: Path) -> str | None:
    """The compressor variant chosen on the command line (``quant8``), from hydra.yaml."""
    path = Path(run_dir) / HYDRA
    if not path.is_file():
        return None
    import yaml

    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
        choice = doc["hydra"]["runtime"]["choices"]["compressor"]
    except (OSError, yaml.YAMLError, KeyError, TypeError):
        return None
    return str(choice) if choice is not None else None


def flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts -> one dict with dotted keys; lists become JSON strings."""
    out: dict[str, Any] = {}
    if isinstance(obj, dict):
        for k, v in obj.items():
            key = f"{prefix}.{k}" if prefix else str(k)
            if isinstance(v, dict):
                out.update(flatten(v, key))
            elif isinstance(v, list | tuple):
                out[key] = json.dumps(v, default=str)
            else:
                out[key] = v
    return out


def family_of_target(target: Any) -> str | None:
    """Codec family from a ``_target_`` class path (``...quant.Quantize`` -> ``quant``)."""
    if not isinstance(target, str) or not target:
        return None
    cls = target.rpartition(".")[2].lower()
    return _CLASS_FAMILY.get(cls, cls)


def _is_run_dir(path: Path) -> bool:
    return (path / CONFIG).is_file() or (path / METRICS).is_file()


def find_run_dirs(paths: Sequence[Path]) -> list[Path]:
    """Every run folder under ``paths`` (a folder with .hydra/config.yaml or metrics.jsonl)."""
    found: dict[Path, None] = {}
    for root in paths:
        root = Path(root)
        if not root.exists():
            raise ValueError(f"results path {str(root)!r} does not exist")
        for dirpath, dirnames, _ in os.walk(root, followlinks=True):
            here = Path(dirpath)
            if _is_run_dir(here):
                found.setdefault(here.resolve(), None)
                dirnames[:] = []  # a run folder's own subfolders hold no runs
                continue
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
    return list(found)


@dataclass
class Runs:
    """A loaded set of runs.

    ``runs``: one row per run (``run_dir``, ``status``, ``partial``, ``method``,
    ``family``, the flattened config as dotted columns, the summary keys).
    ``rounds``: one row per run and round (``run_dir`` and the metrics keys).
    ``problems``: human-readable defects found while loading.
    ``config_columns``: the columns of ``runs`` that come from ``.hydra/config.yaml``.
    """

    runs: pd.DataFrame
    rounds: pd.DataFrame
    problems: list[str] = field(default_factory=list)
    config_columns: list[str] = field(default_factory=list)  # dotted keys from config.yaml


def _load_one(run_dir: Path) -> tuple[dict, list[dict], list[str]]:
    problems: list[str] = []
    cfg, cfg_problem = read_config(run_dir)
    if cfg_problem:
        problems.append(cfg_problem)
    config = flatten(cfg)
    rows, metric_problems = read_metrics(run_dir)
    problems += metric_problems
    summary = read_summary(run_dir)
    if summary is None:
        if (run_dir / SUMMARY).exists():
            problems.append(f"unreadable summary {run_dir / SUMMARY}")
        else:
            problems.append(f"missing summary in {run_dir} (run unfinished or killed)")
    truncated = any(p.startswith("truncated") for p in metric_problems)

    row: dict[str, Any] = {"run_dir": str(run_dir)}
    row.update(config)
    for k, v in (summary or {}).items():
        if isinstance(v, dict | list):
            v = json.dumps(v, default=str)
        row[k] = v
    status = str((summary or {}).get("status") or "partial")
    if status not in STATUSES:
        problems.append(f"unknown status {status!r} in {run_dir / SUMMARY}")
    row["status"] = status
    row["partial"] = summary is None or truncated
    row["rounds_logged"] = len(rows)
    if summary is None and rows:
        # What a killed run reached, so the partial-runs section can say so.
        accs = [r.get("test_accuracy") for r in rows if _finite(r.get("test_accuracy"))]
        row["final_accuracy"] = accs[-1] if accs else None
        row["uplink_bytes"] = rows[-1].get("cum_uplink_bytes")

    target = config.get("compressor._target_")
    family = (summary or {}).get("family") or family_of_target(target)
    method = (summary or {}).get("method") or read_compressor_choice(run_dir) or family
    row["family"] = family or "unknown"
    row["method"] = method or "unknown"
    row["_config_keys"] = list(config)
    for r in rows:
        r["run_dir"] = str(run_dir)
    return row, rows, problems


def _rank(row: dict) -> int:
    """Which copy of a duplicated run to keep: finished and whole first."""
    return (row["status"] != "ok") + 2 * bool(row["partial"])


def _finite(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def load_runs(paths: Sequence[Path]) -> Runs:
    """Load every run folder under ``paths`` (searched recursively) into pandas.

    Never raises on a damaged run folder; raises ValueError only when a path does not
    exist. Runs with an identical config (the same cell found twice, e.g. in a sweep
    folder and in the results store) are kept once; the duplicate is listed in problems.
    """
    import pandas as pd

    if isinstance(paths, str | Path):
        paths = [paths]
    loaded: dict[str, tuple[dict, list[dict], list[str], list[str]]] = {}
    problems: list[str] = []
    for run_dir in find_run_dirs(paths):
        row, rows, probs = _load_one(run_dir)
        keys = row.pop("_config_keys")
        identity = json.dumps(
            {k: row.get(k) for k in keys if k not in OUTPUT_KEYS}, sort_keys=True, default=str
        )
        if not keys:
            identity = str(run_dir)  # no config: cannot tell it apart from anything
        if identity in loaded:
            kept = loaded[identity][0]
            if _rank(row) < _rank(kept):
                loaded[identity], row = (row, rows, probs, keys), kept
            problems.append(
                f"duplicate run {row['run_dir']} (same config as "
                f"{loaded[identity][0]['run_dir']}); skipped"
            )
            continue
        loaded[identity] = (row, rows, probs, keys)
    run_rows: list[dict] = []
    round_rows: list[dict] = []
    config_keys: dict[str, None] = {}
    for row, rows, probs, keys in loaded.values():
        config_keys.update(dict.fromkeys(keys))
        problems += probs
        run_rows.append(row)
        round_rows += rows
    runs = pd.DataFrame(run_rows)
    if runs.empty:
        runs = pd.DataFrame(columns=["run_dir", "status", "partial", "method", "family"])
    rounds = pd.DataFrame(round_rows)
    for col in ("run_dir", "round"):
        if col not in rounds:
            rounds[col] = pd.Series(dtype=float if col == "round" else object)
    config_columns = [k for k in config_keys if k in runs.columns]
    log.info("loaded %d runs (%d rounds) from %s", len(runs), len(rounds), list(paths))
    return Runs(runs=runs, rounds=rounds, problems=problems, config_columns=config_columns)
