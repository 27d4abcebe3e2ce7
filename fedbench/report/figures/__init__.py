"""Figures of a report (matplotlib, Agg canvas: no display needed).

Each function saves PNG and SVG into ``out`` and returns the PNG path, or None with a
reason when there is nothing to draw. Curves are the mean over seeds; bands are
mean ± one standard deviation over seeds. ``style`` holds the shared look; ``curves``,
``scatter`` and ``bench`` the figures.
"""

from fedbench.report.figures.bench import bench_throughput, load_bench
from fedbench.report.figures.curves import accuracy_vs_bytes, accuracy_vs_round, accuracy_vs_time
from fedbench.report.figures.scatter import client_scaling, pareto_front, ratio_vs_accuracy
from fedbench.report.figures.style import (
    _panel_groups,
    baseline_labels,
    is_dense_label,
    line_label,
    setting_title,
    si_bytes,
    split_settings,
    styles,
)

__all__ = [
    "_panel_groups",
    "accuracy_vs_bytes",
    "accuracy_vs_round",
    "accuracy_vs_time",
    "baseline_labels",
    "bench_throughput",
    "client_scaling",
    "is_dense_label",
    "line_label",
    "load_bench",
    "pareto_front",
    "ratio_vs_accuracy",
    "setting_title",
    "si_bytes",
    "split_settings",
    "styles",
]
