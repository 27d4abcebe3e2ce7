"""Reports: the tutorial's tables and plots rebuilt from measured run folders.

Reads result files only (``fedbench.results``); never imports torch or ``fedbench.sim``.
pandas and matplotlib are imported on first use, so ``import fedbench.report`` is cheap.

- :func:`build_report` writes report.md, report.html, CSVs and figures for a folder of runs;
- :func:`summary_table` is the compact table the app prints at the end of a sweep.

Command line: ``python -m fedbench.report DIR... [--out OUT] [--bench BENCH.json]``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fedbench.results import Runs

__all__ = ["build_report", "summary_table"]


def build_report(
    paths: Sequence[Path],
    out: Path | None = None,
    bench: Path | None = None,
    *,
    runs: Runs | None = None,
) -> Path:
    """Write the report of every run under ``paths`` into ``out`` (default
    ``paths[0]/report``); ``bench`` is a pytest-benchmark JSON. ``runs``: the runs of
    ``paths`` already loaded by :func:`fedbench.results.load_runs` (e.g. for
    :func:`summary_table` just before), so they are not read twice. Returns report.md's
    path."""
    from fedbench.report.build import build_report as _build

    return _build(paths, out, bench, runs=runs)


def summary_table(runs: Runs) -> str:
    """A markdown table, a row per cell: method (+ the codec parameters that vary), clients
    and the other settings that split cells, final accuracy mean ± std over seeds,
    Δ accuracy vs dense, uplink MB, measured ratio, rounds to target, status."""
    from fedbench.report.build import summary_table as _summary

    return _summary(runs)
