"""The tutorial's tables rebuilt from measured runs.

Each builder returns ``(shown, data)``: ``shown`` has one string per cell for markdown
and HTML (``mean ± std (n=k)`` over seeds), ``data`` the same rows as numbers (mean, std,
n per quantity) for CSV.

The tables that quote the tutorial's claims (1-3) are in :mod:`fedbench.report.claims`,
the grouping of runs into cells in :mod:`fedbench.report.grouping`; both are re-exported
here. This module holds client scaling, time to accuracy and the end-of-sweep summary.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from fedbench.report.analysis import fmt, mean_std_n, show
from fedbench.report.claims import (
    BINS,
    CLAIMS,
    RATIO_SLACK,
    STRATEGY_CLAIMS,
    VERDICT_RULE,
    Claim,
    claim_of,
    method_comparison,
    strategies,
    tradeoff,
    untested_claims,
    verdict,
)
from fedbench.report.grouping import BOTH_WAYS, _both_ways, _num, cells, short

__all__ = [
    "BINS",
    "BOTH_WAYS",
    "CLAIMS",
    "NETWORK",
    "RATIO_SLACK",
    "STRATEGY_CLAIMS",
    "VERDICT_RULE",
    "Claim",
    "cells",
    "claim_of",
    "client_scaling",
    "has_sim_time",
    "method_comparison",
    "short",
    "status_counts",
    "strategies",
    "summary_rows",
    "time_to_accuracy",
    "tradeoff",
    "untested_claims",
    "verdict",
]


def client_scaling(df: pd.DataFrame, settings: list[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Table 4: each method at each client count (rows sorted by method, then clients)."""
    ok = df.loc[(df["status"] == "ok") & ~df["partial"]]
    shown, data = [], []
    others = [c for c in settings if c not in {"num_clients", "clients_per_round"}]
    groups = cells(ok)
    groups.sort(
        key=lambda g: (
            g["label"].iloc[0],
            str([g[c].iloc[0] for c in others]),
            _num(g["num_clients"].iloc[0]) if "num_clients" in g else 0,
        )
    )
    for g in groups:
        first = g.iloc[0]
        shown.append(
            {"Method": first["label"]}
            | {short(c): show(first.get(c)) for c in others}
            | {
                "Clients": show(first.get("num_clients")),
                "Per round": show(first.get("clients_per_round")),
                "Final accuracy (%)": fmt(g["accuracy_pct"], 2),
                "Δ accuracy vs dense (pts)": fmt(g["impact_pts"], 2, signed=True),
                "Ratio (x)": fmt(g["ratio"], 2),
                "Uplink (MB)": fmt(g["uplink_mb"], 3),
            }
        )
        row = {
            "label": first["label"],
            "params": first["params"],
            "num_clients": first.get("num_clients"),
            "clients_per_round": first.get("clients_per_round"),
        }
        row |= {c: first.get(c) for c in others}
        for col in ["accuracy_pct", "impact_pts", "ratio", "uplink_mb"]:
            m, s, n = mean_std_n(g[col])
            row |= {f"{col}_mean": m, f"{col}_std": s, f"{col}_n": n}
        data.append(row)
    return pd.DataFrame(shown), pd.DataFrame(data)


NETWORK = "network.name"


def has_sim_time(df: pd.DataFrame) -> bool:
    """True when any run has non-zero simulated time (a network model other than ideal)."""
    return bool((pd.to_numeric(df["sim_s_total"], errors="coerce").fillna(0) > 0).any())


def time_to_accuracy(df: pd.DataFrame, settings: list[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Table 5: per cell of ``ok`` runs under each network model, simulated seconds and
    uplink bytes until held-out accuracy first reaches the target (rows: network, then
    fastest first). ``settings``: varying setting keys; the network is always shown."""
    ok = df.loc[(df["status"] == "ok") & ~df["partial"]]
    others = [c for c in settings if not c.startswith("network.")]
    groups = cells(ok)
    groups.sort(
        key=lambda g: (
            show(g.iloc[0].get(NETWORK)),
            str([show(g[c].iloc[0]) for c in others]),
            _nan_last(mean_std_n(g["sim_s_to_target"])[0]),
            g["label"].iloc[0],
        )
    )
    shown, data = [], []
    for g in groups:
        first = g.iloc[0]
        secs = pd.to_numeric(g["sim_s_total"], errors="coerce")
        reached = int(g["sim_s_to_target"].notna().sum())
        shown.append(
            {"Method": first["label"], short(NETWORK): show(first.get(NETWORK))}
            | {short(c): show(first.get(c)) for c in others}
            | {
                "Sim. time to target (s)": fmt(g["sim_s_to_target"], _digits(secs)),
                "Uplink to target (MB)": fmt(g["uplink_to_target_mb"], 3),
                "Reached": f"{reached}/{len(g)}",
                "Sim. time, all rounds (s)": fmt(g["sim_s_total"], _digits(secs)),
                "Final accuracy (%)": fmt(g["accuracy_pct"], 2),
            }
        )
        row = {"label": first["label"], "params": first["params"], "network": first.get(NETWORK)}
        row |= {c: first.get(c) for c in others}
        for col in ["sim_s_to_target", "uplink_to_target_mb", "sim_s_total", "accuracy_pct"]:
            m, s, n = mean_std_n(g[col])
            row |= {f"{col}_mean": m, f"{col}_std": s, f"{col}_n": n}
        data.append(row | {"run_dirs": ";".join(g["run_dir"])})
    return pd.DataFrame(shown), pd.DataFrame(data)


def _digits(values: pd.Series) -> int:
    """Decimals that keep about three significant digits of the typical value."""
    typical = float(np.nanmedian(values)) if values.notna().any() else 1.0
    return 0 if typical >= 100 else 1 if typical >= 10 else 2 if typical >= 1 else 3


def _nan_last(v: float) -> float:
    return v if np.isfinite(v) else np.inf


def status_counts(g: pd.DataFrame) -> str:
    """``3 ok`` or ``2 ok, 1 failed, 1 partial``."""
    status = np.where(g["partial"] & (g["status"] == "ok"), "partial", g["status"])
    counts = pd.Series(status).value_counts()
    return ", ".join(f"{n} {s}" for s, n in counts.items())


def summary_rows(df: pd.DataFrame, settings: list[str]) -> pd.DataFrame:
    """One row per cell (every status): what the app prints at the end of a sweep.
    ``settings``: varying setting keys shown beside the method (clients always shown)."""
    rows = []
    both_ways = _both_ways(df)
    others = [c for c in settings if c not in {"num_clients", "clients_per_round"}]
    for g in cells(df):
        first = g.iloc[0]
        ok = g.loc[(g["status"] == "ok") & ~g["partial"]]
        rows.append(
            {
                "method": first["label"],
                "clients": show(first.get("num_clients")),
                **{short(c): show(first.get(c)) for c in others},
                "final acc (%)": fmt(ok["accuracy_pct"], 2),
                "Δ vs dense (pts)": fmt(ok["impact_pts"], 2, signed=True),
                "uplink MB": fmt(ok["uplink_mb"], 3),
                "ratio (x)": fmt(ok["ratio"], 2),
                **{
                    BOTH_WAYS[c].replace(" ratio (x)", " (x)").lower(): fmt(
                        pd.to_numeric(ok[c], errors="coerce"), 2
                    )
                    for c in both_ways
                },
                "rounds to target": fmt(ok["rounds_to_target"], 1, integer=True),
                "status": status_counts(g),
            }
        )
    return pd.DataFrame(rows)
