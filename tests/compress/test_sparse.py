"""Top-k and random-k: selection semantics, exact sizes, unbiasedness, hostile bytes."""

from __future__ import annotations

import math
import struct

import numpy as np
import pytest
import torch

from fedbench.compress import build, positions, wire
from fedbench.compress.selection import resolve_k, sample_positions, select_topk
from fedbench.compress.sparse import RandK, TopK, kept


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def stable_topk(x: torch.Tensor, k: int) -> torch.Tensor:
    """Reference: the k first of a stable sort by decreasing |x|, ascending. x (c, n)."""
    order = torch.sort(x.abs(), dim=1, descending=True, stable=True).indices
    return order[:, :k].sort(dim=1).values


def support(decoded: torch.Tensor) -> torch.Tensor:
    d = decoded.reshape(decoded.shape[0], -1)
    return (d != 0).nonzero()[:, 1].reshape(d.shape[0], -1)


@pytest.mark.parametrize(("n", "k"), [(50, 7), (1000, 1), (300_000, 3000), (300_000, 30_000)])
def test_exact_topk_equals_a_stable_sort(n, k):
    x = torch.randn(3, n, generator=gen(n))
    torch.testing.assert_close(select_topk(x, k), stable_topk(x, k), rtol=0, atol=0)


def test_ties_go_to_the_lower_index():
    x = torch.tensor([[1.0, -3.0, 3.0, 2.0, -3.0, 3.0]])
    assert select_topk(x, 2).tolist() == [[1, 2]]
    assert select_topk(x, 4).tolist() == [[1, 2, 4, 5]]
    ties = torch.randint(-3, 4, (2, 400_000), generator=gen(0)).float()  # fast path, many ties
    torch.testing.assert_close(select_topk(ties, 5000), stable_topk(ties, 5000), rtol=0, atol=0)


def test_exact_when_the_strided_sample_misleads():
    """Every sampled value is large, but there are fewer than k of them: full fallback."""
    n, s = 400_000, 65536
    x = torch.rand(1, n, generator=gen(1))
    x[0, :: n // s] = 10.0
    k = 70_000
    torch.testing.assert_close(select_topk(x, k, s), stable_topk(x, k), rtol=0, atol=0)


def test_topk_keeps_the_largest_values_unchanged():
    x = torch.randn(2, 40, 25, generator=gen(2))
    c = TopK(ratio=0.1)
    msgs, decoded = c.compress_batch(x)
    flat = x.reshape(2, -1)
    idx = stable_topk(flat, 100)
    torch.testing.assert_close(support(decoded), idx, rtol=0, atol=0)
    torch.testing.assert_close(decoded.reshape(2, -1).gather(1, idx), flat.gather(1, idx))
    assert [kept(m) for m in msgs] == [100, 100]


@pytest.mark.parametrize(
    ("ratio", "k", "n", "expected"),
    [
        (0.1, None, 1000, 100),
        (1e-9, None, 1000, 1),
        (None, 5000, 1000, 1000),
        (None, 3, 10, 3),
        (0.5, None, 0, 0),
    ],
)
def test_k_resolution(ratio, k, n, expected):
    assert resolve_k(ratio, k, n) == expected


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"ratio": 0.1, "k": 3},
        {"ratio": 0.0},
        {"ratio": 1.5},
        {"k": 0},
        {"k": 2.5},
        {"ratio": 0.1, "value_dtype": "int8"},
    ],
)
def test_bad_parameters_raise_value_error(kwargs):
    for cls in (TopK, RandK):
        with pytest.raises(ValueError):
            cls(**kwargs)


@pytest.mark.parametrize("value_dtype", ["float32", "float16"])
@pytest.mark.parametrize("shape", [(7,), (100, 30), (4099,), (2, 3, 5)])
def test_topk_message_size_is_exactly_the_documented_one(shape, value_dtype):
    c = TopK(ratio=0.05, value_dtype=value_dtype)
    n, k = math.prod(shape), resolve_k(0.05, None, math.prod(shape))
    vb = 2 if value_dtype == "float16" else 4
    msg = c.encode(torch.randn(shape, generator=gen(3)))
    assert len(msg) == wire.header_size(len(shape)) + 5 + positions.positions_size(n, k) + k * vb


def test_approximate_topk_keeps_a_threshold_set_and_reports_its_count():
    x = torch.randn(4, 200_000, generator=gen(4))
    c = TopK(ratio=0.01, approximate=True)
    for gens in (None, [gen(i) for i in range(4)]):
        msgs, decoded = c.compress_batch(x, gens)
        for i, msg in enumerate(msgs):
            mask = decoded[i] != 0
            assert kept(msg) == int(mask.sum())
            assert 1000 <= kept(msg) <= 4000  # ~k = 2000, a sampled estimate
            # a threshold set: nothing dropped is larger than anything kept
            assert x[i][mask].abs().min() >= x[i][~mask].abs().max()
            n, k = 200_000, kept(msg)
            assert len(msg) == wire.header_size(1) + 5 + positions.positions_size(n, k) + 4 * k
    # deterministic without a generator, reproducible with one
    assert c.encode(x[0]) == c.encode(x[0])
    assert c.encode(x[0], gen(9)) == c.encode(x[0], gen(9))


