"""Held-out accuracy against rounds, cumulative uplink bytes and simulated time: the mean
over seeds, a band of one standard deviation."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pandas as pd

from fedbench.report.analysis import cum_sim_seconds
from fedbench.report.figures.style import (
    MARKER_SPACING,
    _legend,
    _panel_groups,
    _panels,
    _save,
    baseline_labels,
    line_label,
    setting_title,
    si_bytes,
    split_settings,
    styles,
)


def _curves(
    ok: pd.DataFrame,
    rounds: pd.DataFrame,
    settings: list[str],
    out: Path,
    stem: str,
    x_of: Callable[[pd.DataFrame], pd.Series],
    xlabel: str,
    title: str,
    logx: bool = False,
    xticks: Callable[[float, object], str] | None = None,
) -> Path | None:
    if ok.empty or rounds.empty or "test_accuracy" not in rounds:
        return None
    panel_cols, line_cols = split_settings(settings)
    names = {k: line_label(g, line_cols).rsplit(" (n=", 1)[0] for k, g in ok.groupby("cell_key")}
    look = styles(sorted(set(names.values())), baseline_labels(ok, names, "cell_key"))
    groups = _panel_groups(ok, panel_cols)
    fig, axes = _panels(len(groups), title)
    for ax, g in zip(axes, groups, strict=True):
        for key, cell in sorted(g.groupby("cell_key"), key=lambda kv: names[kv[0]]):
            r = rounds.loc[rounds["run_dir"].isin(cell["run_dir"])].copy()
            r["x"] = x_of(r)
            r["acc"] = 100.0 * pd.to_numeric(r["test_accuracy"], errors="coerce")
            r = r.dropna(subset=["acc", "x"])
            if r.empty:
                continue
            agg = r.groupby("round").agg(x=("x", "mean"), m=("acc", "mean"), s=("acc", "std"))
            agg["s"] = agg["s"].fillna(0.0)
            st = look[names[key]]
            ax.plot(
                agg["x"],
                agg["m"],
                label=line_label(cell, line_cols),
                markevery=MARKER_SPACING,
                ms=4,
                **st,
            )
            ax.fill_between(
                agg["x"],
                agg["m"] - agg["s"],
                agg["m"] + agg["s"],
                color=st["color"],
                alpha=0.15,
                lw=0,
                zorder=0,
            )
        if logx:
            ax.set_xscale("log")
        if xticks is not None:
            from matplotlib.ticker import FuncFormatter

            ax.xaxis.set_major_formatter(FuncFormatter(xticks))
        ax.set_xlabel(xlabel)
        ax.set_ylabel("held-out accuracy (%)")
        ax.set_title(setting_title(g, panel_cols), fontsize=9)
        ax.grid(alpha=0.3)
    _legend(fig, axes)
    return _save(fig, out, stem)


def accuracy_vs_round(ok, rounds, settings, out):
    """Held-out accuracy per round, one line per method, band = ± std over seeds."""
    return _curves(
        ok,
        rounds,
        settings,
        out,
        "accuracy_vs_round",
        lambda r: r["round"],
        "communication round",
        "Held-out accuracy vs round (mean ± std over seeds)",
    )


def accuracy_vs_bytes(ok, rounds, settings, out):
    """Accuracy against cumulative uplink bytes (log x): what each byte buys."""

    def x(r: pd.DataFrame) -> pd.Series:
        return pd.to_numeric(r["cum_uplink_bytes"], errors="coerce").where(lambda v: v > 0)

    if "cum_uplink_bytes" not in rounds:
        return None
    return _curves(
        ok,
        rounds,
        settings,
        out,
        "accuracy_vs_uplink_bytes",
        x,
        "cumulative uplink bytes, all clients (log scale)",
        "Held-out accuracy vs uplink bytes (mean ± std over seeds)",
        logx=True,
        xticks=lambda v, _: si_bytes(v),
    )


def accuracy_vs_time(ok, rounds, settings, out):
    """Accuracy against simulated time under the network model (None if all zero)."""
    t = cum_sim_seconds(rounds.loc[rounds["run_dir"].isin(ok["run_dir"])])
    if t.empty or not (t.fillna(0) > 0).any():
        return None
    rounds = rounds.assign(_sim=cum_sim_seconds(rounds))
    return _curves(
        ok,
        rounds,
        settings,
        out,
        "accuracy_vs_sim_time",
        lambda r: r["_sim"],
        "simulated wall-clock time (s, network model)",
        "Held-out accuracy vs simulated time (mean ± std over seeds)",
    )
