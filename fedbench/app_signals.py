"""How a sweep's processes end: Ctrl-C in the launching process, and the watchdog that
ends a sweep's worker processes with their parent, releasing their store locks.

Used by :mod:`fedbench.app` (which re-exports :func:`interrupted` and
:data:`INTERRUPTED`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import sys
import threading
import time

from fedbench import store

# "host:pid" of the process that launched the sweep, inherited by its worker processes.
_PARENT_ENV = "FEDBENCH_SWEEP_PARENT"
_watchdog_started = False
INTERRUPTED = "interrupted; finished cells are saved (rerun the same command to resume)"


def _watch_parent(poll_s: float = 1.0) -> None:
    """In a worker process of a sweep (joblib/loky, submitit local), exit when the parent does.

    A worker is a direct child of the launching process, which set ``_PARENT_ENV``. It
    ignores SIGINT (Ctrl-C reaches the whole process group; the parent ends the sweep in
    one line, and its workers with it) and on SIGTERM (joblib aborting) releases its store
    locks before it ends. A daemon thread polls ``os.getppid()``: once the parent is gone the worker is reparented
    and ends at once (``os._exit``: the cell is left partial, its lock taken over later as
    its pid is dead). Not started in the launching process itself, nor in cluster jobs
    (whose parent is the scheduler), so ``nohup fedbench ...`` outlives its shell.
    """
    global _watchdog_started
    parent = os.environ.get(_PARENT_ENV, "")
    host, _, pid = parent.rpartition(":")
    ppid = os.getppid()
    if _watchdog_started or host != socket.gethostname() or pid != str(ppid):
        return

    def terminated(signum: int, frame: object) -> None:  # the parent aborting the sweep
        store.release_all()
        os._exit(128 + signum)

    with contextlib.suppress(ValueError):  # Ctrl-C is the parent's to handle; we follow it
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, terminated)

    def watch() -> None:
        while os.getppid() == ppid:
            time.sleep(poll_s)
        store.release_all()
        os._exit(1)

    threading.Thread(target=watch, name="fedbench-parent-watchdog", daemon=True).start()
    _watchdog_started = True


def interrupted() -> None:
    """End the process after Ctrl-C: one line on stderr, exit status 130 (128 + SIGINT).

    Ends with ``os._exit``: every finished file is already on disk (rows are flushed per
    round, summaries written atomically), and the interpreter's exit handlers would wait
    for the sweep's worker processes (joblib's executor joins them), which end on their
    own once their parent is gone (:func:`_watch_parent`).
    """
    with contextlib.suppress(Exception):
        store.release_all()
        sys.stdout.flush()
        logging.shutdown()
    sys.stderr.write(f"\n{INTERRUPTED}\n")
    sys.stderr.flush()
    os._exit(130)