def test_approximate_equals_exact_when_the_sample_is_everything():
    x = torch.randn(1, 5000, generator=gen(5))
    approx = TopK(ratio=0.02, approximate=True).compress_batch(x)[1]
    exact = TopK(ratio=0.02).compress_batch(x)[1]
    torch.testing.assert_close(approx, exact, rtol=0, atol=0)


def test_fp16_values_and_overflow():
    c = TopK(k=2, value_dtype="float16")
    x = torch.tensor([0.1, -2.0, 3.0, 0.0])
    out = c.decode(c.encode(x))
    torch.testing.assert_close(out, torch.tensor([0.0, -2.0, 3.0, 0.0]))
    with pytest.raises(ValueError, match="overflow"):
        c.encode(torch.tensor([1e6, 0.0, 0.0]))


def test_sample_positions_are_distinct_sorted_uniform_and_reproducible():
    for n, k in [(10, 10), (10, 4), (1000, 10), (10**6, 500)]:
        p = sample_positions(n, k, gen(7))
        assert p.numel() == k and bool((p[1:] > p[:-1]).all()) and int(p[0]) >= 0 and int(p[-1]) < n
        torch.testing.assert_close(p, sample_positions(n, k, gen(7)), rtol=0, atol=0)
    counts = torch.zeros(20)
    for seed in range(2000):
        counts[sample_positions(20, 3, gen(seed))] += 1
    expected = 2000 * 3 / 20
    assert float(((counts - expected) ** 2 / expected).sum()) < 45  # chi2, 19 dof: p ~ 1e-3


def test_randk_is_scaled_by_n_over_k_and_unbiased():
    x = torch.randn(40, generator=gen(8))
    c = RandK(k=8)
    _, decoded = c.compress_batch(x.expand(4000, 40), [gen(s) for s in range(4000)])
    nz = decoded != 0
    torch.testing.assert_close(decoded[nz], (x.expand(4000, 40) * 5.0)[nz])
    assert bool((nz.sum(1) == 8).all())
    # E = x; each coordinate's mean has std |x| * sqrt(n/k - 1) / sqrt(4000)
    std = x.abs() * 2.0 / math.sqrt(4000)
    assert bool(((decoded.mean(0) - x).abs() <= 5 * std + 1e-6).all())


@pytest.mark.parametrize("shared_seed", [False, True])
def test_randk_batch_equals_single_calls_and_decodes(shared_seed):
    x = torch.randn(5, 300, generator=gen(9))
    c = RandK(ratio=0.05, shared_seed=shared_seed)
    msgs, decoded = c.compress_batch(x, [gen(i) for i in range(5)])
    assert msgs == [c.encode(x[i], gen(i)) for i in range(5)]
    torch.testing.assert_close(c.decode_batch(msgs), decoded, rtol=0, atol=0)
    where = 8 if shared_seed else positions.positions_size(300, 15)
    assert all(len(m) == wire.header_size(1) + 5 + where + 15 * 4 for m in msgs)
    if shared_seed:
        seed = struct.unpack_from("<Q", msgs[0], wire.header_size(1) + 5)[0]
        expected = sample_positions(300, 15, torch.Generator().manual_seed(seed))
        torch.testing.assert_close(support(decoded[:1]), expected[None], rtol=0, atol=0)


def test_build_variants():
    assert build("topk1", error_feedback=False).ratio == 0.01
    assert build("topk01", error_feedback=False).ratio == 0.001
    assert build("randk10").ratio == 0.1
    with pytest.raises(ValueError, match="exactly one"):
        build("topk", k=100)
    assert build("topk", k=100, ratio=None, error_feedback=False).k == 100


def message(n: int, flags: int, k: int, tail: bytes, codec: int = 8) -> bytes:
    return wire.write_header(codec, torch.float32, (n,)) + struct.pack("<BI", flags, k) + tail


@pytest.mark.parametrize(
    ("msg", "match"),
    [
        (message(10, 0, 11, b""), "k=11"),
        (message(10, 4, 1, b""), "unknown flags"),
        (message(10, 2, 1, b"\0" * 12), "unknown flags"),  # a seed is randk's, not topk's
        (message(10, 0, 1, bytes([0]) + struct.pack("<If", 3, float("nan"))), "non-finite"),
        (message(10, 0, 1, bytes([0]) + struct.pack("<If", 3, 1.0) + b"x"), "trailing"),
        (message(10, 0, 1, bytes([0]) + struct.pack("<I", 3)), "truncated"),
        (message(10, 0, 2, bytes([0]) + struct.pack("<IIff", 3, 3, 1, 1)), "strictly increasing"),
    ],
)
def test_hostile_topk_messages_raise_value_error(msg, match):
    with pytest.raises(ValueError, match=match):
        TopK(ratio=0.1).decode(msg)


def test_randk_rejects_messages_from_topk_and_nan_input():
    msg = TopK(ratio=0.5).encode(torch.randn(10))
    with pytest.raises(ValueError, match="codec"):
        RandK(ratio=0.5).decode(msg)
    with pytest.raises(ValueError, match="non-finite"):
        RandK(ratio=0.5).encode(torch.tensor([1.0, float("nan")]))
    assert np.isfinite(TopK(k=1).decode(msg).numpy()).all()
