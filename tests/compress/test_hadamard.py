"""The randomised Hadamard stage: orthonormality, its own inverse, seeds, batch invariance."""

import math

import pytest
import torch

from fedbench.compress import hadamard


def _dense_hadamard(n: int) -> torch.Tensor:
    h = torch.ones(1, 1, dtype=torch.float64)
    while h.shape[0] < n:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    return h / math.sqrt(n)


@pytest.mark.parametrize("n", [1, 2, 8, 32, 1024, 2**13])
def test_fwht_matches_the_dense_sylvester_matrix(n):
    x = torch.randn(3, n, generator=torch.Generator().manual_seed(n), dtype=torch.float64)
    want = (x @ _dense_hadamard(n)).float()
    torch.testing.assert_close(hadamard.fwht(x.float()), want, rtol=1e-5, atol=1e-5)


def test_fwht_is_its_own_inverse_and_preserves_the_norm():
    x = torch.randn(2, 2**12, generator=torch.Generator().manual_seed(0))
    y = hadamard.fwht(x)
    torch.testing.assert_close(y.norm(dim=1), x.norm(dim=1))
    torch.testing.assert_close(hadamard.fwht(y), x, rtol=1e-5, atol=1e-5)


def test_fwht_refuses_a_length_that_is_not_a_power_of_two():
    with pytest.raises(ValueError, match="power of two"):
        hadamard.fwht(torch.zeros(1, 12))


@pytest.mark.parametrize("d", [0, 1, 2, 3, 1000, 1024, 1025])
def test_padded_size(d):
    n = hadamard.padded_size(d)
    assert n >= max(d, 1) and n & (n - 1) == 0 and (n == 1 or n // 2 < d)


@pytest.mark.parametrize("d", [1, 13, 1001, 70_001])
def test_rotation_round_trip_and_batch_equals_single_bit_for_bit(d):
    x = torch.randn(4, d, generator=torch.Generator().manual_seed(d))
    seeds = [11, 12, 13, 14]
    y = hadamard.rotate(x, seeds)
    assert y.shape == (4, hadamard.padded_size(d))
    torch.testing.assert_close(hadamard.unrotate(y, seeds, d), x, rtol=1e-5, atol=1e-5)
    for i in range(4):
        assert torch.equal(hadamard.rotate(x[i : i + 1], seeds[i : i + 1])[0], y[i])
        one = hadamard.unrotate(y[i : i + 1], seeds[i : i + 1], d)[0]
        assert torch.equal(one, hadamard.unrotate(y, seeds, d)[i])


def test_signs_come_from_the_seed_alone():
    a, b = hadamard.negative_mask(5, 1000), hadamard.negative_mask(5, 1000)
    assert (a == b).all() and not (a == hadamard.negative_mask(6, 1000)).all()
    assert 400 < a.sum() < 600  # Rademacher: about half flipped
    # a prefix of a longer draw: the signs of n coordinates do not depend on the padding
    assert (hadamard.negative_mask(5, 64) == a[:64]).all()


def test_seeds_are_drawn_from_the_generator():
    s1 = hadamard.draw_seeds([torch.Generator().manual_seed(1), torch.Generator().manual_seed(2)])
    s2 = hadamard.draw_seeds([torch.Generator().manual_seed(1), torch.Generator().manual_seed(2)])
    assert s1 == s2 and s1[0] != s1[1] and all(0 <= s < 2**63 for s in s1)


def test_rotation_spreads_a_spike():
    """One large coordinate becomes n coordinates of equal magnitude ||x|| / sqrt(n)."""
    x = torch.zeros(1, 256)
    x[0, 7] = 16.0
    y = hadamard.rotate(x, [3])
    torch.testing.assert_close(y.abs(), torch.ones(1, 256))


def test_sign_table_expands_the_same_diagonal_as_the_mask():
    from fedbench.compress.hadamard import _signs

    for n in (1, 8, 13, 1000):
        signs = _signs([7, 8], n, torch.device("cpu"))
        for row, seed in zip(signs, (7, 8), strict=True):
            want = torch.from_numpy(hadamard.negative_mask(seed, n))
            assert torch.equal(row < 0, want) and bool((row.abs() == 1).all())


def test_cpu_kernel_agrees_with_the_portable_transform():
    """The compiled CPU transform and the BLAS-product one (other devices) agree."""
    from fedbench.compress.hadamard import _fwht_blas

    for n in (1, 2, 8, 16, 64, 2048, 4096, 2**15):
        x = torch.randn(3, n, generator=torch.Generator().manual_seed(n))
        torch.testing.assert_close(hadamard.fwht(x), _fwht_blas(x), rtol=1e-5, atol=1e-5)


def test_unrotate_levels_is_unrotate_of_the_looked_up_levels():
    g = torch.Generator().manual_seed(0)
    d = 1000
    n = hadamard.padded_size(d)
    codes = torch.randint(0, 4, (3, n), generator=g, dtype=torch.uint8)
    levels = torch.randn(3, 4, generator=g)
    want = hadamard.unrotate(torch.gather(levels, 1, codes.long()), [1, 2, 3], d)
    got = hadamard.unrotate_levels(codes, levels, [1, 2, 3], d)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_sign_stats_are_the_signs_and_the_sums():
    from fedbench.compress.bitpack import pack_codes

    y = torch.randn(4, 256, generator=torch.Generator().manual_seed(0))
    y[0, :3] = torch.tensor([0.0, -0.0, 1.0])
    packed, l1, sq = hadamard.sign_stats(y)
    assert (packed == pack_codes(~torch.signbit(y), 1)).all()
    torch.testing.assert_close(l1, y.double().abs().sum(1))
    torch.testing.assert_close(sq, y.double().square().sum(1))
