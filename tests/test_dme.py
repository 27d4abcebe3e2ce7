"""The DME leaderboard script: unbiased codecs average out as 1/n; --quick writes its files."""

import importlib.util
import math
from pathlib import Path

import pytest
import torch

from fedbench.compress import build

_SPEC = importlib.util.spec_from_file_location(
    "dme", Path(__file__).resolve().parents[1] / "benchmarks" / "dme.py"
)
dme = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(dme)


def _nmse(codec, n: int, d: int = 1024, seeds: int = 6) -> float:
    return (
        sum(dme.measure(codec, dme.vectors("gaussian", n, d, s), s)["nmse"] for s in range(seeds))
        / seeds
    )


@pytest.mark.parametrize("name", ["qsgd", "randk", "drive_unbiased", "eden"])
def test_unbiased_codecs_nmse_falls_as_one_over_n(name):
    codec = build(name, error_feedback=False)
    ratio = _nmse(codec, 1) / _nmse(codec, 10)
    assert 5 <= ratio <= 20, ratio


def test_biased_drive_keeps_its_shrinkage_when_clients_agree():
    """Same vector at every client: the unbiased scale averages out, the MSE-optimal one
    keeps E[x_hat] ~ (2/pi) x, an NMSE floor of (1 - 2/pi)^2 ~ 0.13 plus variance / n."""
    x = dme.vectors("gaussian", 1, 4096, 0).expand(10, 4096).contiguous()
    biased = dme.measure(build("drive"), x, 0)["nmse"]
    unbiased = dme.measure(build("drive_unbiased"), x, 0)["nmse"]
    shrink = 1 - 2 / math.pi  # vNMSE of one client; the bias^2 part does not average out
    assert biased == pytest.approx(shrink**2 + (shrink - shrink**2) / 10, rel=0.1)
    assert unbiased < biased / 2


def test_quick_run_writes_csv_markdown_and_figure(tmp_path):
    dme.main(
        [
            "--out",
            str(tmp_path),
            "--quick",
            "--seeds",
            "2",
            "--only",
            "drive",
            "eden",
            "qsgd",
            "qsgd+zstd",
        ]
    )
    csv_text = (tmp_path / "dme.csv").read_text()
    assert csv_text.startswith("codec,family,strategy,dist,n,d,bits_per_coord,nmse")
    assert csv_text.count("\n") == 1 + 4 * 2  # header + 4 codecs x (n = 1, 10)
    md = (tmp_path / "dme.md").read_text()
    assert "| eden |" in md and "sketch" in md
    assert (tmp_path / "dme_pareto.png").stat().st_size > 1000


def test_bits_per_coordinate_counts_the_real_bytes():
    x = torch.randn(2, 1024)
    row = dme.measure(build("none"), x, 0)
    assert row["bits_per_coord"] == pytest.approx(32 + 8 * 10 / 1024)
    assert row["nmse"] == 0.0
