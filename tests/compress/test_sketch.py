"""Count sketch (FetchSGD): linearity, heavy-hitter recovery, sizes, the server's merge,
momentum and error feedback inside the sketch, and hostile messages."""

from __future__ import annotations

import struct

import pytest
import torch

from fedbench.compress import wire
from fedbench.compress.sketch import (
    MAX_ROWS,
    CountSketch,
    hashes,
    lower_median,
    sketch,
    unsketch,
)


def randn(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def table(c: CountSketch, msg: bytes, n: int) -> torch.Tensor:
    """The (rows, cols) table a message carries."""
    rows, cols = c.table_shape(n)
    payload = msg[wire.header_size(1) + 13 :]
    return torch.frombuffer(bytearray(payload), dtype=torch.float32).reshape(rows, cols)


def spiky(n: int, heavy: dict[int, float], seed: int = 0) -> torch.Tensor:
    x = randn(n, seed=seed) * 0.001
    for i, v in heavy.items():
        x[i] = v
    return x


def test_sketches_are_linear():
    c = CountSketch(rows=3, cols=50, cols_ratio=None)
    x, y = randn(1000, seed=1), randn(1000, seed=2)
    sx, sy, sxy = (table(c, c.encode(v), 1000) for v in (x, y, 2 * x - 3 * y))
    torch.testing.assert_close(sxy, 2 * sx - 3 * sy, rtol=1e-5, atol=1e-4)


def test_sketch_matches_the_definition():
    """S[j, h_j(i)] = sum of s_j(i) x_i over the i hashed there (Charikar et al. 2002)."""
    rows, cols, n = 3, 7, 40
    x = randn(n, seed=4)
    slots, signs = hashes(11, n, rows, cols)
    want = torch.zeros(rows * cols)
    for j in range(rows):
        for i in range(n):
            want[slots[j, i]] += float(signs[j, i]) * float(x[i])
    torch.testing.assert_close(sketch(x[None], slots, signs, cols)[0].reshape(-1), want)
    assert ((slots // cols) == torch.arange(rows)[:, None]).all()  # row j's slots in row j
    assert set(signs.unique().tolist()) == {-1, 1}


def test_decode_recovers_heavy_hitters():
    n = 20_000
    heavy = {17: 5.0, 4000: -3.0, 12345: 4.0, 19999: 2.5}
    x = spiky(n, heavy)
    c = CountSketch(rows=5, cols=500, cols_ratio=None)
    est = c.decode(c.encode(x))
    for i, v in heavy.items():
        assert float(est[i]) == pytest.approx(v, abs=0.05)
    # the light coordinates stay light
    light = torch.ones(n, dtype=torch.bool)
    light[list(heavy)] = False
    assert float(est[light].abs().max()) < 0.1


def test_message_size_is_the_table_plus_header():
    c = CountSketch(rows=5, cols_ratio=0.02)
    msg = c.encode(randn(1000))
    assert c.table_shape(1000) == (5, 20)
    assert len(msg) == wire.header_size(1) + 13 + 4 * 5 * 20
    # a tensor the sketch would not shrink goes dense: one byte more than `none`
    assert c.table_shape(10) is None
    dense = c.encode(randn(10))
    assert len(dense) == wire.header_size(1) + 1 + 4 * 10
    torch.testing.assert_close(c.decode(dense), randn(10), rtol=0, atol=0)


def test_the_seed_travels_in_the_message_and_must_match_to_merge():
    x = randn(2000)
    a, b = CountSketch(hash_seed=1), CountSketch(hash_seed=2)
    ma, mb = a.encode(x), b.encode(x)
    assert ma != mb
    # decode is self-describing: any instance decodes any seed
    torch.testing.assert_close(b.decode(ma), a.decode(ma), rtol=0, atol=0)
    with pytest.raises(ValueError, match="hash seed"):
        a.decode_batch([ma, mb])
    with pytest.raises(ValueError, match="hash seed"):
        a.aggregate([ma, mb], torch.tensor([0.5, 0.5]), a.init_server_state((2000,)))


def test_aggregate_is_fetchsgd_algorithm_1_by_hand():
    """S = sum w S_c; S_u = rho S_u + S; S_e += S_u; D = top-k(U(S_e)); zero S(D)'s buckets."""
    n, rho = 4000, 0.5
    c = CountSketch(rows=5, cols=400, cols_ratio=None, ratio=None, k=2, momentum=rho)
    slots, signs = hashes(0, n, 5, 400)
    state = c.init_server_state((n,))
    u = torch.zeros(5, 400)
    e = torch.zeros(5, 400)
    for t in range(3):
        xs = [spiky(n, {100 * t + 5: 3.0 + t, 2000 + t: -2.0}, seed=10 * t + i) for i in range(3)]
        w = torch.tensor([0.2, 0.3, 0.5])
        msgs = [c.encode(x) for x in xs]
        update = c.aggregate(msgs, w, state)
        merged = sum(wi * table(c, m, n) for wi, m in zip(w, msgs, strict=True))
        u = rho * u + merged
        e = e + u
        est = unsketch(e[None], slots, signs)[0]
        top = est.abs().topk(2).indices
        want = torch.zeros(n)
        want[top] = est[top]
        torch.testing.assert_close(update, want, rtol=1e-5, atol=1e-6)
        occupied = slots[:, top].reshape(-1)
        u.view(-1)[occupied] = 0
        e.view(-1)[occupied] = 0
        torch.testing.assert_close(state.u, u, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(state.e, e, rtol=1e-5, atol=1e-6)
        # the heavy coordinates of the round are the ones applied, near their average
        assert sorted(top.tolist()) == sorted([100 * t + 5, 2000 + t])
    assert int(torch.count_nonzero(state.e)) > 0  # what was not applied is still held


def test_dense_tensors_are_averaged_exactly_and_momentum_is_zeroed():
    c = CountSketch(rows=5, cols_ratio=0.5, momentum=0.9)
    xs = randn(3, 4, 2, seed=6)
    w = torch.tensor([0.1, 0.6, 0.3])
    state = c.init_server_state((4, 2))
    update = c.aggregate(c.encode_batch(xs), w, state)
    torch.testing.assert_close(update, torch.tensordot(w, xs, dims=1))
    assert not state.u.any() and not state.e.any()


@pytest.mark.parametrize(
    "kwargs",
    [
        {"rows": 0},
        {"rows": MAX_ROWS + 1},
        {"cols": 10},  # and cols_ratio: both given
        {"cols": 0, "cols_ratio": None},
        {"cols_ratio": 0.0},
        {"ratio": None, "k": None},
        {"momentum": 1.0},
        {"hash_seed": -1},
    ],
)
def test_bad_settings_raise_value_error(kwargs):
    with pytest.raises(ValueError):
        CountSketch(**kwargs)


def test_aggregate_refuses_bad_weights_and_a_mismatched_state():
    c = CountSketch()
    msgs = c.encode_batch(randn(2, 1000))
    with pytest.raises(ValueError, match="weights"):
        c.aggregate(msgs, torch.tensor([0.0, 0.0]), c.init_server_state((1000,)))
    with pytest.raises(ValueError, match="server state"):
        c.aggregate(msgs, torch.tensor([0.5, 0.5]), CountSketch(rows=3).init_server_state((1000,)))


def test_hostile_fields_raise_value_error():
    c = CountSketch(rows=5, cols_ratio=0.02)
    msg = c.encode(randn(1000))
    h = wire.header_size(1)
    for bad_rows in (MAX_ROWS + 1, 255):
        with pytest.raises(ValueError, match="rows"):
            c.decode(msg[:h] + bytes([bad_rows]) + msg[h + 1 :])
    # a table as large as the tensor is not a sketch this encoder writes
    big = msg[:h] + struct.pack("<BIQ", 5, 200, 0) + bytes(4 * 5 * 200)
    with pytest.raises(ValueError, match="dense"):
        c.decode(big)
    nan = bytearray(msg)
    nan[-4:] = struct.pack("<f", float("nan"))
    with pytest.raises(ValueError, match="non-finite"):
        c.decode(bytes(nan))


@pytest.mark.parametrize("rows", range(1, 11))
def test_lower_median_matches_torch_median(rows):
    """The sorting network (rows <= 8) and the torch.median fallback agree with
    torch.median, the lower middle value for an even count, ties included."""
    g = torch.Generator().manual_seed(rows)
    values = torch.randint(-3, 4, (rows, 5000), generator=g).float()  # many ties
    values[:, :100] = torch.randn(rows, 100, generator=g)
    got = lower_median([v.clone() for v in values])
    torch.testing.assert_close(got, values.median(dim=0).values, rtol=0, atol=0)
