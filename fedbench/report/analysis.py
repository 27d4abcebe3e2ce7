"""Per-run derived numbers: the matched dense run, accuracy impact, rounds to target.

Definitions (the report states them too):

- *setting* of a run: its config minus the compressor group, minus keys that only say
  where or how it is computed (:data:`fedbench.results.EXECUTION_KEYS`) and minus
  ``target_accuracy``/``eval_every`` (they change what is logged, not what is trained);
- *dense run* of a run: the ``ok`` run with the same setting (seed included) whose
  codec family is ``none`` without error feedback, sent synchronously with every edge
  strategy off (:data:`EDGE_DEFAULTS`: what the app's sweep adds as the baseline); when
  there is none, the codec-``none`` run of exactly the same setting;
- *measured ratio*: ``summary.compression_ratio`` (dense uplink bytes / wire uplink
  bytes, from totals); when absent, the dense run's uplink bytes / this run's;
- *accuracy impact*: final held-out accuracy minus the dense run's, in points;
- *converged*: first round whose held-out accuracy reaches ``target_accuracy`` when the
  config sets one, else 95% of the dense run's final accuracy.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from fedbench.report.labels import (
    EF,
    NOT_SETTING,
    PARAM_META,
    PREFERRED,
    STRATEGY,
    _is_true,
    _norm,
    compressor_params,
    fmt,
    full_label,
    key_of,
    mean_std_n,
    method_labels,
    param_columns,
    setting_columns,
    show,
    splitting_settings,
    strategy_of,
    varying,
)
from fedbench.results import Runs
from fedbench.schema import DENSE_SETTINGS

# The labelling names above are re-exported: ``analysis.show``, ``analysis.fmt``, ...
__all__ = [
    "DEFAULT_TARGET_FRACTION",
    "EDGE_DEFAULTS",
    "EF",
    "NOT_SETTING",
    "PARAM_META",
    "PREFERRED",
    "STRATEGY",
    "accuracy_at",
    "at_target",
    "compressor_params",
    "cum_sim_seconds",
    "derive",
    "fmt",
    "full_label",
    "key_of",
    "local_sgd",
    "mean_std_n",
    "method_labels",
    "param_columns",
    "ratio_mismatches",
    "rounds_to",
    "setting_columns",
    "show",
    "splitting_settings",
    "strategy_of",
    "varying",
]

DEFAULT_TARGET_FRACTION = 0.95  # of the dense run's final accuracy, when no target is set


# Edge strategies and their "off" values: the app's dense baseline of any run has these
# (``fedbench.sweep.dense_config``), so a run is matched to its dense run without them.
EDGE_DEFAULTS = DENSE_SETTINGS


def _is_default(v: Any, default: Any) -> bool:
    if isinstance(default, bool):
        return _is_true(v) == default
    return _norm(v) is None if default is None else str(_norm(v)) == str(default)


def rounds_to(rounds: pd.DataFrame, target: float) -> float:
    """Rounds needed to first reach ``target`` held-out accuracy (NaN if never).

    ``rounds`` holds one run's metrics rows; the count is ``round - first_round + 1``.
    """
    if rounds.empty or not np.isfinite(target) or "test_accuracy" not in rounds:
        return float("nan")
    acc = pd.to_numeric(rounds["test_accuracy"], errors="coerce")
    hit = rounds.loc[acc >= target, "round"]
    if hit.empty:
        return float("nan")
    return float(hit.min() - rounds["round"].min() + 1)


def cum_sim_seconds(rounds: pd.DataFrame) -> pd.Series:
    """Cumulative simulated seconds per metrics row: ``cum_sim_seconds``, else a running
    sum of ``sim_seconds`` per run; NaN when neither is logged."""
    if "cum_sim_seconds" in rounds and rounds["cum_sim_seconds"].notna().any():
        return pd.to_numeric(rounds["cum_sim_seconds"], errors="coerce")
    if "sim_seconds" not in rounds or rounds.empty:
        return pd.Series(np.nan, index=rounds.index, dtype=float)
    s = pd.to_numeric(rounds["sim_seconds"], errors="coerce").fillna(0.0)
    order = rounds.sort_values(["run_dir", "round"]).index
    return s.loc[order].groupby(rounds.loc[order, "run_dir"]).cumsum().reindex(rounds.index)


def at_target(rounds: pd.DataFrame, target: float) -> tuple[float, float]:
    """Cumulative simulated seconds and uplink bytes when one run (its metrics rows,
    sorted by round, with a ``_sim`` column from :func:`cum_sim_seconds`) first reaches
    ``target`` held-out accuracy; NaN, NaN when it never does."""
    if rounds.empty or not np.isfinite(target) or "test_accuracy" not in rounds:
        return float("nan"), float("nan")
    acc = pd.to_numeric(rounds["test_accuracy"], errors="coerce")
    hit = rounds.loc[acc >= target]
    if hit.empty:
        return float("nan"), float("nan")
    first = hit.iloc[0]
    up = pd.to_numeric(pd.Series([first.get("cum_uplink_bytes")]), errors="coerce").iloc[0]
    return float(first.get("_sim", np.nan)), float(up)


def accuracy_at(rounds: pd.DataFrame, round_no: float) -> tuple[float, bool]:
    """Held-out accuracy at the last evaluated round <= ``round_no``; True when the run
    reached ``round_no`` (else the accuracy is that of its last round)."""
    acc = pd.to_numeric(rounds.get("test_accuracy"), errors="coerce")
    ok = rounds.loc[acc.notna()]
    if ok.empty:
        return float("nan"), False
    before = ok.loc[ok["round"] <= round_no]
    reached = bool(ok["round"].max() >= round_no)
    row = before.iloc[-1] if not before.empty else ok.iloc[0]
    return float(row["test_accuracy"]), reached


def derive(runs: Runs) -> pd.DataFrame:
    """``runs.runs`` plus one column per derived number (one row per run).

    Added: ``label``, ``setting_key`` (setting without seed), ``cell_key`` (setting +
    codec), ``strategy``, ``dense_run``, ``ratio``, ``ratio_dense_run`` (dense run's
    uplink bytes / this run's), ``accuracy_pct``, ``impact_pts``, ``rel_accuracy_pct``,
    ``target``, ``rounds_to_target``, ``dense_rounds_to_target``, ``extra_rounds_pct``,
    ``sim_s_to_target`` and ``uplink_to_target_bytes`` (cumulative simulated seconds and
    uplink bytes at the round that reached ``target``), ``sim_s_total`` (simulated seconds
    of the whole run), ``uplink_mb``, ``params`` (every codec parameter, for CSVs).
    """
    df = runs.runs.copy()
    num = ["final_accuracy", "uplink_bytes", "compression_ratio", "target_accuracy"]
    for c in num:
        df[c] = pd.to_numeric(df[c], errors="coerce") if c in df else np.nan
    setting = setting_columns(runs)
    comp_cols = [c for c in runs.config_columns if c.startswith("compressor.")]
    seed = ["seed"] if "seed" in df else []
    df["label"] = method_labels(df)
    df["params"] = [full_label(r) for _, r in df.iterrows()]
    df["setting_key"] = [key_of(r, setting) for _, r in df.iterrows()]
    df["match_key"] = [key_of(r, setting + seed) for _, r in df.iterrows()]
    base = [c for c in setting if c not in EDGE_DEFAULTS]
    df["base_key"] = [key_of(r, base + seed) for _, r in df.iterrows()]
    df["cell_key"] = [key_of(r, setting + comp_cols + ["method"]) for _, r in df.iterrows()]
    df["strategy"] = strategy_of(df)
    ef = df.get("compressor.error_feedback", pd.Series(False, index=df.index)).map(_is_true)
    is_dense = (df["family"] == "none") & ~ef & (df["status"] == "ok") & ~df["partial"]
    plain = is_dense & pd.Series(
        [all(_is_default(r.get(k), v) for k, v in EDGE_DEFAULTS.items()) for _, r in df.iterrows()],
        index=df.index,
        dtype=bool,
    )
    # The app's baseline (edge strategies off) first; else the codec-none run of the
    # very same setting (run folders made without the app's baselines).
    dense_base = df.loc[plain].drop_duplicates("base_key").set_index("base_key")
    dense_same = df.loc[is_dense].drop_duplicates("match_key").set_index("match_key")

    timed = runs.rounds.assign(_sim=cum_sim_seconds(runs.rounds))
    by_run = {k: g.sort_values("round") for k, g in timed.groupby("run_dir")}
    empty = pd.DataFrame(columns=["round", "test_accuracy", "_sim"])
    out: dict[str, list] = {
        k: []
        for k in (
            "dense_run",
            "ratio",
            "ratio_dense_run",
            "impact_pts",
            "rel_accuracy_pct",
            "target",
            "rounds_to_target",
            "dense_rounds_to_target",
            "extra_rounds_pct",
            "sim_s_to_target",
            "uplink_to_target_bytes",
            "sim_s_total",
        )
    }
    for _, r in df.iterrows():
        if r["base_key"] in dense_base.index:
            d = dense_base.loc[r["base_key"]]
        elif r["match_key"] in dense_same.index:
            d = dense_same.loc[r["match_key"]]
        else:
            d = None
        d_acc = d["final_accuracy"] if d is not None else np.nan
        d_bytes = d["uplink_bytes"] if d is not None else np.nan
        ratio_d = d_bytes / r["uplink_bytes"] if r["uplink_bytes"] > 0 else np.nan
        ratio = r["compression_ratio"]
        target = r["target_accuracy"]
        if not np.isfinite(target):
            target = DEFAULT_TARGET_FRACTION * d_acc
        rt = rounds_to(by_run.get(r["run_dir"], empty), target)
        rt_d = rounds_to(by_run.get(d["run_dir"], empty), target) if d is not None else np.nan
        out["dense_run"].append(d["run_dir"] if d is not None else None)
        out["ratio"].append(ratio if np.isfinite(ratio) else ratio_d)
        out["ratio_dense_run"].append(ratio_d)
        out["impact_pts"].append(100.0 * (r["final_accuracy"] - d_acc))
        out["rel_accuracy_pct"].append(100.0 * r["final_accuracy"] / d_acc if d_acc else np.nan)
        out["target"].append(target)
        out["rounds_to_target"].append(rt)
        out["dense_rounds_to_target"].append(rt_d)
        out["extra_rounds_pct"].append(100.0 * (rt - rt_d) / rt_d if rt_d else np.nan)
        mine = by_run.get(r["run_dir"], empty)
        t_s, t_b = at_target(mine, target)
        out["sim_s_to_target"].append(t_s)
        out["uplink_to_target_bytes"].append(t_b)
        out["sim_s_total"].append(float(mine["_sim"].iloc[-1]) if len(mine) else np.nan)
    for k, v in out.items():
        df[k] = v
    df["accuracy_pct"] = 100.0 * df["final_accuracy"]
    df["uplink_mb"] = df["uplink_bytes"] / 1e6
    df["uplink_to_target_mb"] = df["uplink_to_target_bytes"] / 1e6
    return df


def ratio_mismatches(df: pd.DataFrame, tolerance: float = 0.02) -> list[str]:
    """Runs whose summary ratio and dense-run ratio differ by more than ``tolerance``."""
    both = df.loc[df["compression_ratio"].notna() & df["ratio_dense_run"].notna()]
    rel = (both["compression_ratio"] / both["ratio_dense_run"] - 1).abs()
    return [
        f"{r.run_dir}: summary ratio {r.compression_ratio:.4g} vs dense run's bytes "
        f"{r.ratio_dense_run:.4g}"
        for r in both.loc[rel > tolerance].itertuples()
    ]


def local_sgd(df: pd.DataFrame, rounds: pd.DataFrame, setting: list[str]) -> pd.DataFrame:
    """Local SGD as a compressor: dense runs with ``local_steps`` = K vs the smallest K.

    Compression = bytes per local SGD step of the reference / of this run
    (``(K / K_ref) * ref_bytes_per_round / bytes_per_round``), i.e. how many times fewer
    bytes reach the same number of local updates. Accuracy impact = final accuracy minus
    the reference's accuracy after the same number of local steps (round ``R * K / K_ref``,
    or its last round when it ran fewer: ``equal_steps`` False). One row per run.
    """
    cols = ["run_dir", "seed", "local_steps", "ref_run", "ratio", "impact_pts", "equal_steps"]
    if "local_steps" not in df:
        return pd.DataFrame(columns=cols)
    steps = pd.to_numeric(df["local_steps"], errors="coerce")
    ef = df.get("compressor.error_feedback", pd.Series(False, index=df.index)).map(_is_true)
    dense = df.loc[(df["family"] == "none") & ~ef & (df["status"] == "ok") & steps.notna()]
    dense = dense.assign(local_steps=steps[dense.index])
    others = [c for c in setting if c not in {"local_steps", "local_epochs", "rounds"}]
    seed = ["seed"] if "seed" in df else []
    by_run = {k: g.sort_values("round") for k, g in rounds.groupby("run_dir")}
    rows = []
    for _, group in dense.groupby([key_of(r, others + seed) for _, r in dense.iterrows()]):
        ref = group.loc[group["local_steps"].idxmin()]
        ref_rounds = by_run.get(ref["run_dir"], pd.DataFrame(columns=["round"]))
        ref_per_round = ref["uplink_bytes"] / max(len(ref_rounds), 1)
        for _, r in group.loc[group["local_steps"] > ref["local_steps"]].iterrows():
            mine = by_run.get(r["run_dir"], pd.DataFrame(columns=["round"]))
            k = r["local_steps"] / ref["local_steps"]
            per_round = r["uplink_bytes"] / max(len(mine), 1)
            first = ref_rounds["round"].min() if len(ref_rounds) else 0
            equal_round = first + len(mine) * k - 1
            acc, reached = accuracy_at(ref_rounds, equal_round)
            rows.append(
                {
                    "run_dir": r["run_dir"],
                    "seed": r.get("seed"),
                    "local_steps": r["local_steps"],
                    "ref_run": ref["run_dir"],
                    "ref_local_steps": ref["local_steps"],
                    "ratio": k * ref_per_round / per_round if per_round else np.nan,
                    "impact_pts": 100.0 * (r["final_accuracy"] - acc),
                    "equal_steps": reached,
                }
            )
    return pd.DataFrame(rows, columns=[*cols, "ref_local_steps"])
