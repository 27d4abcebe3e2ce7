"""Kernel throughput from a pytest-benchmark JSON (``python -m fedbench.report --bench``)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure

from fedbench.report.figures.style import (
    _legend,
    _save,
    styles,
)


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
