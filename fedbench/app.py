"""``python -m fedbench``: compose, validate, reuse finished cells, run, save.

One Hydra job is one cell. A cell never raises out of the job (Hydra would skip the
end-of-sweep callback): failures are caught and recorded as ``status: failed`` in the
cell's ``summary.json``, and the process exits non-zero at the end.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import sys
import time
import traceback
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from fedbench import schema, store
from fedbench.app_signals import _PARENT_ENV, INTERRUPTED, _watch_parent, interrupted
from fedbench.compress.label import label
from fedbench.configs import compressor_names, config_dir

log = logging.getLogger("fedbench")

__all__ = ["INTERRUPTED", "interrupted", "main", "run_cell"]

# Set when a cell failed in this process (single runs) or in the sweep (callback).
_failed: list[str] = []


def _finite_or_none(obj: Any) -> Any:
    """JSON has no NaN: non-finite floats become null (a diverged run's last loss)."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite_or_none(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite_or_none(v) for v in obj]
    return obj


class _Progress:
    """A bar over rounds on a terminal; a log line every ~10% of the run otherwise."""

    def __init__(self, rounds: int, label: str) -> None:
        self.rounds, self.label, self.bar = rounds, label, None
        if sys.stderr.isatty():
            from tqdm import tqdm

            self.bar = tqdm(total=rounds, desc=label, unit="round", leave=False)
        self.every = max(1, rounds // 10)

    def update(self, row: Mapping[str, Any]) -> None:
        acc = row.get("test_accuracy")
        if self.bar is not None:
            self.bar.update(1)
            if acc is not None:
                self.bar.set_postfix(acc=f"{acc:.3f}")
        elif row["round"] % self.every == 0 or row["round"] == self.rounds:
            log.info(
                "%s round %d/%d test_accuracy=%s uplink_bytes=%d",
                self.label,
                row["round"],
                self.rounds,
                "-" if acc is None else f"{acc:.4f}",
                row.get("cum_uplink_bytes", 0),
            )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _failure(cfg_hash: str, method: str, error: str, start: float) -> dict[str, Any]:
    return {
        "status": "failed",
        "error": error,
        "config_hash": cfg_hash,
        "method": method,
        "final_accuracy": None,
        "best_accuracy": None,
        "rounds_to_target": None,
        "uplink_bytes_to_target": None,
        "uplink_bytes": None,
        "downlink_bytes": None,
        "compression_ratio": None,
        "wall_seconds": None,
        "sim_seconds": None,
        "setup_seconds": time.perf_counter() - start,
    }


def _start_afresh(run_dir: Path) -> None:
    """Remove a previous attempt's result files, so none survives beside this one's."""
    from fedbench.results import METRICS, SUMMARY

    for name in (SUMMARY, METRICS):
        (run_dir / name).unlink(missing_ok=True)


def run_cell(
    cfg: dict[str, Any], run_dir: Path, *, method: str, on_round: Callable | None = None
) -> dict[str, Any]:
    """Validate, reuse from the store or run one cell, and write its files.

    ``cfg`` is the resolved config as a plain dict. Never raises an Exception: a failure
    becomes a summary with ``status: failed``. Returns the summary that was written.
    A (re)started cell starts its folder afresh. While it runs, the cell is locked in the
    store (``STORE/<key>.lock``); a cell another process is computing is waited for and
    reused. On KeyboardInterrupt the cell is left without a summary (a partial run, never
    stored) and the interrupt propagates.
    """
    from fedbench.fingerprint import fingerprint
    from fedbench.results import write_json_atomic

    start = time.perf_counter()
    run_dir.mkdir(parents=True, exist_ok=True)
    _start_afresh(run_dir)
    try:
        fp = fingerprint(cfg)
        key = store.config_hash(cfg, fp)
    except Exception as e:  # an unreadable data or source file
        log.error("%s: cannot fingerprint the cell: %s", method, e)
        summary = _failure("unknown", method, f"{type(e).__name__}: {e}", start)
        write_json_atomic(run_dir / "summary.json", summary)
        return summary
    try:
        schema.validate(cfg, compressors=compressor_names())
    except ValueError as e:
        log.error("config error: %s", e)
        summary = _failure(key, method, f"config error: {e}", start) | {"fingerprint": fp}
        write_json_atomic(run_dir / "summary.json", summary)
        return summary

    lock = None
    progress = None
    try:
        if cfg.get("force", False):
            try:  # recompute regardless, but still tell other sweeps this cell is busy
                lock, _ = store.try_lock(cfg["store_dir"], key)
            except OSError:
                lock = None
        else:
            entry = store.lookup(cfg["store_dir"], key)
            if entry is None:
                lock, entry = store.claim(cfg["store_dir"], key)
            summary = store.restore(entry, run_dir) if entry is not None else None
            if summary is not None:
                summary["method"] = method
                write_json_atomic(run_dir / "summary.json", summary)
                log.info("%s: reused finished cell %s from the store", method, key)
                return summary

        progress = _Progress(cfg["rounds"], method)
        return _compute(cfg, run_dir, key, fp, method, on_round, progress, start)
    finally:
        if progress is not None:
            progress.close()
        store.release(lock)


def _compute(
    cfg: dict[str, Any],
    run_dir: Path,
    key: str,
    fp: dict[str, Any],
    method: str,
    on_round: Callable | None,
    progress: _Progress,
    start: float,
) -> dict[str, Any]:
    """Run the cell's rounds, write its files and store it when final (run_cell's core)."""
    from fedbench.results import RunWriter, write_json_atomic

    writer = None
    try:
        # Heavy imports only once the cheap checks passed.
        import torch

        from fedbench.compress import from_config
        from fedbench.compress.label import innermost
        from fedbench.sim.engine import run, validate

        if cfg.get("threads"):
            torch.set_num_threads(int(cfg["threads"]))

        codec = from_config(cfg["compressor"])  # constructor checks: ranges, unknown keys
        validate(cfg)
        writer = RunWriter(run_dir)

        def record(row: dict[str, Any]) -> None:
            writer.append_round(_finite_or_none(row))
            progress.update(row)
            if on_round is not None:
                on_round(row)

        log.info("%s: running cell %s in %s", method, key, run_dir)
        summary = run(cfg, on_round=record)
        summary.update(
            config_hash=key,
            fingerprint=fp,
            method=method,
            family=innermost(codec).name,
            codec_family=getattr(codec, "family", None) or None,
            setup_seconds=time.perf_counter() - start - (summary.get("wall_seconds") or 0.0),
        )
        summary = _finite_or_none(summary)
        writer.finish(summary)
        if summary.get("status") in store.FINAL_STATUSES:
            store.save(cfg["store_dir"], key, run_dir, cfg, replace=bool(cfg.get("force")))
        if summary.get("status") == "diverged":
            log.warning("%s: diverged: %s", method, summary.get("error"))
        return summary
    except Exception as e:
        if isinstance(e, ValueError):
            log.error("%s: config error: %s", method, e)
            error = f"config error: {e}"
        else:
            log.error("%s: failed:\n%s", method, traceback.format_exc())
            error = f"{type(e).__name__}: {e}"
        summary = _failure(key, method, error, start) | {"fingerprint": fp}
        if writer is not None:
            writer.finish(summary)
        else:
            write_json_atomic(run_dir / "summary.json", summary)
        return summary
    finally:
        if writer is not None:
            writer.close()  # an interrupt leaves the rows written so far, and no summary


@hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="config")
def _job(cfg: DictConfig) -> dict[str, Any]:
    _watch_parent()
    hc = HydraConfig.get()
    resolved = OmegaConf.to_container(cfg, resolve=True)
    # The group choice, or the class when the command line overrode its _target_.
    method = label(resolved.get("compressor") or {}, hc.runtime.choices.get("compressor"))
    summary = run_cell(resolved, Path(hc.runtime.output_dir), method=method)
    if summary["status"] == "failed":
        _failed.append(str(hc.runtime.output_dir))
    if hc.mode == RunMode.RUN and summary["status"] != "failed":  # failures logged already
        log.info(
            "%s: status=%s final_accuracy=%s uplink_bytes=%s compression_ratio=%s",
            method,
            summary["status"],
            summary.get("final_accuracy"),
            summary.get("uplink_bytes"),
            summary.get("compression_ratio"),
        )
    return summary


def main() -> None:
    """Console entry point (``fedbench`` and ``python -m fedbench``).

    Exits 1 when a cell failed; on Ctrl-C, 130 with one line (no traceback): every
    finished cell is already in its folder and the store, the interrupted one is partial.
    """
    os.environ[_PARENT_ENV] = f"{socket.gethostname()}:{os.getpid()}"
    _user_modules_importable()
    try:  # what Hydra cannot compose (`compressor=null`) gets our one line, not a traceback
        schema.check_overrides(sys.argv[1:], schema.config_groups())
    except ValueError as e:
        sys.stderr.write(f"config error: {e}\n")
        sys.exit(1)
    try:
        _job()
    except KeyboardInterrupt:
        interrupted()
    if _failed:
        sys.exit(1)


def _user_modules_importable() -> None:
    """A user's ``_target_`` module in the working directory imports as it does under
    ``python -m fedbench``: the ``fedbench`` console script does not put the working
    directory on ``sys.path``, and launcher workers (joblib, submitit) start fresh
    interpreters, so it goes on ``sys.path`` here and on ``PYTHONPATH`` for them."""
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)
    paths = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    if cwd not in paths:
        os.environ["PYTHONPATH"] = os.pathsep.join([cwd, *paths])
