"""How the report's tables group runs into cells and name their columns; shared by
:mod:`fedbench.report.claims` and :mod:`fedbench.report.tables`."""

from __future__ import annotations

import json

import pandas as pd


def _num(v: object) -> float:
    try:
        return float(v)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return float("nan")


def short(col: str) -> str:
    """A setting column as a table header: ``network.name`` -> ``network``."""
    if col.endswith(".name") and col.count(".") == 1:
        return col[:-5]
    return col.replace("dataset.", "").replace(".", " ")


def cells(df: pd.DataFrame) -> list[pd.DataFrame]:
    """Runs grouped into cells (same setting and codec, any seed), in a stable order."""
    natural = df["setting_key"].map(_natural_key)
    order = df.assign(_natural=natural).sort_values(["family", "label", "_natural"])
    return [g.drop(columns="_natural") for _, g in order.groupby("cell_key", sort=False)]


def _natural_key(setting_key: str) -> tuple:
    """Order settings by value, numbers as numbers (K=5 before K=50), nulls last."""
    out = []
    for v in json.loads(setting_key):
        if isinstance(v, bool) or v is None:
            out.append((2, str(v)))
        elif isinstance(v, int | float):
            out.append((0, float(v)))
        else:
            out.append((1, str(v)))
    return tuple(out)


# Summary ratios of the broadcast and of both directions (runs since the downlink sends
# the model's change); shown where the runs have them.
BOTH_WAYS = {
    "downlink_compression_ratio": "Downlink ratio (x)",
    "total_compression_ratio": "Both ways ratio (x)",
}


def _both_ways(df: pd.DataFrame) -> list[str]:
    return [c for c in BOTH_WAYS if c in df and pd.to_numeric(df[c], errors="coerce").notna().any()]
