"""Per-run points: compression ratio against final accuracy (with the Pareto frontier),
and final accuracy against the number of clients."""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure

from fedbench.report.analysis import key_of, show
from fedbench.report.figures.style import (
    _legend,
    _panel_groups,
    _panels,
    _point_style,
    _save,
    _span,
    baseline_labels,
    line_label,
    setting_title,
    split_settings,
    styles,
)


def pareto_front(ratio: np.ndarray, acc: np.ndarray) -> np.ndarray:
    """Indices of points no other point beats on both ratio and accuracy, by ratio."""
    order = np.argsort(-ratio, kind="stable")
    best, keep = -np.inf, []
    for i in order:
        if acc[i] > best:
            keep.append(i)
            best = acc[i]
    return np.array(sorted(keep, key=lambda i: ratio[i]), dtype=int)


def ratio_vs_accuracy(ok, settings, out):
    """Measured ratio (log x) vs final accuracy per cell, Pareto frontier marked."""
    ok = ok.loc[ok["ratio"].notna() & ok["accuracy_pct"].notna()]
    if ok.empty:
        return None
    panel_cols, line_cols = split_settings(settings)
    names = {k: line_label(g, line_cols).rsplit(" (n=", 1)[0] for k, g in ok.groupby("cell_key")}
    look = styles(sorted(set(names.values())), baseline_labels(ok, names, "cell_key"))
    groups = _panel_groups(ok, panel_cols)
    fig, axes = _panels(len(groups), "Compression ratio vs final accuracy (error bars: ± std)")
    for ax, g in zip(axes, groups, strict=True):
        pts = []
        for key, cell in sorted(g.groupby("cell_key"), key=lambda kv: names[kv[0]]):
            r, a = cell["ratio"], cell["accuracy_pct"]
            pts.append((r.mean(), a.mean()))
            ax.errorbar(
                r.mean(),
                a.mean(),
                xerr=r.std(ddof=1) if len(r) > 1 else 0,
                yerr=a.std(ddof=1) if len(a) > 1 else 0,
                **_point_style(look[names[key]]),
                ms=7,
                capsize=3,
                label=line_label(cell, line_cols),
            )
        xy = np.array(pts)
        front = pareto_front(xy[:, 0], xy[:, 1])
        ax.plot(
            xy[front, 0],
            xy[front, 1],
            color="k",
            ls="--",
            lw=1,
            marker="o",
            ms=11,
            mfc="none",
            label="Pareto frontier",
            zorder=0,
        )
        ax.set_xscale("log")
        from matplotlib.ticker import FuncFormatter, LogLocator

        ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}x"))
        ax.xaxis.set_minor_formatter(FuncFormatter(lambda v, _: ""))
        lo, hi = xy[:, 0].min(), xy[:, 0].max()
        ax.set_xlim(lo / 1.6, hi * 1.6)
        ax.set_xlabel("measured compression ratio (dense bytes / wire bytes, log scale)")
        ax.set_ylabel("final held-out accuracy (%)")
        ax.set_title(setting_title(g, panel_cols), fontsize=9)
        ax.grid(alpha=0.3, which="both")
    _legend(fig, axes)
    return _save(fig, out, "ratio_vs_accuracy")


def client_scaling(ok, settings, out):
    """Final accuracy vs number of clients per method (None with one client count)."""
    if "num_clients" not in ok or ok["num_clients"].nunique() < 2:
        return None
    others = [c for c in settings if c not in {"num_clients", "clients_per_round"}]
    keys = [key_of(r, ["label", *others]) for _, r in ok.iterrows()]
    lines = {k: line_label(g, others).rsplit(" (n=", 1)[0] for k, g in ok.groupby(keys)}
    look = styles(sorted(set(lines.values())), baseline_labels(ok, lines, keys))
    fig = Figure(figsize=(7.5, 5.2), layout="constrained")
    ax = fig.subplots()
    for key, g in sorted(ok.groupby(keys), key=lambda kv: lines[kv[0]]):
        pts = g.groupby("num_clients")["accuracy_pct"].agg(["mean", "std", "count"])
        ax.errorbar(
            pts.index,
            pts["mean"],
            yerr=pts["std"].fillna(0.0),
            marker=look[lines[key]]["marker"] or "o",
            ls=look[lines[key]]["ls"],
            capsize=3,
            color=look[lines[key]]["color"],
            zorder=look[lines[key]]["zorder"],
            label=f"{lines[key]} (n={_span(pts['count'])})",
        )
    ax.set_xscale("log")
    ticks = sorted(ok["num_clients"].dropna().unique())
    ax.set_xticks(ticks, [show(t) for t in ticks])
    ax.minorticks_off()
    ax.set_xlabel("clients in the federation (log scale)")
    ax.set_ylabel("final held-out accuracy (%)")
    ax.set_title("Client scaling (mean ± std over seeds)")
    ax.grid(alpha=0.3, which="both")
    _legend(fig, [ax])
    return _save(fig, out, "client_scaling")
