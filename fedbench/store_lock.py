"""The store's advisory cell locks: ``STORE/<key>.lock`` holds ``{"pid", "host", "started"}``.

A lock saves a second sweep from computing a cell that another process is computing;
correctness never depends on it (see :mod:`fedbench.store`, which re-exports these names
and waits on a held cell in :func:`fedbench.store.claim`). A lock whose owner is dead
(this host) or that is older than :data:`LOCK_STALE_S` is taken over.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedbench.results import shared_mode

log = logging.getLogger("fedbench.store")  # the store's logger, as before the split


# A lock older than this is taken over even when its owner cannot be checked (another
# host); on this host a lock whose pid is dead is taken over at once.
LOCK_STALE_S = 6 * 3600.0


_held: set[Lock] = set()  # locks of this process, released if it must end abruptly


@dataclass(frozen=True)
class Lock:
    """A claim on a cell in progress: ``STORE/<key>.lock``, ours while ``token`` matches."""

    path: Path
    token: str


def _read_lock(path: Path) -> dict[str, Any] | None:
    """The holder of a lock file; None when it is gone, {} when unreadable."""
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}
    return obj if isinstance(obj, dict) else {}


def _pid_alive(pid: Any) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: alive, someone else's
        return True
    return True


def _is_stale(holder: dict[str, Any], path: Path) -> bool:
    try:
        age = time.time() - float(holder.get("started") or path.stat().st_mtime)
    except (OSError, TypeError, ValueError):
        return True
    if not holder:  # unreadable: stale unless it is being written right now
        return age > 60
    if age > LOCK_STALE_S:
        return True
    return holder.get("host") == socket.gethostname() and not _pid_alive(holder.get("pid"))


def _describe(holder: dict[str, Any]) -> str:
    started = holder.get("started")
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)) if started else "?"
    return f"pid {holder.get('pid', '?')} on {holder.get('host', '?')} since {since}"


def try_lock(store_dir: str | Path, key: str) -> tuple[Lock | None, dict[str, Any] | None]:
    """Claim the cell ``key``: ``(lock, None)``, or ``(None, holder)`` if a live process has it.

    A lock whose owner is dead (this host) or older than :data:`LOCK_STALE_S` is taken
    over. Raises OSError when the store cannot be written.
    """
    root = Path(store_dir).expanduser()
    root.mkdir(parents=True, exist_ok=True)
    path = root / f"{key}.lock"
    holder: dict[str, Any] | None = None
    for _ in range(5):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, shared_mode(0o666))
        except FileExistsError:
            holder = _read_lock(path)
            if holder is None:
                continue  # released meanwhile: try again
            if not _is_stale(holder, path):
                return None, holder
            log.info("taking over the stale lock %s (%s)", path, _describe(holder))
            aside = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.stale")
            with contextlib.suppress(FileNotFoundError):
                os.rename(path, aside)
                if _read_lock(aside) != holder:  # a fresh lock, not the stale one: put back
                    with contextlib.suppress(FileExistsError):
                        os.link(aside, path)
                aside.unlink(missing_ok=True)
            continue
        token = uuid.uuid4().hex
        info = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump({**info, "token": token}, f)
        lock = Lock(path, token)
        _held.add(lock)
        return lock, None
    return None, holder or {}


def release(lock: Lock | None) -> None:
    """Remove the lock file if it is still ours. Never raises."""
    if lock is None:
        return
    _held.discard(lock)
    holder = _read_lock(lock.path)
    if holder and holder.get("token") == lock.token:
        with contextlib.suppress(OSError):
            lock.path.unlink()


def release_all() -> None:
    """Release every lock this process holds (a worker ending abruptly with its parent)."""
    for lock in list(_held):
        release(lock)
