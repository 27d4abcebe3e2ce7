"""Loading a whole sweep (every run folder under some paths) into pandas.

Loading never raises on a damaged run folder: what can be read is loaded and every
defect is listed in :attr:`Runs.problems`. Re-exported by :mod:`fedbench.results`.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedbench.results_config import read_compressor_choice, read_config
from fedbench.results_files import (
    CONFIG,
    EXECUTION_KEYS,
    METRICS,
    STATUSES,
    SUMMARY,
    read_metrics,
    read_summary,
)

if TYPE_CHECKING:  # pandas is imported lazily: the app imports this module on every run
    import pandas as pd

log = logging.getLogger("fedbench.results")  # the logger's name before the split


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
    """Codec name from a ``_target_`` class path (``...sparse.TopK`` -> ``topk``), for run
    folders whose summary does not name it: the classes of ``fedbench.compress.ids``
    (and their names in earlier versions, ``...quant.Quantize`` -> ``quant``); any other
    class by its lower-case name."""
    from fedbench.compress import ids  # torch-free

    if not isinstance(target, str) or not target:
        return None
    cls = target.rpartition(".")[2]
    return ids.name_of_class(cls) or cls.lower()


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
    rows, restart_problem = last_sequence(rows)
    if restart_problem:
        problems.append(f"{restart_problem} in {run_dir / METRICS}")
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
    fingerprint = (summary or {}).get("fingerprint")
    if isinstance(fingerprint, dict):  # which code, data and device made the run
        for k, v in fingerprint.items():
            row.setdefault(k, json.dumps(v, sort_keys=True) if isinstance(v, dict | list) else v)
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


def last_sequence(rows: list[dict]) -> tuple[list[dict], str | None]:
    """The rows of the last run written to a metrics file, and a problem if there were more.

    A run restarted into its own folder by an older fedbench appended a second round
    1..N: rounds must increase, so a round at or below the one before starts a new
    sequence. Only the last (the newest attempt, which ``summary.json`` belongs to) is
    kept, whatever its length.
    """
    start = 0
    for i in range(1, len(rows)):
        prev, cur = rows[i - 1].get("round"), rows[i].get("round")
        if _finite(prev) and _finite(cur) and cur <= prev:
            start = i
    if start == 0:
        return rows, None
    return rows[start:], (
        f"rounds restart at row {start + 1} (round {rows[start].get('round')} appears again): "
        f"kept the last sequence of {len(rows) - start} rows, dropped {start}"
    )


def _device_kind(device: Any) -> str:
    return str(device or "cpu").split(":", 1)[0].strip().lower() or "cpu"


def _rank(row: dict) -> int:
    """Which copy of a duplicated run to keep: finished and whole first."""
    return (row["status"] != "ok") + 2 * bool(row["partial"])


def _finite(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def load_runs(paths: Sequence[Path]) -> Runs:
    """Load every run folder under ``paths`` (searched recursively) into pandas.

    Never raises on a damaged run folder; raises ValueError only when a path does not
    exist. Runs with an identical config on the same kind of device (the same cell found
    twice, e.g. in a sweep folder and in the results store) are kept once; the duplicate
    is listed in problems. A metrics file holding more than one round 1..N keeps its last
    sequence (see :func:`last_sequence`), listed in problems. The summary's fingerprint
    (``source_sha``, ``fedbench_version``, ``data_sha``, ``user_modules``,
    ``device_kind``) becomes columns of ``runs``.
    """
    import pandas as pd

    if isinstance(paths, str | Path):
        paths = [paths]
    loaded: dict[str, tuple[dict, list[dict], list[str], list[str]]] = {}
    problems: list[str] = []
    for run_dir in find_run_dirs(paths):
        row, rows, probs = _load_one(run_dir)
        keys = row.pop("_config_keys")
        cell = {k: row.get(k) for k in keys if k not in EXECUTION_KEYS}
        # A CPU and a GPU run differ (random streams, numerics): never duplicates.
        cell["device_kind"] = _device_kind(row.get("device"))
        identity = json.dumps(cell, sort_keys=True, default=str)
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
