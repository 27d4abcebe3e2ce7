"""The results store: finished cells indexed by the hash of their resolved config.

A cell's identity is its resolved config minus output, store and launcher settings
(``schema.OUTPUT_KEYS``), so the same experiment launched from another sweep, another
launcher or another folder is found again and never recomputed. Layout::

    STORE/<config_hash>/config.json  metrics.jsonl  summary.json

Entries are written to a temporary folder and renamed into place, so a killed run
never leaves a half-written entry and parallel workers never see one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fedbench.schema import OUTPUT_KEYS

log = logging.getLogger(__name__)

STORED_FILES = ("metrics.jsonl", "summary.json")
# Statuses worth keeping: both are the deterministic outcome of the config. A failed
# cell (a bug, a missing file, a killed worker) is always tried again.
FINAL_STATUSES = ("ok", "diverged")


def identity(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The part of a resolved config that decides the numbers."""
    return {k: v for k, v in cfg.items() if k not in OUTPUT_KEYS}


def config_hash(cfg: Mapping[str, Any]) -> str:
    blob = json.dumps(identity(cfg), sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def lookup(store_dir: str | Path, key: str) -> Path | None:
    """The store entry of a finished cell, or None."""
    entry = Path(store_dir).expanduser() / key
    try:
        summary = json.loads((entry / "summary.json").read_text())
    except (OSError, ValueError):
        return None
    if summary.get("status") in FINAL_STATUSES and (entry / "metrics.jsonl").is_file():
        return entry
    return None


def save(store_dir: str | Path, key: str, run_dir: Path, cfg: Mapping[str, Any]) -> Path | None:
    """Copy a finished run into the store (atomically). Returns the entry, or None."""
    root = Path(store_dir).expanduser()
    entry = root / key
    tmp: Path | None = None
    try:
        root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{key}.", dir=root))
        for name in STORED_FILES:
            shutil.copy2(run_dir / name, tmp / name)
        (tmp / "config.json").write_text(json.dumps(identity(cfg), indent=1, sort_keys=True))
        if entry.exists():  # a stale or failed entry: replace it
            shutil.rmtree(entry, ignore_errors=True)
        os.replace(tmp, entry)
    except OSError as e:
        # Another worker stored the same cell first, or the store is read-only: the run
        # itself is complete and saved in its own folder, so this is not an error.
        log.warning("could not save %s to the store %s: %s", key, root, e)
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        return None
    return entry


def restore(entry: Path, run_dir: Path) -> dict[str, Any]:
    """Copy a stored cell's files into ``run_dir``; returns its summary marked reused."""
    run_dir.mkdir(parents=True, exist_ok=True)
    shutil.copy2(entry / "metrics.jsonl", run_dir / "metrics.jsonl")
    summary = json.loads((entry / "summary.json").read_text())
    summary["reused"] = True
    summary["reused_from"] = str(entry)
    return summary
