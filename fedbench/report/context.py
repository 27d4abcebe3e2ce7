"""What every report section reads (:class:`Context`), apart from the sections, so
:mod:`fedbench.report.sections` and :mod:`fedbench.report.appendix` share it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from fedbench.report.render import Document
from fedbench.results import Runs


@dataclass
class Context:
    """What every section reads (and ``csv``, the tables to write)."""

    doc: Document
    df: pd.DataFrame  # analysis.derive(runs): a row per run
    runs: Runs
    paths: Sequence[Path]
    out: Path
    figdir: Path
    bench: Path | None
    settings: list[str]  # the setting columns that split these runs
    csv: dict[str, pd.DataFrame] = field(default_factory=dict)
    tables_shown: int = 0

    def numbered(self, title: str) -> None:
        """A numbered heading: tables are numbered in the order they appear."""
        self.tables_shown += 1
        self.doc.heading(f"{self.tables_shown}. {title}")

    @property
    def ok(self) -> pd.DataFrame:
        return self.df.loc[(self.df["status"] == "ok") & ~self.df["partial"]]
