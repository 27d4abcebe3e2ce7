"""Assemble a report: load runs, derive numbers, write tables, figures, markdown, HTML."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from fedbench.report import analysis, figures, tables
from fedbench.report.render import Document, markdown_table, to_html, to_markdown
from fedbench.results import Runs, load_runs

log = logging.getLogger(__name__)

DEFINITIONS = [
    "**Method**: the compressor chosen on the command line (`compressor=quant8`), plus only "
    "the codec parameters that differ between runs of that method here (`quant bits=4`) "
    "and `+EF` where error feedback is on for some of them only; every parameter is in "
    "`runs.csv` (`params` and the `compressor.*` columns). Settings that differ between "
    "runs (clients, network, partition, ...) get columns of their own: the fewest that "
    "tell the cells apart.",
    "**Setting** of a run: its config minus the compressor group and minus keys that do not "
    "change what is trained (`store_dir force baseline device engine cohort_chunk threads "
    "target_accuracy eval_every`). Runs of one setting and codec over seeds form a **cell**; "
    "every table cell is mean ± sample std over seeds, with n the number of runs.",
    "**Dense run** of a run: the finished run of the same setting *and seed* whose codec is "
    "`none` (fp32) without error feedback, every update sent synchronously with the edge "
    "strategies off (`downlink=none`, `aggregation=sync`, no lazy uploads, no adaptive "
    "compression): the baseline the sweep adds. Without one, the `none` run of exactly "
    "the same setting.",
    "**Measured ratio**: dense uplink bytes / wire uplink bytes, from totals "
    "(`summary.json` `compression_ratio`; when absent, the dense run's uplink bytes / "
    "this run's). Wire bytes are `len()` of the messages actually sent.",
    "**Δ accuracy**: final held-out accuracy minus that of the dense run, in percentage "
    "points (negative = worse than dense).",
    "**Converged**: the first round whose held-out accuracy reaches `target_accuracy` when "
    f"the config sets one, else {analysis.DEFAULT_TARGET_FRACTION:.0%} of the dense run's "
    "final accuracy. *Extra rounds* = (rounds − dense rounds) / dense rounds, over seeds "
    "where both reached the target.",
]


def _rel(path: str, roots: Sequence[Path]) -> str:
    for root in roots:
        try:
            return Path(path).relative_to(Path(root).resolve()).as_posix() or "."
        except ValueError:
            continue
    return path


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

    counts = tables.status_counts(df)
    doc.para(
        f"{len(df)} runs from {sources}: {counts}. Numbers are measured; the tutorial's "
        "claims are quoted beside them. Files: `runs.csv` (a row per run), `rounds.csv` "
        "(a row per run and round), `table*.csv` (the tables as numbers)."
    )
    doc.heading("Definitions")
    doc.bullets(DEFINITIONS)
    settings = _settings(df, runs)
    mismatch = analysis.ratio_mismatches(df)

    t1_shown, t1 = tables.method_comparison(df, settings)
    doc.heading("1. Method comparison")
    doc.para("The tutorial's *Method Comparison* with measured numbers. " + tables.VERDICT_RULE)
    doc.table(t1_shown)
    untested = tables.untested_claims(df)
    if untested:
        doc.para("Claims no run here tests: " + ", ".join(untested) + ".")

    t2_shown, t2 = tables.tradeoff(df)
    doc.heading("2. Compression-accuracy trade-off")
    doc.para(
        "Runs binned by measured ratio with log10 bin edges at 10^0.5, 10^1.5, 10^2.5 "
        "(3.16x, 31.6x, 316x). Relative accuracy = final accuracy / dense run's final "
        "accuracy; extra rounds as defined above. Dense runs fall in the 1x bin."
    )
    doc.table(t2_shown)

    local = analysis.local_sgd(df, runs.rounds, analysis.setting_columns(runs))
    t3_shown, t3 = tables.strategies(df, local)
    doc.heading("3. Communication reduction strategies")
    doc.para(
        "Range over cells (of cell means). Families: quantisation = quant qsgd terngrad "
        "sign natural fp16 bf16; sparsification = topk randk stc dgc sketch; low-rank = "
        "powersgd svd. **Local SGD** = dense runs with `local_steps` K against the run of "
        "the same setting with the smallest K: compression = bytes per local SGD step of "
        "that run / of this one (how many times fewer bytes reach the same number of "
        "local updates); Δ accuracy = final accuracy minus that run's accuracy after the "
        "same number of local steps (* = it ran fewer rounds than that: compared at its "
        "last round, i.e. at equal bytes, not equal steps)."
    )
    doc.table(t3_shown)

    t4_shown, t4 = tables.client_scaling(df, settings)
    doc.heading("4. Client scaling")
    doc.table(t4_shown)

    t5 = None
    if tables.has_sim_time(df):
        t5_shown, t5 = tables.time_to_accuracy(df, settings)
        doc.heading("5. Time to accuracy")
        doc.para(
            "Simulated wall-clock time under each run's network model (`network.*`: "
            "bandwidths, latency, client compute speed, stragglers; a round lasts until "
            "its slowest kept client has uploaded) until held-out accuracy first reaches "
            "the target defined above, and the uplink bytes sent by then. Means over the "
            "seeds that reached it (*Reached*); fastest first within each network."
        )
        doc.table(t5_shown)

    doc.heading("Figures")
    ok = df.loc[(df["status"] == "ok") & ~df["partial"]]
    figs = [
        (
            figures.accuracy_vs_round(ok, runs.rounds, settings, figdir),
            "Held-out accuracy vs round",
            "no finished runs with metrics",
        ),
        (
            figures.accuracy_vs_bytes(ok, runs.rounds, settings, figdir),
            "Held-out accuracy vs cumulative uplink bytes",
            "no cum_uplink_bytes in metrics",
        ),
        (
            figures.accuracy_vs_time(ok, runs.rounds, settings, figdir),
            "Held-out accuracy vs simulated time",
            "skipped: simulated time is zero in every run (network=ideal)",
        ),
        (
            figures.ratio_vs_accuracy(ok, settings, figdir),
            "Compression ratio vs final accuracy, Pareto frontier dashed",
            "no ratios",
        ),
        (
            figures.client_scaling(ok, settings, figdir),
            "Client scaling",
            "skipped: one client count only",
        ),
    ]
    for png, caption, why in figs:
        if png is None:
            doc.para(f"*{caption}*: {why}.")
        else:
            doc.image(png, caption)

    if bench is not None:
        bench_df = figures.load_bench(Path(bench))
        doc.heading("Kernel throughput")
        png = figures.bench_throughput(bench_df, figdir)
        if png is None:
            doc.para(f"`{bench}` has no benchmarks with `extra_info.elements`.")
        else:
            doc.image(png, "Compressor kernel throughput")
            shown = bench_df[["name", "elements", "median_s", "throughput_meps", "ratio"]]
            doc.table(shown.round({"median_s": 6, "throughput_meps": 1, "ratio": 2}))
            bench_df.to_csv(out / "bench.csv", index=False)

    _problem_sections(doc, df, runs, paths, mismatch)
    for name, table in [
        ("table1_method_comparison", t1),
        ("table2_tradeoff", t2),
        ("table3_strategies", t3),
        ("table4_client_scaling", t4),
        ("local_sgd", local),
        ("table5_time_to_accuracy", t5),
    ]:
        if table is None:
            continue
        portable_paths(table).to_csv(out / f"{name}.csv", index=False)
    return _write(doc, out, runs, df)


PATH_COLUMNS = ("run_dir", "dense_run", "run_dirs")


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


def _problem_sections(doc: Document, df: pd.DataFrame, runs: Runs, paths, mismatch) -> None:
    partial = df.loc[df["partial"]]
    doc.heading("Partial runs")
    if partial.empty:
        doc.para("None: every run folder has a summary and whole metrics.")
    else:
        doc.para(
            f"{len(partial)} run(s) loaded as far as they go (no `summary.json` or a cut "
            "`metrics.jsonl`); they are left out of the tables above."
        )
        doc.table(
            pd.DataFrame(
                {
                    "Run": [_rel(p, paths) for p in partial["run_dir"]],
                    "Method": partial["label"],
                    "Rounds logged": partial["rounds_logged"],
                    "Last accuracy (%)": (
                        100 * pd.to_numeric(partial["final_accuracy"], errors="coerce")
                    ).round(2),
                    "Status": partial["status"],
                }
            )
        )
    bad = df.loc[df["status"].isin(["failed", "diverged"])]
    doc.heading("Failed and diverged runs")
    if bad.empty:
        doc.para("None.")
    else:
        error = bad["error"] if "error" in bad else pd.Series("", index=bad.index)
        doc.table(
            pd.DataFrame(
                {
                    "Run": [_rel(p, paths) for p in bad["run_dir"]],
                    "Method": bad["label"],
                    "Status": bad["status"],
                    "Error": error.fillna("").astype(str).str.slice(0, 300),
                }
            )
        )
    doc.heading("Loading problems")
    problems = runs.problems + [f"ratio mismatch: {m}" for m in mismatch]
    if not problems:
        doc.para("None.")
    else:
        doc.bullets([p.replace(str(Path(paths[0]).resolve()), ".") for p in problems[:100]])
        if len(problems) > 100:
            doc.para(f"... and {len(problems) - 100} more.")


def _write(doc: Document, out: Path, runs: Runs, df: pd.DataFrame | None) -> Path:
    portable_paths(df if df is not None else runs.runs).to_csv(out / "runs.csv", index=False)
    portable_paths(runs.rounds).to_csv(out / "rounds.csv", index=False)
    md = out / "report.md"
    md.write_text(to_markdown(doc, out), encoding="utf-8")
    (out / "report.html").write_text(to_html(doc, "fedbench report"), encoding="utf-8")
    log.info("report written to %s", os.fspath(md))
    return md
