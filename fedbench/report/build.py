"""Assemble a report: load runs, derive numbers, then each section of
``fedbench.report.sections`` in turn (a section with nothing to say leaves itself out),
and write the tables as CSV, the figures, markdown and HTML."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from fedbench.report import analysis, sections, tables
from fedbench.report.render import Document, markdown_table, to_html, to_markdown
from fedbench.report.sections import Context
from fedbench.results import Runs, load_runs

log = logging.getLogger(__name__)


def summary_table(runs: Runs) -> str:
    """A compact markdown table, a row per cell: method + params, clients, final accuracy
    (mean ± std over seeds), Δ vs dense, uplink MB, ratio, rounds to target, status."""
    if runs.runs.empty:
        return "(no runs found)"
    df = analysis.derive(runs)
    return markdown_table(tables.summary_rows(df, _settings(df, runs)))


def _settings(df: pd.DataFrame, runs: Runs) -> list[str]:
    return analysis.splitting_settings(df, analysis.setting_columns(runs))


def build_report(
    paths: Sequence[Path],
    out: Path | None = None,
    bench: Path | None = None,
    *,
    runs: Runs | None = None,
) -> Path:
    """Write the report of every run under ``paths`` into ``out``; return report.md's path.

    ``out`` defaults to ``paths[0]/report``. Writes report.md, report.html, runs.csv,
    rounds.csv, one CSV per table and the figures (PNG + SVG). ``runs``: the runs of
    ``paths`` already loaded with :func:`fedbench.results.load_runs` (the end of a sweep
    has them), so they are not read twice. Damaged or unfinished runs are listed, never
    fatal; ValueError if a path does not exist or ``bench`` is unreadable.
    """
    paths = [Path(p) for p in ([paths] if isinstance(paths, str | Path) else paths)]
    if not paths:
        raise ValueError("build_report needs at least one results folder")
    for p in paths:
        if not p.is_dir():
            raise ValueError(f"results path {str(p)!r} does not exist or is not a folder")
    out = Path(out) if out is not None else paths[0] / "report"
    out.mkdir(parents=True, exist_ok=True)
    figdir = out / "figures"
    if runs is None:
        runs = load_runs(paths)
    # A report folder inside DIR holds no run folders, so rebuilding it is idempotent.
    df = analysis.derive(runs) if not runs.runs.empty else None
    doc = Document()
    doc.heading("fedbench report", 1)
    sources = ", ".join(f"`{p}`" for p in paths)
    if df is None:
        doc.para(f"No run folders found under {sources}.")
        return _write(doc, out, runs, None)

    _remove_stale(out)
    ctx = Context(doc, df, runs, paths, out, figdir, bench, _settings(df, runs))
    for section in sections.SECTIONS:
        section(ctx)
    for name, table in ctx.csv.items():
        portable_paths(table).to_csv(out / f"{name}.csv", index=False)
    return _write(doc, out, runs, df)


PATH_COLUMNS = ("run_dir", "dense_run", "run_dirs")


def _remove_stale(out: Path) -> None:
    """Delete what an earlier build of this report wrote and this one may not (a section
    left out now: client scaling with one client count), so no stale table survives."""
    stale = [*out.glob("table[0-9]*_*.csv"), out / "local_sgd.csv", out / "bench.csv"]
    stale += [*(out / "figures").glob("*.png"), *(out / "figures").glob("*.svg")]
    for f in stale:
        f.unlink(missing_ok=True)


def portable_paths(df: pd.DataFrame) -> pd.DataFrame:
    """``df`` with run folders under the working directory written relative to it, so a
    committed CSV does not carry the absolute paths of the machine that built it."""
    prefix = os.path.join(os.getcwd(), "")
    cols = [c for c in PATH_COLUMNS if c in df]
    if not cols:
        return df
    out = df.copy()
    for c in cols:
        out[c] = out[c].map(lambda v: v.replace(prefix, "") if isinstance(v, str) else v)
    return out


def _write(doc: Document, out: Path, runs: Runs, df: pd.DataFrame | None) -> Path:
    portable_paths(df if df is not None else runs.runs).to_csv(out / "runs.csv", index=False)
    portable_paths(runs.rounds).to_csv(out / "rounds.csv", index=False)
    md = out / "report.md"
    md.write_text(to_markdown(doc, out), encoding="utf-8")
    (out / "report.html").write_text(to_html(doc, "fedbench report"), encoding="utf-8")
    log.info("report written to %s", os.fspath(md))
    return md
