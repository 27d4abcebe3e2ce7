"""Sparse position encodings: round trips, sizes, the cheapest choice, hostile blocks."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedbench.compress import positions, wire
from fedbench.compress.positions import ALL, BITMAP, ELIAS_FANO, INDEX32


def read(block: bytes, n: int, k: int) -> np.ndarray:
    r = wire.Reader(block, "block")
    pos = positions.read_positions(r, n, k)
    r.expect_end()
    return pos


def subset(n: int, k: int, seed: int = 0) -> np.ndarray:
    return np.sort(np.random.default_rng(seed).choice(n, size=k, replace=False))


@pytest.mark.parametrize("tag", [INDEX32, BITMAP, ELIAS_FANO])
@pytest.mark.parametrize(
    ("n", "k"), [(1, 1), (10, 0), (10, 3), (1000, 1), (1000, 999), (4099, 300)]
)
def test_every_encoding_round_trips_with_its_documented_size(tag, n, k):
    idx = np.stack([subset(n, k, seed) for seed in range(3)])
    blocks = positions.encode_positions(idx, n, tag=tag)
    for row, block in zip(idx, blocks, strict=True):
        assert block[0] == tag
        assert len(block) == 1 + positions.encoded_size(n, k, tag)
        np.testing.assert_array_equal(read(block, n, k), row)


def test_all_tag_is_free_and_only_for_k_equal_n():
    block = positions.encode_positions(np.arange(5)[None], 5)[0]
    assert block == bytes([ALL])
    np.testing.assert_array_equal(read(block, 5, 5), np.arange(5))
    with pytest.raises(ValueError, match="all"):
        read(bytes([ALL]), 6, 5)


@pytest.mark.parametrize(
    ("n", "k", "expected"),
    [(10**6, 1, INDEX32), (10**6, 10**4, ELIAS_FANO), (1000, 600, BITMAP), (64, 64, ALL)],
)
def test_the_cheapest_encoding_is_chosen(n, k, expected):
    assert positions.choose(n, k) == expected
    sizes = [positions.encoded_size(n, k, t) for t in (INDEX32, BITMAP, ELIAS_FANO)]
    assert positions.positions_size(n, k) == 1 + (0 if k == n else min(sizes))


@pytest.mark.parametrize(("n", "k"), [(10**6, 10**3), (10**7, 10**5), (10**5, 10**4), (100, 7)])
def test_elias_fano_is_within_two_bits_of_the_entropy_bound(n, k):
    bits = 8 * positions.encoded_size(n, k, ELIAS_FANO)
    assert bits <= k * (2 + math.ceil(math.log2(n / k))) + 16
    entropy = (math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1)) / math.log(2)
    assert bits <= entropy + 2 * k + 16


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 5000), st.data())
def test_round_trip_any_subset(n, data):
    k = data.draw(st.integers(0, n))
    chosen = data.draw(st.lists(st.integers(0, n - 1), min_size=k, max_size=k, unique=True))
    idx = np.array(sorted(chosen), dtype=np.int64).reshape(1, k)
    block = positions.encode_positions(idx, n)[0]
    assert len(block) == positions.positions_size(n, k)
    np.testing.assert_array_equal(read(block, n, k), idx[0])


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=64), st.integers(1, 300), st.integers(0, 300))
def test_random_bytes_decode_to_valid_positions_or_raise_value_error(raw, n, k):
    try:
        pos = read(raw, n, k)
    except ValueError:
        return
    assert pos.shape == (k,)
    assert np.all(np.diff(pos) > 0) and (k == 0 or (pos[0] >= 0 and pos[-1] < n))


def idx32(*values: int) -> bytes:
    return bytes([INDEX32]) + np.array(values, dtype="<u4").tobytes()


@pytest.mark.parametrize(
    ("block", "n", "k", "match"),
    [
        (idx32(3, 2), 10, 2, "strictly increasing"),
        (idx32(2, 2), 10, 2, "strictly increasing"),
        (idx32(1, 10), 10, 2, "strictly increasing"),
        (idx32(1), 10, 2, "truncated"),
        (bytes([BITMAP, 0b0000_0111, 0]), 10, 2, "holds 3"),
        (bytes([BITMAP, 0, 0b1000_0000]), 10, 1, "past position"),
        (bytes([9]), 10, 1, "unknown positions tag"),
        (b"", 10, 1, "truncated"),
        (bytes([ELIAS_FANO]) + b"\xff" * 8, 1000, 3, "Elias-Fano"),
    ],
)
def test_hostile_blocks_raise_value_error(block, n, k, match):
    with pytest.raises(ValueError, match=match):
        read(block, n, k)


def test_elias_fano_rejects_decreasing_positions():
    n, k = 1 << 12, 4
    low = positions.elias_fano_low_bits(n, k)
    good = positions.encode_positions(np.array([[1, 700, 701, 4000]]), n, tag=ELIAS_FANO)[0]
    # swap the low bits of the 2nd and 3rd position: 700, 701 share a high part -> 701, 700
    bits = np.unpackbits(np.frombuffer(good[1:], dtype=np.uint8), bitorder="little")
    lows = bits[: k * low].reshape(k, low).copy()
    lows[[1, 2]] = lows[[2, 1]]
    bits[: k * low] = lows.reshape(-1)
    bad = bytes([ELIAS_FANO]) + np.packbits(bits, bitorder="little").tobytes()
    with pytest.raises(ValueError, match="strictly increasing"):
        read(bad, n, k)


def test_count_larger_than_n_is_rejected_before_reading():
    with pytest.raises(ValueError, match="positions among"):
        read(idx32(1, 2, 3), 2, 3)
