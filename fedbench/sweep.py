"""End of a sweep: dense baselines, the comparison table, the report, the exit status.

Registered in ``conf/config.yaml`` as a Hydra callback. ``on_multirun_end`` runs in the
launching process under every launcher (basic, joblib, submitit), after all cells, and
works only from the files in the sweep folder, so it behaves the same everywhere.
"""

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from fedbench import schema, store
from fedbench.results import load_config_file

log = logging.getLogger("fedbench")


def _cell_configs(sweep_dir: Path) -> list[tuple[Path, dict[str, Any]]]:
    cells = []
    for cfg_file in sorted(sweep_dir.rglob(".hydra/config.yaml")):
        try:
            cfg = load_config_file(cfg_file)  # bounded: a hostile file cannot hang the sweep
        except Exception as e:  # an unreadable cell is the report's to list, not ours
            log.warning("skipping %s: %s", cfg_file, e)
            continue
        cells.append((cfg_file.parent.parent, cfg))
    return cells


def dense_config(cfg: dict[str, Any]) -> dict[str, Any]:
    """The same setting with every update sent dense, synchronously, by every client:
    the baseline of accuracy impact (edge strategies off, since they exist to save bytes).
    """
    from fedbench.compress import load_config

    dense = copy.deepcopy(cfg)
    dense["compressor"] = load_config("none")
    dense.update(schema.DENSE_SETTINGS)
    return dense


def ensure_baselines(sweep_dir: Path) -> list[Path]:
    """Give every setting of the sweep its dense run: from the sweep, the store, or run.

    Returns the folders of baselines added under ``sweep_dir/baseline/``.
    """
    from fedbench.app import run_cell

    cells = _cell_configs(sweep_dir)
    have = {store.config_hash(cfg) for _, cfg in cells}
    added = []
    for _, cfg in cells:
        try:
            dense = dense_config(cfg)
        except Exception as e:
            log.warning("no dense baseline for a cell: %s", e)
            continue
        key = store.config_hash(dense)
        if key in have:
            continue
        have.add(key)
        run_dir = sweep_dir / "baseline" / key
        (run_dir / ".hydra").mkdir(parents=True, exist_ok=True)
        OmegaConf.save(OmegaConf.create(dense), run_dir / ".hydra" / "config.yaml")
        log.info("dense baseline %s for accuracy impact", key)
        run_cell(dense, run_dir, method="none")
        added.append(run_dir)
    return added


def failed_cells(sweep_dir: Path) -> list[Path]:
    failed = []
    for summary in sorted(sweep_dir.rglob("summary.json")):
        try:
            status = json.loads(summary.read_text()).get("status")
        except (OSError, ValueError):
            status = None
        if status == "failed":
            failed.append(summary.parent)
    return failed


class SweepEnd(Callback):
    """Hydra callback: baselines, table, report, and a non-zero exit on failures."""

    def __init__(self, report: bool = True) -> None:
        self.report = report

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        from fedbench import app

        sweep_dir = Path(config.hydra.sweep.dir)
        if not sweep_dir.is_dir():
            return
        if config.get("baseline", True):
            ensure_baselines(sweep_dir)
        from fedbench.report import build_report, summary_table
        from fedbench.results import load_runs

        runs = load_runs([sweep_dir])
        print(summary_table(runs), flush=True)  # the sweep's answer, on stdout
        if self.report:
            out = build_report([sweep_dir], sweep_dir / "report", runs=runs)
            print(f"report: {out}", flush=True)
        failed = failed_cells(sweep_dir)
        if failed:
            print(f"{len(failed)} cell(s) failed: " + ", ".join(map(str, failed)), flush=True)
            app._failed.extend(map(str, failed))
