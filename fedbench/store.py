"""The results store: finished cells indexed by the hash of what decides their numbers.

A cell's identity (:func:`config_hash`) is its resolved config minus output, store and
launcher settings (``schema.NOT_IDENTITY_KEYS``) and minus ``device``, plus
:func:`fedbench.fingerprint.fingerprint`: the fedbench version and source, the content
of the data files read, the source of user ``_target_`` modules and the device kind
(``cpu``/``cuda``). The same experiment launched from another sweep, launcher or folder
is found again and never recomputed; a change to any of those recomputes it. Layout::

    STORE/<key>                   -> .entries/<key>.<token>   (a symlink)
    STORE/.entries/<key>.<token>/  config.json  metrics.jsonl  summary.json
    STORE/<key>.lock              a cell in progress: {"pid", "host", "started"}

An entry is written in full under a fresh ``.entries`` name and published by an atomic
symlink swap, so a reader sees the old entry or the new one, never none and never half
of one; :func:`restore` re-resolves and retries if an entry is replaced mid-copy. Files
follow the umask, so a store on a shared filesystem is readable by colleagues.

The lock is advisory: it saves a second sweep from computing a cell that another
process is computing (it waits, then reuses). Correctness never depends on it: two
processes that both compute a cell store the same numbers.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fedbench.fingerprint import fingerprint
from fedbench.results import shared_mode
from fedbench.schema import NOT_IDENTITY_KEYS

# The locking half of the store, re-exported: ``store.try_lock``, ``store.release``, ...
from fedbench.store_lock import (
    LOCK_STALE_S,
    Lock,
    _describe,
    release,
    release_all,
    try_lock,
)

__all__ = [
    "ENTRIES",
    "FINAL_STATUSES",
    "LOCK_POLL_S",
    "LOCK_STALE_S",
    "LOCK_WAIT_S",
    "STORED_FILES",
    "Lock",
    "claim",
    "config_hash",
    "identity",
    "lookup",
    "release",
    "release_all",
    "restore",
    "save",
    "try_lock",
]

log = logging.getLogger(__name__)

STORED_FILES = ("metrics.jsonl", "summary.json")
# Statuses worth keeping: both are the deterministic outcome of the config. A failed
# cell (a bug, a missing file, a killed worker) is always tried again.
FINAL_STATUSES = ("ok", "diverged")
ENTRIES = ".entries"
# How long a cell waits for another process computing it before computing it anyway.
LOCK_WAIT_S = LOCK_STALE_S
LOCK_POLL_S = 1.0
_RESTORE_TRIES = 5
# Config keys replaced in the identity by the fingerprint's coarser view of them.
_FINGERPRINTED = ("device",)


def identity(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The part of a resolved config that decides the numbers."""
    return {k: v for k, v in cfg.items() if k not in NOT_IDENTITY_KEYS and k not in _FINGERPRINTED}


