"""Per-run result files and loading a whole sweep into pandas.

A run folder holds (see DESIGN.md):

- ``.hydra/config.yaml``: the composed config (``.hydra/hydra.yaml`` names the chosen
  compressor variant under ``hydra.runtime.choices.compressor``);
- ``metrics.jsonl``: one JSON object per round, appended and flushed as the run goes,
  so a killed run leaves every finished round readable (the last line may be cut);
- ``summary.json``: written once, atomically, when the run ends.

The writer side (:class:`RunWriter`) is used by the app; the reader side
(:func:`load_runs`) by the report. Loading never raises on a damaged run folder: what
can be read is loaded and every defect is listed in :attr:`Runs.problems`.

This module is the public face; the code lives in :mod:`fedbench.results_files` (file
names, writer, readers), :mod:`fedbench.results_config` (bounded config reading) and
:mod:`fedbench.results_load` (a sweep into pandas).
"""

from __future__ import annotations

from fedbench.results_config import (
    MAX_CONFIG_BYTES,
    MAX_CONFIG_NODES,
    ConfigFileError,
    load_config_file,
    read_compressor_choice,
    read_config,
)
from fedbench.results_files import (
    CONFIG,
    EXECUTION_KEYS,
    HYDRA,
    METRICS,
    STATUSES,
    SUMMARY,
    RunWriter,
    read_metrics,
    read_summary,
    shared_mode,
    write_json_atomic,
)
from fedbench.results_load import (
    Runs,
    family_of_target,
    find_run_dirs,
    flatten,
    last_sequence,
    load_runs,
)

__all__ = [
    "CONFIG",
    "EXECUTION_KEYS",
    "HYDRA",
    "MAX_CONFIG_BYTES",
    "MAX_CONFIG_NODES",
    "METRICS",
    "STATUSES",
    "SUMMARY",
    "ConfigFileError",
    "RunWriter",
    "Runs",
    "family_of_target",
    "find_run_dirs",
    "flatten",
    "last_sequence",
    "load_config_file",
    "load_runs",
    "read_compressor_choice",
    "read_config",
    "read_metrics",
    "read_summary",
    "shared_mode",
    "write_json_atomic",
]
