"""Figures of a report (matplotlib, Agg canvas: no display needed).

Each function saves PNG and SVG into ``out`` and returns the PNG path, or None with a
reason when there is nothing to draw. Curves are the mean over seeds; bands are
mean ± one standard deviation over seeds.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib import rc_context
from matplotlib.figure import Figure

from fedbench.report.analysis import cum_sim_seconds, key_of, show

LINESTYLES = ("-", "--", ":", "-.")  # the next one after each 10 colours
MARKERS = ("o", "s", "^", "v", "D", "P", "X", "*", "<", ">")
MARKER_SPACING = 0.08  # of the axes diagonal: markers tell lines apart, more would clutter
DENSE = {"color": "black", "ls": "-", "marker": "", "lw": 2.6, "alpha": 0.55, "zorder": 1}
# Settings drawn as separate lines in one panel (local SGD's K), not as separate panels.
LINE_SETTINGS = ("local_steps", "local_epochs", "aggregation", "lazy_threshold", "upload_budget_s")


def _save(fig: Figure, out: Path, stem: str) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    png = out / f"{stem}.png"
    # tight: the legend sits outside the axes and must not be cut off.
    # Same runs, same bytes: no creation date in the files, SVG ids from a fixed salt.
    fig.savefig(png, dpi=110, bbox_inches="tight")
    with rc_context({"svg.hashsalt": "fedbench"}):
        fig.savefig(out / f"{stem}.svg", bbox_inches="tight", metadata={"Date": None})
    return png


def is_dense_label(label: str) -> bool:
    """The dense baseline's label (``none``, ``none [local_steps=4]``)."""
    return label == "none" or label.startswith(("none [", "none ("))


def styles(labels: list[str], baselines: Iterable[str] = ()) -> dict[str, dict]:
    """A stable, distinct look per label (``color``, ``ls``, ``marker``, ``lw``, ``alpha``,
    ``zorder``): the reference, a thick grey-black line drawn under the others (a codec
    that matches it lies on top of it), the rest tab10 colours with a marker each, then
    the same colours with the next line style for labels 11-20, etc.

    The reference is the first dense label among ``baselines`` (the labels of the runs
    other runs are measured against: with edge strategies, the sync dense run, not
    FedBuff's), else the first dense label."""
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    ordered = sorted(labels)
    preferred = set(baselines)
    dense = next((lab for lab in ordered if lab in preferred and is_dense_label(lab)), None)
    if dense is None:
        dense = next((lab for lab in ordered if is_dense_label(lab)), None)
    out = {dense: dict(DENSE)} if dense is not None else {}
    for i, lab in enumerate(x for x in ordered if x != dense):
        out[lab] = {
            "color": cmap(i % 10),
            "ls": LINESTYLES[(i // 10) % len(LINESTYLES)],
            "marker": MARKERS[(i + 3 * (i // 10)) % len(MARKERS)],
            "lw": 1.6,
            "alpha": 1.0,
            "zorder": 2,
        }
    return out


def baseline_labels(ok: pd.DataFrame, names: Mapping[Any, str], keys: Any) -> set[str]:
    """The labels (``names`` of the groups ``ok.groupby(keys)``) of the runs that other
    runs are measured against (``dense_run``, from :mod:`fedbench.report.analysis`)."""
    if "dense_run" not in ok:
        return set()
    dense_dirs = set(ok["dense_run"].dropna())
    return {names[k] for k, g in ok.groupby(keys) if g["run_dir"].isin(dense_dirs).any()}


def _point_style(look: dict) -> dict:
    """A line look for a point plot (error bars): a marker always, no line style."""
    return {"color": look["color"], "fmt": look["marker"] or "o", "zorder": look["zorder"] + 1}


def _panels(n: int, title: str) -> tuple[Figure, list]:
    cols = min(n, 3)
    rows = math.ceil(n / cols)
    width = 5.2 * cols if n > 1 else 6.4
    fig = Figure(figsize=(width, 3.9 * rows + 0.6), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel().tolist()
    for ax in axes[n:]:
        ax.set_visible(False)
    fig.suptitle(title)
    return fig, axes[:n]


def setting_title(df: pd.DataFrame, settings: list[str]) -> str:
    """``num_clients=10, network=lte`` for the varying settings of one panel ("" if none)."""
    first = df.iloc[0]
    return ", ".join(f"{_short(c)}={show(first.get(c))}" for c in settings)


def _short(col: str) -> str:
    return col[:-5] if col.endswith(".name") and col.count(".") == 1 else col


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
    return [g for _, g in ok.groupby(keys, sort=True)]


def _legend(fig: Figure, axes: list) -> None:
    """One legend for all panels, right of them (same look = same cell everywhere);
    a second column from 20 entries so it never runs off the figure."""
    seen: dict[str, object] = {}
    for ax in axes:
        for h, lab in zip(*ax.get_legend_handles_labels(), strict=True):
            seen.setdefault(lab, h)
    # Anchored just right of the figure: the axes keep their width, and _save's tight
    # bounding box grows the image to hold the legend.
    fig.legend(
        list(seen.values()),
        list(seen),
        loc="upper left",
        bbox_to_anchor=(1.0, 0.97),
        ncols=1 if len(seen) < 20 else 2,
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


def si_bytes(v: float) -> str:
    """``1e6`` -> ``1 MB``, ``2.5e4`` -> ``25 kB`` (decimal prefixes, as bandwidths are)."""
    for scale, unit in ((1e12, "TB"), (1e9, "GB"), (1e6, "MB"), (1e3, "kB")):
        if abs(v) >= scale:
            return f"{v / scale:g} {unit}"
    return f"{v:g} B"


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
    look = styles(list(bench["series"].unique()))
    for series, g in bench.groupby("series", sort=True):
        g = g.sort_values("elements")
        ax.plot(
            g["elements"], g["throughput_meps"], label=series, **(look[series] | {"marker": "o"})
        )
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("tensor size (elements, log scale)")
    ax.set_ylabel("throughput (million elements / s, median)")
    ax.set_title("Compressor kernel throughput (pytest-benchmark)")
    ax.grid(alpha=0.3, which="both")
    _legend(fig, [ax])
    return _save(fig, out, "bench_throughput")