def config_hash(cfg: Mapping[str, Any], fp: Mapping[str, Any] | None = None) -> str:
    """The store key of a cell: its config identity and its fingerprint, hashed.

    ``fp`` is ``fingerprint(cfg)`` when the caller has it already.
    """
    doc = {"config": identity(cfg), "fingerprint": dict(fp if fp is not None else fingerprint(cfg))}
    blob = json.dumps(doc, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _final_summary(entry: Path) -> tuple[dict[str, Any] | None, str | None]:
    """The entry's summary if it is a finished, whole cell, else None and why (or no why)."""
    try:
        summary = json.loads((entry / "summary.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None, None
    except (OSError, ValueError) as e:
        return None, f"is unreadable ({e})"
    if not isinstance(summary, dict):
        return None, "has a summary.json that is not an object"
    if summary.get("status") not in FINAL_STATUSES:
        return None, None
    if not (entry / "metrics.jsonl").is_file():
        return None, "has no metrics.jsonl"
    return summary, None


def _resolve(root: Path, key: str) -> Path | None:
    """The folder ``STORE/<key>`` points to now (a symlink; a plain folder is read as is)."""
    link = root / key
    try:
        target = os.readlink(link)
    except FileNotFoundError:
        return None
    except OSError:  # not a symlink: an entry written by hand or by an older fedbench
        return link if link.is_dir() else None
    return root / target


def lookup(store_dir: str | Path, key: str) -> Path | None:
    """The store entry of a finished cell, or None. Never raises: a broken entry is a miss.

    An entry replaced while it is being checked is looked up again.
    """
    root = Path(store_dir).expanduser()
    try:
        for _ in range(_RESTORE_TRIES):
            entry = _resolve(root, key)
            if entry is None:
                return None
            summary, problem = _final_summary(entry)
            if summary is not None:
                return entry
            if _resolve(root, key) == entry:  # not replaced meanwhile: really broken
                if problem:
                    log.warning("store entry %s %s: treated as missing", entry, problem)
                return None
    except OSError as e:
        log.warning("cannot read the store %s: %s", root, e)
    return None


def _key_of(entry: Path) -> tuple[Path, str] | None:
    """(store root, key) of an entry folder, to look it up again."""
    if entry.parent.name == ENTRIES:
        return entry.parent.parent, entry.name.partition(".")[0]
    return None


def _copy_shared(src: Path, dst: Path) -> None:
    shutil.copyfile(src, dst)
    os.chmod(dst, shared_mode(0o666))


def save(
    store_dir: str | Path, key: str, run_dir: Path, cfg: Mapping[str, Any], *, replace: bool = False
) -> Path | None:
    """Copy a finished run into the store; returns the entry, or None if it could not.

    A valid entry already there is kept (the same identity gives the same numbers) unless
    ``replace`` (``force=true``); either way readers always find a whole entry.
    """
    root = Path(store_dir).expanduser()
    tmp: Path | None = None
    try:
        current = lookup(root, key)
        if current is not None and not replace:
            return current
        entries = root / ENTRIES
        entries.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{key}.", suffix=".tmp", dir=entries))
        os.chmod(tmp, shared_mode(0o777))
        for name in STORED_FILES:
            _copy_shared(run_dir / name, tmp / name)
        (tmp / "config.json").write_text(json.dumps(identity(cfg), indent=1, sort_keys=True))
        os.chmod(tmp / "config.json", shared_mode(0o666))
        name = f"{key}.{uuid.uuid4().hex[:12]}"
        os.rename(tmp, entries / name)
        tmp = entries / name
        current = lookup(root, key)  # another worker may have published it meanwhile
        if current is not None and not replace:
            shutil.rmtree(tmp, ignore_errors=True)
            return current
        old = _resolve(root, key)
        link_tmp = root / f".{name}.link"
        os.symlink(f"{ENTRIES}/{name}", link_tmp)
        try:
            os.replace(link_tmp, root / key)
        except OSError:  # a plain folder in the way (hand-made or old layout): move it aside
            link_tmp.unlink(missing_ok=True)
            os.rename(root / key, entries / f"{key}.old{uuid.uuid4().hex[:8]}")
            os.symlink(f"{ENTRIES}/{name}", root / key)
        if old is not None and old != tmp and old.parent.name == ENTRIES:
            shutil.rmtree(old, ignore_errors=True)  # readers of it re-resolve (restore)
    except OSError as e:
        # The store is read-only or full: the run itself is complete and saved in its own
        # folder, so this is not an error.
        log.warning("could not save %s to the store %s: %s", key, root, e)
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        return None
    return root / key


def restore(entry: Path, run_dir: Path) -> dict[str, Any] | None:
    """Copy a stored cell's metrics into ``run_dir``; returns its summary marked reused.

    Returns None (a miss: compute the cell) if the entry broke or vanished and no whole
    replacement appeared; an entry replaced mid-copy is looked up again and re-read.
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    where = _key_of(entry)
    error: Exception | None = None
    for _ in range(_RESTORE_TRIES):
        try:
            summary, _ = _final_summary(entry)
            if summary is not None:
                tmp = run_dir / ".metrics.jsonl.restore"
                shutil.copyfile(entry / "metrics.jsonl", tmp)
                os.replace(tmp, run_dir / "metrics.jsonl")
                summary["reused"] = True
                summary["reused_from"] = str(entry)
                return summary
        except OSError as e:
            error = e
        if where is None:
            break
        found = lookup(*where)
        if found is None:
            break
        entry = found
    log.warning("store entry %s vanished while being read (%s): treated as missing", entry, error)
    return None


def claim(
    store_dir: str | Path, key: str, *, wait_s: float | None = None
) -> tuple[Lock | None, Path | None]:
    """Claim a cell before computing it, or find it finished by the process that had it.

    Returns ``(lock, None)``: compute it (release the lock after); ``(None, entry)``:
    another process finished it, reuse the entry; ``(None, None)``: compute it without
    a lock (the store cannot be locked, or the holder outlived ``wait_s``, default
    :data:`LOCK_WAIT_S`). Waits while a live process holds the cell, saying who.
    """
    wait_s = LOCK_WAIT_S if wait_s is None else wait_s
    deadline = time.monotonic() + wait_s
    next_note = 0.0
    while True:
        try:
            lock, holder = try_lock(store_dir, key)
        except OSError as e:
            log.warning("cannot lock cell %s in the store %s: %s", key, store_dir, e)
            return None, lookup(store_dir, key)
        entry = lookup(store_dir, key)
        if lock is not None:
            if entry is not None:  # finished between the caller's lookup and our lock
                release(lock)
                return None, entry
            return lock, None
        if entry is not None:
            return None, entry
        now = time.monotonic()
        if now >= deadline:
            log.warning(
                "cell %s is still held by %s after %.0f s: computing it anyway",
                key,
                _describe(holder or {}),
                wait_s,
            )
            return None, None
        if now >= next_note:
            log.info(
                "cell %s is being computed by %s; waiting for it (up to %.0f s)",
                key,
                _describe(holder or {}),
                deadline - now,
            )
            next_note = now + 60.0
        time.sleep(LOCK_POLL_S)
