"""How runs are named and shown: method labels, the setting columns that split runs,
strategies, and values for people (``show``, ``fmt`` as ``mean ± std (n=k)``).

The labelling half of the report's analysis; the matching half (dense runs, impact,
rounds to target) is :mod:`fedbench.report.analysis`, which re-exports these names.
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pandas as pd

from fedbench.results import EXECUTION_KEYS, Runs

NOT_SETTING = EXECUTION_KEYS | {"target_accuracy", "eval_every", "seed"}


# A run's strategy is its codec's family, recorded in summary.json as ``codec_family``
# (``Compressor.family``, from fedbench.compress.ids). This mapping from the codec name
# (the tutorial's "Communication Reduction Strategies") labels run folders written
# before that field existed; it is frozen as those runs were reported.
STRATEGY = {
    **dict.fromkeys(
        ["quant", "qsgd", "terngrad", "sign", "natural", "fp16", "bf16"], "quantisation"
    ),
    **dict.fromkeys(["topk", "randk", "stc", "dgc", "sketch"], "sparsification"),
    **dict.fromkeys(["powersgd", "svd"], "low-rank"),
}


def strategy_of(df: pd.DataFrame) -> pd.Series:
    """Each run's strategy: the ``codec_family`` its summary records, else (older run
    folders) :data:`STRATEGY` of its codec name; ``""`` when neither says."""
    legacy = df["family"].map(STRATEGY)
    if "codec_family" not in df:
        return legacy.fillna("")
    recorded = df["codec_family"].where(df["codec_family"].map(_is_named), None)
    return recorded.fillna(legacy).fillna("")


def _is_named(v: Any) -> bool:
    return isinstance(v, str) and v != ""


def _norm(v: Any) -> Any:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return None
    if isinstance(v, np.generic):
        return v.item()
    return v


def show(v: Any) -> str:
    """A config value for people: ``–`` for null/NaN, ``4`` for 4.0."""
    v = _norm(v)
    if v is None:
        return "–"
    if isinstance(v, float):
        return str(int(v)) if v.is_integer() else f"{v:g}"
    return str(v)


def key_of(row: pd.Series, cols: list[str]) -> str:
    """A hashable identity of ``row`` on ``cols`` (NaN and None are the same)."""
    return json.dumps([_norm(row.get(c)) for c in cols], default=str)


def setting_columns(runs: Runs) -> list[str]:
    """Config columns that define an experiment's setting, seed excluded; plus the
    device kind where runs on CPU and CUDA are loaded together (never pooled as seeds)."""
    cols = [
        c for c in runs.config_columns if not c.startswith("compressor.") and c not in NOT_SETTING
    ]
    kinds = runs.runs.get("device_kind")
    if kinds is not None and kinds.nunique(dropna=True) > 1:
        cols.append("device_kind")
    return cols


PARAM_META = frozenset({"_target_", "error_feedback", "defaults"})
EF = "compressor.error_feedback"
# Setting columns in the order tables prefer them when several split the runs the same
# way (``network.name`` before ``network.uplink_bps``, ``num_clients`` before
# ``clients_per_round``); the rest follow in config order.
PREFERRED = ("num_clients", "local_steps", "local_epochs", "aggregation", "clients_per_round")


def param_columns(df: pd.DataFrame) -> list[str]:
    """``compressor.*`` columns holding codec constructor parameters (meta keys excluded)."""
    return [
        c
        for c in df.columns
        if isinstance(c, str) and c.startswith("compressor.") and c[11:] not in PARAM_META
    ]


def compressor_params(row: pd.Series) -> dict[str, Any]:
    """Constructor parameters of the run's codec (``compressor.*`` minus meta keys)."""
    cols = param_columns(row.to_frame().T)
    return {c[11:]: _norm(row[c]) for c in cols if _norm(row[c]) is not None}


def _is_true(v: Any) -> bool:
    return _norm(v) is not None and bool(v) and str(v).lower() not in {"false", "0"}


def full_label(row: pd.Series) -> str:
    """Every codec parameter: ``topk (ratio=0.01, value_dtype=float32, EF)`` (for CSVs)."""
    parts = [f"{k}={show(v)}" for k, v in sorted(compressor_params(row).items())]
    if _is_true(row.get(EF)):
        parts.append("EF")
    method = str(row.get("method", "unknown"))
    return f"{method} ({', '.join(parts)})" if parts else method


def method_labels(df: pd.DataFrame) -> pd.Series:
    """A short label per run: its ``method`` (the Hydra compressor choice, ``quant8``) plus
    only the codec parameters that vary between loaded runs of that method
    (``quant bits=4``), and `` +EF`` when error feedback is on for some of them only.

    Two runs get the same label exactly when their method and codec parameters agree.
    """
    labels = pd.Series("", index=df.index, dtype=object)
    params = param_columns(df)
    for method, g in df.groupby(df["method"].astype(str), sort=False):
        vary = varying(g, params)
        ef = g[EF].map(_is_true) if EF in g else pd.Series(False, index=g.index)
        for i, r in g.iterrows():
            parts = [f"{c[11:]}={show(r[c])}" for c in vary if _norm(r[c]) is not None]
            label = f"{method} {', '.join(parts)}" if parts else method
            labels[i] = label + (" +EF" if ef.nunique() > 1 and ef[i] else "")
    return labels


def varying(df: pd.DataFrame, cols: list[str]) -> list[str]:
    """The columns among ``cols`` that take more than one value in ``df``."""
    return [c for c in cols if c in df and df[c].map(_norm).astype(str).nunique(dropna=False) > 1]


def splitting_settings(df: pd.DataFrame, cols: list[str]) -> list[str]:
    """The fewest varying setting columns that tell the runs' settings apart.

    Columns are tried in a preferred order (group names such as ``network.name`` and
    ``partition.name`` first, then :data:`PREFERRED`, then config order) and one is kept
    only when it splits the runs further than the columns kept before it, so a sweep
    over ``network=lte,iot`` shows ``network.name`` and not its bandwidths too.
    """
    vary = varying(df, cols)
    rank = {c: i for i, c in enumerate(PREFERRED)}

    def order(c: str) -> tuple[int, int, int]:
        group_name = c.count(".") == 1 and c.endswith(".name")
        return (0 if group_name else 1 if c in rank else 2, rank.get(c, 0), cols.index(c))

    kept: list[str] = []
    groups = 1
    for c in sorted(vary, key=order):
        n = len({key_of(r, [*kept, c]) for _, r in df.iterrows()})
        if n > groups:
            kept.append(c)
            groups = n
    return sorted(kept, key=order)


def mean_std_n(values: pd.Series) -> tuple[float, float, int]:
    """Mean, sample std (0 for one value) and count of the finite values."""
    v = pd.to_numeric(values, errors="coerce")
    v = v[np.isfinite(v)]
    if v.empty:
        return float("nan"), float("nan"), 0
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else 0.0, len(v)


def fmt(
    values: pd.Series,
    digits: int = 1,
    suffix: str = "",
    signed: bool = False,
    integer: bool = False,
) -> str:
    """``mean ± std (n=k)`` of the finite values; ``–`` when there are none.

    ``integer``: the values are counts (rounds), so one value prints as ``10 (n=1)``;
    a mean over several keeps ``digits`` decimals (``12.3 ± 1.2 (n=3)``).
    """
    m, s, n = mean_std_n(values)
    if n == 0:
        return "–"
    sign = "+" if signed else ""
    head = f"{m:{sign}.{0 if integer and n == 1 else digits}f}{suffix}"
    return f"{head} ± {s:.{digits}f} (n={n})" if n > 1 else f"{head} (n=1)"
