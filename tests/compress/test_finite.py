"""The one finite check (fedbench/compress/finite.py)."""

import pytest
import torch

from fedbench.compress.finite import all_finite, check_stats, require_finite


def test_all_finite_sees_nan_and_inf_and_large_finite_values():
    assert all_finite(torch.ones(3)) and all_finite(torch.zeros(0))
    assert not all_finite(torch.tensor([1.0, float("nan")]))
    assert not all_finite(torch.tensor([float("-inf"), 1.0]))
    # the sum overflows to inf, but every value is finite: confirmed by min/max
    assert all_finite(torch.full((4,), 3e38))
    assert all_finite(torch.full((4,), 6e4, dtype=torch.float16))
    assert all_finite(torch.arange(3))  # integers are always finite


def test_require_finite_counts_the_bad_values():
    require_finite(torch.ones(3))
    with pytest.raises(ValueError, match="2 non-finite"):
        require_finite(torch.tensor([1.0, float("nan"), float("inf")]), "quant input")


def test_check_stats_names_the_codec():
    x = torch.tensor([1.0, float("nan")])
    with pytest.raises(ValueError, match="qsgd input holds 1 non-finite"):
        check_stats(torch.tensor([float("nan")]), x, "qsgd")
    with pytest.raises(ValueError, match="qsgd: input magnitudes overflow"):
        check_stats(torch.tensor([float("inf")]), torch.full((2,), 3e38), "qsgd")
