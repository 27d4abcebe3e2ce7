"""The report's sections, in order: each a function of the report's :class:`Context`
that writes its heading, text and table into the document, or nothing at all when the
runs give it nothing to say (client scaling with one client count, time to accuracy
under ``network=ideal``, per-client accuracy without per-client test data).

A section that has a table to keep puts it in ``ctx.csv`` (written as ``<name>.csv``).
The closing sections (figures onwards) are in :mod:`fedbench.report.appendix`, the
:class:`Context` in :mod:`fedbench.report.context`; both are re-exported here.
"""

from __future__ import annotations

from collections.abc import Callable

import pandas as pd

from fedbench.report import analysis, tables
from fedbench.report.appendix import (
    FIGURES,
    code,
    failed_runs,
    figure_section,
    kernel_throughput,
    loading_problems,
    partial_runs,
)
from fedbench.report.context import Context

__all__ = [
    "DEFINITIONS",
    "FIGURES",
    "PER_CLIENT",
    "SECTIONS",
    "Context",
    "client_scaling",
    "code",
    "failed_runs",
    "figure_section",
    "kernel_throughput",
    "loading_problems",
    "method_comparison",
    "overview",
    "partial_runs",
    "per_client_accuracy",
    "strategies",
    "time_to_accuracy",
    "tradeoff",
]


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


def overview(ctx: Context) -> None:
    sources = ", ".join(f"`{p}`" for p in ctx.paths)
    ctx.doc.para(
        f"{len(ctx.df)} runs from {sources}: {tables.status_counts(ctx.df)}. Numbers are "
        "measured; the tutorial's claims are quoted beside them. Files: `runs.csv` (a row "
        "per run), `rounds.csv` (a row per run and round), `table*.csv` (the tables as "
        "numbers)."
    )
    ctx.doc.heading("Definitions")
    ctx.doc.bullets(DEFINITIONS)


def method_comparison(ctx: Context) -> None:
    shown, data = tables.method_comparison(ctx.df, ctx.settings)
    ctx.numbered("Method comparison")
    ctx.doc.para("The tutorial's *Method Comparison* with measured numbers. " + tables.VERDICT_RULE)
    ctx.doc.table(shown)
    untested = tables.untested_claims(ctx.df)
    if untested:
        ctx.doc.para("Claims no run here tests: " + ", ".join(untested) + ".")
    ctx.csv["table1_method_comparison"] = data


def tradeoff(ctx: Context) -> None:
    shown, data = tables.tradeoff(ctx.df)
    ctx.numbered("Compression-accuracy trade-off")
    ctx.doc.para(
        "Runs binned by measured ratio with log10 bin edges at 10^0.5, 10^1.5, 10^2.5 "
        "(3.16x, 31.6x, 316x). Relative accuracy = final accuracy / dense run's final "
        "accuracy; extra rounds as defined above. Dense runs fall in the 1x bin."
    )
    ctx.doc.table(shown)
    ctx.csv["table2_tradeoff"] = data


def strategies(ctx: Context) -> None:
    local = analysis.local_sgd(ctx.df, ctx.runs.rounds, analysis.setting_columns(ctx.runs))
    shown, data = tables.strategies(ctx.df, local)
    ctx.numbered("Communication reduction strategies")
    ctx.doc.para(
        "Range over cells (of cell means). Families are the codecs' own (`codec_family` "
        "in `summary.json`, from `fedbench/compress/ids.py`): quantisation = quant qsgd "
        "terngrad sign natural fp16 bf16 majority_vote; sparsification = topk randk stc "
        "dgc; low-rank = powersgd svd; sketch; rotation = drive eden rotated_quant (run "
        "folders from before fedbench recorded it: sketch counted as sparsification). "
        "**Local SGD** = dense runs with `local_steps` K against the run of "
        "the same setting with the smallest K: compression = bytes per local SGD step of "
        "that run / of this one (how many times fewer bytes reach the same number of "
        "local updates); Δ accuracy = final accuracy minus that run's accuracy after the "
        "same number of local steps (* = it ran fewer rounds than that: compared at its "
        "last round, i.e. at equal bytes, not equal steps)."
    )
    ctx.doc.table(shown)
    ctx.csv["table3_strategies"] = data
    ctx.csv["local_sgd"] = local


def client_scaling(ctx: Context) -> None:
    """Only where the runs have more than one client count."""
    if "num_clients" not in ctx.df or ctx.df["num_clients"].nunique(dropna=True) < 2:
        return
    shown, data = tables.client_scaling(ctx.df, ctx.settings)
    ctx.numbered("Client scaling")
    ctx.doc.table(shown)
    ctx.csv["table4_client_scaling"] = data


def time_to_accuracy(ctx: Context) -> None:
    """Only where some run's network model costs time."""
    if not tables.has_sim_time(ctx.df):
        return
    shown, data = tables.time_to_accuracy(ctx.df, ctx.settings)
    ctx.numbered("Time to accuracy")
    ctx.doc.para(
        "Simulated wall-clock time under each run's network model (`network.*`: "
        "bandwidths, latency, client compute speed, stragglers; a round lasts until "
        "its slowest kept client has uploaded) until held-out accuracy first reaches "
        "the target defined above, and the uplink bytes sent by then. Means over the "
        "seeds that reached it (*Reached*); fastest first within each network."
    )
    ctx.doc.table(shown)
    ctx.csv["table5_time_to_accuracy"] = data


PER_CLIENT = {
    "client_accuracy_weighted": "Per-client accuracy, sample-weighted (%)",
    "client_accuracy_mean": "Mean over clients (%)",
    "client_accuracy_p10": "10th percentile client (%)",
}


def per_client_accuracy(ctx: Context) -> None:
    """Only where clients hold test data of their own (LEAF-style data sets)."""
    cols = [c for c in PER_CLIENT if c in ctx.df]
    ok = ctx.ok
    if not cols or not any(pd.to_numeric(ok[c], errors="coerce").notna().any() for c in cols):
        return
    shown, data = [], []
    for g in tables.cells(ok):
        first = g.iloc[0]
        row = {"Method": first["label"]} | {
            tables.short(c): analysis.show(first.get(c)) for c in ctx.settings
        }
        row["Global test accuracy (%)"] = analysis.fmt(g["accuracy_pct"], 2)
        numbers = {"label": first["label"]}
        for c in cols:
            values = 100 * pd.to_numeric(g[c], errors="coerce")
            row[PER_CLIENT[c]] = analysis.fmt(values, 2)
            m, s, n = analysis.mean_std_n(values)
            numbers |= {f"{c}_mean": m, f"{c}_std": s, f"{c}_n": n}
        shown.append(row)
        data.append(numbers)
    ctx.numbered("Per-client accuracy")
    ctx.doc.para(
        "The final global model scored on each client's own held-out data (clients that "
        "hold test samples): accuracy over all their samples (sample-weighted), the "
        "unweighted mean over clients, and the 10th-percentile client, the spread a "
        "single global number hides."
    )
    ctx.doc.table(pd.DataFrame(shown))
    ctx.csv["table6_per_client"] = pd.DataFrame(data)


SECTIONS: list[Callable[[Context], None]] = [
    overview,
    method_comparison,
    tradeoff,
    strategies,
    client_scaling,
    time_to_accuracy,
    per_client_accuracy,
    figure_section,
    kernel_throughput,
    partial_runs,
    failed_runs,
    code,
    loading_problems,
]
