"""Sparse Ternary Compression: ternary values, Golomb positions, exact sizes, hostile bytes."""

from __future__ import annotations

import math
import struct

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fedbench.compress import positions, wire
from fedbench.compress.selection import resolve_k, select_topk
from fedbench.compress.stc import STC, golomb_decode, golomb_encode, rice_parameter


@pytest.mark.parametrize(("p", "expected"), [(0.01, 6), (0.001, 9), (0.1, 3), (0.5, 0), (1.0, 0)])
def test_rice_parameter_follows_sattler_sec_iv(p, expected):
    # b* = 1 + floor(log2(log(phi - 1) / log(1 - p))); p = 0.01: 1 + floor(log2(47.9)) = 6
    assert rice_parameter(100_000, round(p * 100_000)) == expected


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 3000), st.integers(0, 12), st.data())
def test_golomb_round_trip(n, b, data):
    k = data.draw(st.integers(1, n))
    chosen = data.draw(st.lists(st.integers(0, n - 1), min_size=k, max_size=k, unique=True))
    pos = np.array(sorted(chosen), dtype=np.int64)[None]
    rems, unary = golomb_encode(pos, b)
    gaps = np.diff(pos[0], prepend=-1) - 1
    assert len(unary[0]) == (int((gaps >> b).sum()) + k + 7) // 8
    back = golomb_decode(rems[0], np.frombuffer(unary[0], dtype=np.uint8), n, k, b)
    np.testing.assert_array_equal(back, pos[0])


def expected_size(x: torch.Tensor, ratio: float) -> int:
    n = x.numel()
    k = resolve_k(ratio, None, n)
    b = rice_parameter(n, k)
    idx = select_topk(x.reshape(1, -1), k)[0].numpy()
    q = (np.diff(idx, prepend=-1) - 1) >> b
    return (
        wire.header_size(x.dim())
        + 9
        + (k + 7) // 8
        + (k * b + 7) // 8
        + (int(q.sum()) + k + 7) // 8
    )


@pytest.mark.parametrize("shape", [(1000,), (64, 3, 3, 3), (5,), ()])
@pytest.mark.parametrize("ratio", [0.01, 0.1, 1.0])
def test_ternary_values_at_the_top_k_and_exact_size(shape, ratio):
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    c = STC(ratio=ratio)
    msg, decoded = c.compress(x)
    assert len(msg) == expected_size(x, ratio)
    n, k = x.numel(), resolve_k(ratio, None, x.numel())
    idx = select_topk(x.reshape(1, -1), k)[0]
    mu = x.reshape(-1)[idx].abs().mean()
    want = torch.zeros(n)
    want[idx] = mu * torch.where(x.reshape(-1)[idx] < 0, -1.0, 1.0)
    torch.testing.assert_close(decoded.reshape(-1), want)
    torch.testing.assert_close(c.decode(msg), decoded, rtol=0, atol=0)


def test_bits_per_position_near_the_paper_estimate():
    n, p = 1_000_000, 0.01
    x = torch.randn(n, generator=torch.Generator().manual_seed(1))
    msg = STC(ratio=p).encode(x)
    k, b = round(p * n), rice_parameter(n, round(p * n))
    position_bits = 8 * (len(msg) - wire.header_size(1) - 9 - (k + 7) // 8)
    paper = b + 1 / (1 - (1 - p) ** (2**b))  # Sattler et al. 2019, sec. IV
    assert position_bits / k == pytest.approx(paper, rel=0.03)
    # geometric gaps: Golomb beats Elias-Fano (~2 + log2(1/p) bits) and int32 by 4x
    assert position_bits < 8 * positions.encoded_size(n, k, positions.ELIAS_FANO) < 32 * k / 3


def test_batch_equals_single_calls():
    x = torch.randn(4, 20, 50, generator=torch.Generator().manual_seed(2))
    c = STC(ratio=0.05)
    msgs, decoded = c.compress_batch(x)
    assert msgs == [c.encode(x[i]) for i in range(4)]
    torch.testing.assert_close(c.decode_batch(msgs), decoded, rtol=0, atol=0)


def test_bad_ratio():
    for ratio in (0, -0.1, 1.5, True, "0.1"):
        with pytest.raises(ValueError, match="ratio"):
            STC(ratio=ratio)


def stc_msg(n: int, k: int, b: int, mu: float, tail: bytes) -> bytes:
    return wire.write_header(12, torch.float32, (n,)) + struct.pack("<IBf", k, b, mu) + tail


@pytest.mark.parametrize(
    ("msg", "match"),
    [
        (stc_msg(10, 11, 0, 1.0, b""), "k=11"),
        (stc_msg(10, 1, 31, 1.0, b""), "Rice parameter"),
        (stc_msg(10, 1, 0, -1.0, b"\0\1"), "mean magnitude"),
        (stc_msg(10, 1, 0, math.nan, b"\0\1"), "mean magnitude"),
        (stc_msg(10, 2, 0, 1.0, b"\0\1"), "unary codes"),
        (stc_msg(10, 1, 0, 1.0, b"\0\1\0"), "trailing"),
        (stc_msg(10, 1, 0, 1.0, b"\0\0\0\1"), "gap runs past"),
        (stc_msg(10, 1, 0, 1.0, b"\0\0\4"), ">= 10"),
        (stc_msg(10, 1, 1, 1.0, b""), "truncated"),
        (stc_msg(10, 0, 0, 1.0, b"\1"), "k=0"),
    ],
)
def test_hostile_messages_raise_value_error(msg, match):
    with pytest.raises(ValueError, match=match):
        STC().decode(msg)
