"""PowerSGD and truncated SVD: exactness at full rank, Eckart-Young, warm start, sizes."""

from __future__ import annotations

import math
import struct

import pytest
import torch

from fedbench.compress import build, wire
from fedbench.compress.lowrank import SVD, PowerSGD, PowerSGDState, matmul_rows


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def low_rank(n: int, m: int, r: int, seed: int = 0) -> torch.Tensor:
    g = gen(seed)
    return torch.randn(n, r, generator=g) @ torch.randn(r, m, generator=g)


@pytest.mark.parametrize("codec", [PowerSGD(rank=4), SVD(rank=4), PowerSGD(rank=6)])
def test_exact_at_rank_at_least_the_true_rank(codec):
    x = low_rank(60, 50, 4)
    out = codec.decode(codec.encode(x, gen(1)))
    torch.testing.assert_close(out, x, atol=1e-4, rtol=1e-4)


def test_svd_error_is_the_dropped_singular_values_and_bounds_powersgd():
    x = torch.randn(80, 5, 8, generator=gen(2))  # viewed as 80 x 40
    s = torch.linalg.svdvals(x.reshape(80, 40).double())
    for r in (1, 3, 8):
        svd_err = (SVD(rank=r).decode(SVD(rank=r).encode(x)) - x).norm()
        torch.testing.assert_close(
            svd_err.double(), s[r:].square().sum().sqrt(), rtol=1e-4, atol=1e-5
        )
        psgd = PowerSGD(rank=r)
        psgd_err = (psgd.decode(psgd.encode(x, gen(r))) - x).norm()
        assert psgd_err >= svd_err * (1 - 1e-5)


def test_warm_start_converges_to_the_svd_error():
    x = torch.randn(100, 60, generator=gen(3))
    c = PowerSGD(rank=2)
    state = c.init_state(x.shape)
    assert isinstance(state, PowerSGDState) and state.q is None
    errors = [float((c.compress(x, gen(0), state)[1] - x).norm()) for _ in range(30)]
    assert state.q.shape == (60, 2)
    svd_err = float((SVD(rank=2).compress(x)[1] - x).norm())
    assert errors[-1] < errors[0]
    assert errors[-1] == pytest.approx(svd_err, rel=1e-3)
    # without a state every call starts afresh from the generator: same message each time
    assert c.encode(x, gen(5)) == c.encode(x, gen(5))
    assert c.encode(x) == c.encode(x)


def test_states_are_per_client_and_batch_equals_single_calls():
    x = torch.randn(4, 30, 7, 3, generator=gen(4))
    c = PowerSGD(rank=3, power_iterations=2)
    batch_states = [c.init_state(x.shape[1:]) for _ in range(4)]
    single_states = [c.init_state(x.shape[1:]) for _ in range(4)]
    for _ in range(3):  # the warm start carries over, per client
        msgs, decoded = c.compress_batch(x, [gen(i) for i in range(4)], batch_states)
        single = [c.encode(x[i], gen(i), single_states[i]) for i in range(4)]
        assert msgs == single
        torch.testing.assert_close(c.decode_batch(msgs), decoded, rtol=0, atol=0)
        torch.testing.assert_close(
            torch.stack([c.decode(m) for m in msgs]), decoded, rtol=0, atol=0
        )
    assert not torch.equal(batch_states[0].q, batch_states[1].q)


def test_state_of_another_tensor_is_rejected():
    c = PowerSGD(rank=2)
    state = c.init_state((20, 10))
    c.encode(torch.randn(20, 10), gen(0), state)
    with pytest.raises(ValueError, match="one state per client per tensor"):
        c.encode(torch.randn(20, 12), gen(0), state)
    with pytest.raises(ValueError, match="init_state"):
        c.encode(torch.randn(20, 10), gen(0), object())


