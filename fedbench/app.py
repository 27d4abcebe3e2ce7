"""``python -m fedbench``: compose, validate, reuse finished cells, run, save.

One Hydra job is one cell. A cell never raises out of the job (Hydra would skip the
end-of-sweep callback): failures are caught and recorded as ``status: failed`` in the
cell's ``summary.json``, and the process exits non-zero at the end.
"""

from __future__ import annotations

import logging
import math
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
from fedbench.configs import compressor_names, config_dir

log = logging.getLogger("fedbench")

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


def run_cell(
    cfg: dict[str, Any], run_dir: Path, *, method: str, on_round: Callable | None = None
) -> dict[str, Any]:
    """Validate, reuse from the store or run one cell, and write its files.

    ``cfg`` is the resolved config as a plain dict. Never raises: a failure becomes a
    summary with ``status: failed``. Returns the summary that was written.
    """
    from fedbench.results import RunWriter, write_json_atomic

    start = time.perf_counter()
    run_dir.mkdir(parents=True, exist_ok=True)
    key = store.config_hash(cfg)
    try:
        schema.validate(cfg, compressors=compressor_names())
    except ValueError as e:
        log.error("config error: %s", e)
        summary = _failure(key, method, f"config error: {e}", start)
        write_json_atomic(run_dir / "summary.json", summary)
        return summary

    if not cfg.get("force", False):
        entry = store.lookup(cfg["store_dir"], key)
        if entry is not None:
            summary = store.restore(entry, run_dir)
            summary["method"] = method
            write_json_atomic(run_dir / "summary.json", summary)
            log.info("%s: reused finished cell %s from the store", method, key)
            return summary

    writer = None
    progress = _Progress(cfg["rounds"], method)
    try:
        # Heavy imports only once the cheap checks passed.
        import torch

        from fedbench.compress import from_config
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
            method=method,
            family=getattr(getattr(codec, "inner", codec), "name", method),
            setup_seconds=time.perf_counter() - start - (summary.get("wall_seconds") or 0.0),
        )
        summary = _finite_or_none(summary)
        writer.finish(summary)
        if summary.get("status") in store.FINAL_STATUSES:
            store.save(cfg["store_dir"], key, run_dir, cfg)
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
        summary = _failure(key, method, error, start)
        if writer is not None:
            writer.finish(summary)
        else:
            write_json_atomic(run_dir / "summary.json", summary)
        return summary
    finally:
        progress.close()


@hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="config")
def _job(cfg: DictConfig) -> dict[str, Any]:
    hc = HydraConfig.get()
    method = hc.runtime.choices.get("compressor") or "unknown"
    resolved = OmegaConf.to_container(cfg, resolve=True)
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
    """Console entry point (``fedbench`` and ``python -m fedbench``)."""
    _job()
    if _failed:
        sys.exit(1)
