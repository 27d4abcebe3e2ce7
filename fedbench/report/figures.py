"""Figures of a report (matplotlib, Agg canvas: no display needed).

Each function saves PNG and SVG into ``out`` and returns the PNG path, or None with a
reason when there is nothing to draw. Curves are the mean over seeds; bands are
mean ± one standard deviation over seeds.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from fedbench.report.analysis import key_of, show

MAX_PANELS = 6
# Settings drawn as separate lines in one panel (local SGD's K), not as separate panels.
LINE_SETTINGS = ("local_steps", "local_epochs")


def _save(fig: Figure, out: Path, stem: str) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    png = out / f"{stem}.png"
    fig.savefig(png, dpi=110)
    fig.savefig(out / f"{stem}.svg")
    return png


def colours(labels: list[str]) -> dict[str, tuple]:
    """A stable colour per method label (tab10, then tab20)."""
    from matplotlib import colormaps

    cmap = colormaps["tab10" if len(labels) <= 10 else "tab20"]
    return {lab: cmap(i % cmap.N) for i, lab in enumerate(sorted(labels))}


def _panels(n: int, title: str) -> tuple[Figure, list]:
    cols = min(n, 3)
    rows = math.ceil(n / cols)
    fig = Figure(figsize=(5.2 * cols, 3.9 * rows + 0.4), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel().tolist()
    for ax in axes[n:]:
        ax.set_visible(False)
    fig.suptitle(title)
    return fig, axes[:n]


def setting_title(df: pd.DataFrame, settings: list[str]) -> str:
    """``num_clients=10, partition.alpha=0.5`` for the varying settings of one panel."""
    first = df.iloc[0]
    return ", ".join(f"{c}={show(first.get(c))}" for c in settings) or "all runs"


def split_settings(settings: list[str]) -> tuple[list[str], list[str]]:
    """Varying settings -> (one panel per value, one line per value)."""
    return (
        [c for c in settings if c not in LINE_SETTINGS],
        [c for c in settings if c in LINE_SETTINGS],
    )


def line_label(cell: pd.DataFrame, line_cols: list[str]) -> str:
    """Method label plus the line settings (``none [local_steps=4]``) and n."""
    first = cell.iloc[0]
    extra = ", ".join(f"{c}={show(first.get(c))}" for c in line_cols if show(first.get(c)) != "–")
    label = f"{first['label']} [{extra}]" if extra else str(first["label"])
    return f"{label} (n={cell['run_dir'].nunique()})"


def _panel_groups(ok: pd.DataFrame, panel_cols: list[str]) -> list[pd.DataFrame]:
    keys = [key_of(r, panel_cols) for _, r in ok.iterrows()]
    return [g for _, g in ok.groupby(keys, sort=True)][:MAX_PANELS]


def _legend(fig: Figure, axes: list) -> None:
    """One legend for all panels, below them (same colour = same line everywhere)."""
    seen: dict[str, object] = {}
    for ax in axes:
        for h, lab in zip(*ax.get_legend_handles_labels(), strict=True):
            seen.setdefault(lab, h)
    fig.legend(
        list(seen.values()),
        list(seen),
        loc="outside lower center",
        ncols=min(3, len(seen)),
        fontsize=8,
        frameon=False,
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
) -> Path | None:
    if ok.empty or rounds.empty or "test_accuracy" not in rounds:
        return None
    panel_cols, line_cols = split_settings(settings)
    names = {k: line_label(g, line_cols).rsplit(" (n=", 1)[0] for k, g in ok.groupby("cell_key")}
    colour = colours(sorted(set(names.values())))
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
            c = colour[names[key]]
            ax.plot(agg["x"], agg["m"], color=c, label=line_label(cell, line_cols), lw=1.6)
            ax.fill_between(
                agg["x"], agg["m"] - agg["s"], agg["m"] + agg["s"], color=c, alpha=0.25, lw=0
            )
        if logx:
            ax.set_xscale("log")
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
        "cumulative uplink bytes (all clients, log scale)",
        "Held-out accuracy vs uplink bytes (mean ± std over seeds)",
        logx=True,
    )


def sim_time(rounds: pd.DataFrame) -> pd.Series:
    """Cumulative simulated seconds per row: ``cum_sim_seconds`` or a running sum."""
    if "cum_sim_seconds" in rounds and rounds["cum_sim_seconds"].notna().any():
        return pd.to_numeric(rounds["cum_sim_seconds"], errors="coerce")
    if "sim_seconds" not in rounds:
        return pd.Series(np.nan, index=rounds.index)
    s = pd.to_numeric(rounds["sim_seconds"], errors="coerce").fillna(0.0)
    order = rounds.sort_values(["run_dir", "round"]).index
    return s.loc[order].groupby(rounds.loc[order, "run_dir"]).cumsum().reindex(rounds.index)


def accuracy_vs_time(ok, rounds, settings, out):
    """Accuracy against simulated time under the network model (None if all zero)."""
    t = sim_time(rounds.loc[rounds["run_dir"].isin(ok["run_dir"])])
    if t.empty or not (t.fillna(0) > 0).any():
        return None
    rounds = rounds.assign(_sim=sim_time(rounds))
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
    colour = colours(sorted(set(names.values())))
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
                fmt="o",
                ms=6,
                capsize=3,
                color=colour[names[key]],
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
            label="Pareto frontier (no cell has both more ratio and accuracy)",
        )
        ax.set_xscale("log")
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
    colour = colours(sorted(set(lines.values())))
    fig = Figure(figsize=(7.5, 5.2), layout="constrained")
    ax = fig.subplots()
    for key, g in sorted(ok.groupby(keys), key=lambda kv: lines[kv[0]]):
        pts = g.groupby("num_clients")["accuracy_pct"].agg(["mean", "std", "count"])
        ax.errorbar(
            pts.index,
            pts["mean"],
            yerr=pts["std"].fillna(0.0),
            marker="o",
            capsize=3,
            color=colour[lines[key]],
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


def _span(counts: pd.Series) -> str:
    lo, hi = int(counts.min()), int(counts.max())
    return str(lo) if lo == hi else f"{lo}-{hi}"


def load_bench(path: Path) -> pd.DataFrame:
    """pytest-benchmark JSON -> one row per benchmark: series, elements, median, throughput."""
    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ValueError(
            f"--bench {str(path)!r} is not a readable pytest-benchmark JSON: {e}"
        ) from None
    rows = []
    for b in doc.get("benchmarks", []):
        extra = b.get("extra_info") or {}
        params = b.get("params") or {}
        elements = extra.get("elements")
        median = (b.get("stats") or {}).get("median")
        if not elements or not median:
            continue
        base = str(b.get("name", "")).split("[")[0]
        size_keys = {"size", "numel", "n", "elements", "shape", "d", "dim"}
        rest = ", ".join(f"{k}={v}" for k, v in sorted(params.items()) if k not in size_keys)
        series = f"{b.get('group') or base}: {base}" + (f" [{rest}]" if rest else "")
        rows.append(
            {
                "series": series,
                "group": b.get("group"),
                "name": b.get("name"),
                "elements": float(elements),
                "median_s": float(median),
                "throughput_meps": float(elements) / float(median) / 1e6,
                "wire_bytes": extra.get("wire_bytes"),
                "ratio": extra.get("ratio"),
            }
        )
    return pd.DataFrame(rows)


def bench_throughput(bench: pd.DataFrame, out: Path):
    """Kernel throughput (million elements/s, median) vs tensor size per compressor."""
    if bench.empty:
        return None
    fig = Figure(figsize=(7.5, 4.6), layout="constrained")
    ax = fig.subplots()
    colour = colours(list(bench["series"].unique()))
    for series, g in bench.groupby("series", sort=True):
        g = g.sort_values("elements")
        ax.plot(g["elements"], g["throughput_meps"], marker="o", color=colour[series], label=series)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("tensor size (elements, log scale)")
    ax.set_ylabel("throughput (million elements / s, median)")
    ax.set_title("Compressor kernel throughput (pytest-benchmark)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, loc="best")
    return _save(fig, out, "bench_throughput")
