"""The look shared by every figure: colours, line styles and markers per label (the dense
baseline thick and black), panels per setting, the legend, and saving PNG + SVG
reproducibly (no date, fixed SVG ids)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pandas as pd
from matplotlib import rc_context
from matplotlib.figure import Figure

from fedbench.report.analysis import key_of, show

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


def si_bytes(v: float) -> str:
    """``1e6`` -> ``1 MB``, ``2.5e4`` -> ``25 kB`` (decimal prefixes, as bandwidths are)."""
    for scale, unit in ((1e12, "TB"), (1e9, "GB"), (1e6, "MB"), (1e3, "kB")):
        if abs(v) >= scale:
            return f"{v / scale:g} {unit}"
    return f"{v:g} B"


def _span(counts: pd.Series) -> str:
    lo, hi = int(counts.min()), int(counts.max())
    return str(lo) if lo == hi else f"{lo}-{hi}"