@pytest.mark.parametrize("codec", [PowerSGD(rank=2), SVD(rank=2)])
@pytest.mark.parametrize("x", [torch.zeros(30, 20), torch.ones(30, 20), low_rank(30, 20, 1)])
def test_rank_deficient_and_zero_matrices_stay_finite(codec, x):
    state = codec.init_state(x.shape)
    for _ in range(2):
        _, decoded = codec.compress(x, gen(0), state)
        assert bool(torch.isfinite(decoded).all())
        torch.testing.assert_close(decoded, x, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("value_dtype", ["float32", "float16"])
@pytest.mark.parametrize(
    ("shape", "dense"),
    [
        ((), True),
        ((300,), True),
        ((4, 4), True),
        ((10, 10), True),
        ((64, 3, 3, 3), False),
        ((100, 40), False),
    ],
)
def test_message_size_and_dense_fallback(shape, dense, value_dtype):
    c = PowerSGD(rank=4, value_dtype=value_dtype)
    vb = 2 if value_dtype == "float16" else 4
    x = torch.randn(shape, generator=gen(5))
    msg = c.encode(x, gen(0))
    h = wire.header_size(len(shape))
    assert msg[h] == (0 if dense else 1)
    assert (c.plan(shape) is None) == dense
    if dense:
        assert len(msg) == h + 2 + math.prod(shape) * vb
        tol = 1e-3 if vb == 2 else 0.0
        torch.testing.assert_close(c.decode(msg), x, atol=tol, rtol=tol)
    else:
        n, m = shape[0], math.prod(shape[1:])
        assert len(msg) == h + 2 + 4 + (n + m) * 4 * vb


def test_min_compression_rate_follows_pytorch_hook():
    # (n + m) r * rate < n m compresses: 10x10 at rank 2 is 40 * 2 = 80 < 100
    assert PowerSGD(rank=2).plan((10, 10)) == (10, 10, 2)
    assert PowerSGD(rank=3).plan((10, 10)) is None
    assert PowerSGD(rank=3, min_compression_rate=1.0).plan((10, 10)) == (10, 10, 3)


def test_matmul_rows_matches_bmm():
    a, b = torch.randn(3, 17, 5, generator=gen(6)), torch.randn(3, 5, 9, generator=gen(7))
    torch.testing.assert_close(matmul_rows(a, b), torch.bmm(a, b))


def test_build_variants_and_bad_parameters():
    assert [build(f"powersgd{r}").inner.rank for r in (1, 2, 4, 8)] == [1, 2, 4, 8]
    assert build("svd", error_feedback=False).rank == 4
    for kwargs in (
        {"rank": 0},
        {"rank": 1.5},
        {"power_iterations": 0},
        {"value_dtype": "bf16"},
        {"min_compression_rate": 0.5},
    ):
        with pytest.raises(ValueError):
            PowerSGD(**kwargs)


def lr_msg(shape, tail: bytes, codec: int = 10) -> bytes:
    return wire.write_header(codec, torch.float32, shape) + tail


@pytest.mark.parametrize(
    ("msg", "match"),
    [
        (lr_msg((4, 4), bytes([2, 0])), "mode"),
        (lr_msg((4, 4), bytes([1, 3])), "value dtype"),
        (lr_msg((16,), bytes([1, 0]) + struct.pack("<I", 1)), "1-D"),
        (lr_msg((4, 4), bytes([1, 0]) + struct.pack("<I", 0)), "rank 0"),
        (lr_msg((4, 4), bytes([1, 0]) + struct.pack("<I", 5)), "rank 5"),
        (lr_msg((4, 4), bytes([1, 0]) + struct.pack("<I", 1) + b"\0" * 28), "truncated"),
        (
            lr_msg(
                (4, 4), bytes([1, 0]) + struct.pack("<I", 1) + struct.pack("<8f", *[math.inf] * 8)
            ),
            "non-finite",
        ),
        (lr_msg((4, 4), bytes([0, 0]) + b"\0" * 65), "trailing"),
        (lr_msg((4, 4), bytes([1, 0]), codec=13), "codec 13"),
    ],
)
def test_hostile_messages_raise_value_error(msg, match):
    with pytest.raises(ValueError, match=match):
        PowerSGD().decode(msg)
