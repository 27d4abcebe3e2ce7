"""The report's closing sections: figures, kernel throughput, partial and failed runs,
the code that produced the runs, loading problems. Listed in
:data:`fedbench.report.sections.SECTIONS`, which re-exports them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import pandas as pd

from fedbench.report import analysis, figures
from fedbench.report.context import Context


def _rel(path: str, roots: Sequence[Path]) -> str:
    for root in roots:
        try:
            return Path(path).relative_to(Path(root).resolve()).as_posix() or "."
        except ValueError:
            continue
    return path


FIGURES: list[tuple[Callable[..., Path | None], str, str]] = [
    (
        lambda ctx: figures.accuracy_vs_round(ctx.ok, ctx.runs.rounds, ctx.settings, ctx.figdir),
        "Held-out accuracy vs round",
        "no finished runs with metrics",
    ),
    (
        lambda ctx: figures.accuracy_vs_bytes(ctx.ok, ctx.runs.rounds, ctx.settings, ctx.figdir),
        "Held-out accuracy vs cumulative uplink bytes",
        "no cum_uplink_bytes in metrics",
    ),
    (
        lambda ctx: figures.accuracy_vs_time(ctx.ok, ctx.runs.rounds, ctx.settings, ctx.figdir),
        "Held-out accuracy vs simulated time",
        "skipped: simulated time is zero in every run (network=ideal)",
    ),
    (
        lambda ctx: figures.ratio_vs_accuracy(ctx.ok, ctx.settings, ctx.figdir),
        "Compression ratio vs final accuracy, Pareto frontier dashed",
        "no ratios",
    ),
    (
        lambda ctx: figures.client_scaling(ctx.ok, ctx.settings, ctx.figdir),
        "Client scaling",
        "skipped: one client count only",
    ),
]


def figure_section(ctx: Context) -> None:
    ctx.doc.heading("Figures")
    for draw, caption, why in FIGURES:
        png = draw(ctx)
        if png is None:
            ctx.doc.para(f"*{caption}*: {why}.")
        else:
            ctx.doc.image(png, caption)


def kernel_throughput(ctx: Context) -> None:
    """Only with ``--bench FILE`` (a pytest-benchmark JSON)."""
    if ctx.bench is None:
        return
    bench_df = figures.load_bench(Path(ctx.bench))
    ctx.doc.heading("Kernel throughput")
    png = figures.bench_throughput(bench_df, ctx.figdir)
    if png is None:
        ctx.doc.para(f"`{ctx.bench}` has no benchmarks with `extra_info.elements`.")
        return
    ctx.doc.image(png, "Compressor kernel throughput")
    shown = bench_df[["name", "elements", "median_s", "throughput_meps", "ratio"]]
    ctx.doc.table(shown.round({"median_s": 6, "throughput_meps": 1, "ratio": 2}))
    ctx.csv["bench"] = bench_df


def partial_runs(ctx: Context) -> None:
    partial = ctx.df.loc[ctx.df["partial"]]
    ctx.doc.heading("Partial runs")
    if partial.empty:
        ctx.doc.para("None: every run folder has a summary and whole metrics.")
        return
    ctx.doc.para(
        f"{len(partial)} run(s) loaded as far as they go (no `summary.json` or a cut "
        "`metrics.jsonl`); they are left out of the tables above."
    )
    ctx.doc.table(
        pd.DataFrame(
            {
                "Run": [_rel(p, ctx.paths) for p in partial["run_dir"]],
                "Method": partial["label"],
                "Rounds logged": partial["rounds_logged"],
                "Last accuracy (%)": (
                    100 * pd.to_numeric(partial["final_accuracy"], errors="coerce")
                ).round(2),
                "Status": partial["status"],
            }
        )
    )


def failed_runs(ctx: Context) -> None:
    bad = ctx.df.loc[ctx.df["status"].isin(["failed", "diverged"])]
    ctx.doc.heading("Failed and diverged runs")
    if bad.empty:
        ctx.doc.para("None.")
        return
    error = bad["error"] if "error" in bad else pd.Series("", index=bad.index)
    ctx.doc.table(
        pd.DataFrame(
            {
                "Run": [_rel(p, ctx.paths) for p in bad["run_dir"]],
                "Method": bad["label"],
                "Status": bad["status"],
                "Error": error.fillna("").astype(str).str.slice(0, 300),
            }
        )
    )


def code(ctx: Context) -> None:
    """Which fedbench produced the runs (their summaries' fingerprint)."""
    runs = ctx.runs.runs
    if "source_sha" not in runs or not runs["source_sha"].notna().any():
        return
    shas = runs["source_sha"].dropna().value_counts()
    versions = runs["fedbench_version"].dropna() if "fedbench_version" in runs else []
    line = f"fedbench {', '.join(sorted(set(versions)))}; source " if len(versions) else "source "
    line += ", ".join(f"`{sha[:12]}` ({n} runs)" for sha, n in shas.items())
    if len(shas) > 1:
        line += ". **More than one version of the code produced these runs.**"
    ctx.doc.heading("Code")
    ctx.doc.para(line)


def loading_problems(ctx: Context) -> None:
    ctx.doc.heading("Loading problems")
    mismatch = analysis.ratio_mismatches(ctx.df)
    problems = ctx.runs.problems + [f"ratio mismatch: {m}" for m in mismatch]
    if not problems:
        ctx.doc.para("None.")
        return
    root = str(Path(ctx.paths[0]).resolve())
    ctx.doc.bullets([p.replace(root, ".") for p in problems[:100]])
    if len(problems) > 100:
        ctx.doc.para(f"... and {len(problems) - 100} more.")
