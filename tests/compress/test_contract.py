"""The compressor contract, checked for every name ``fedbench.compress.available()`` lists.

A codec added under conf/compressor/ is picked up here without editing this file.
"""

from __future__ import annotations

import struct

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedbench.compress import ErrorFeedback, available, buckets, build, wire

NAMES = available()
SHAPES = [(), (1,), (7,), (13,), (1001,), (3, 5, 7)]
DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]
FUZZ = settings(
    max_examples=25, deadline=2000, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def raw(name: str):
    """The codec itself, without the error-feedback wrapper its YAML may ask for."""
    return build(name, error_feedback=False)


def gens(n: int) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(i) for i in range(n)]


def states(c, n: int, shape, dtype=torch.float32) -> list:
    return [c.init_state(shape, dtype=dtype) for _ in range(n)]


def sample(shape, dtype=torch.float32, seed: int = 0) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed)).to(dtype)


def exact(a: torch.Tensor, b: torch.Tensor) -> None:
    torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_round_trip_gives_back_shape_and_dtype(name, dtype):
    c = raw(name)
    for shape in SHAPES:
        x = sample(shape, dtype)
        state = c.init_state(shape, dtype=dtype)
        msg, decoded = c.compress(x, torch.Generator().manual_seed(0), state)
        assert isinstance(msg, bytes)
        out = c.decode(msg)
        assert out.shape == x.shape and out.dtype == dtype, (shape, out.shape, out.dtype)
        # what the sender thinks it sent is what the receiver decodes
        exact(out, decoded)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("shape", [(), (13,), (1001,), (3, 5, 7)], ids=str)
def test_batch_agrees_with_single_bit_for_bit(name, shape):
    c = raw(name)
    x = torch.stack([sample(shape, seed=i) * (i + 1) for i in range(4)])
    msgs, decoded = c.compress_batch(x, gens(4), states(c, 4, shape))
    one_state = states(c, 4, shape)
    singles = [c.compress(x[i], g, one_state[i]) for i, g in enumerate(gens(4))]
    assert msgs == [m for m, _ in singles]
    exact(decoded, torch.stack([d for _, d in singles]))
    exact(c.decode_batch(msgs), torch.stack([c.decode(m) for m in msgs]))
    exact(c.decode_batch(msgs), decoded)
    # the bytes-only paths send the same bytes
    assert c.encode_batch(x, gens(4), states(c, 4, shape)) == msgs
    assert c.encode(x[1], gens(2)[1], c.init_state(shape)) == msgs[1]


@pytest.mark.parametrize("name", NAMES)
def test_large_batch_agrees_with_single(name, monkeypatch):
    """Past the sizes where reductions split across threads or codecs work in chunks."""
    monkeypatch.setattr(buckets, "CHUNK", 4099)  # many chunks, none aligned to a bucket
    c = raw(name)
    x = torch.stack([sample((70_001,), seed=i) for i in range(2)])
    msgs, decoded = c.compress_batch(x, gens(2), states(c, 2, (70_001,)))
    for i, g in enumerate(gens(2)):
        msg, one = c.compress(x[i], g, c.init_state((70_001,)))
        assert msg == msgs[i]
        exact(one, decoded[i])


@pytest.mark.parametrize("name", NAMES)
def test_same_generator_state_gives_same_bytes(name):
    c = raw(name)
    x = sample((257,))
    a = c.encode(x, torch.Generator().manual_seed(7), c.init_state((257,)))
    b = c.encode(x, torch.Generator().manual_seed(7), c.init_state((257,)))
    assert a == b


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("where", [0, 6, 12])
def test_non_finite_input_raises(name, bad, where):
    c = raw(name)
    x = sample((13,))
    x[where] = bad
    with pytest.raises(ValueError):
        c.encode(x, torch.Generator().manual_seed(0), c.init_state((13,)))


@pytest.mark.parametrize("name", NAMES)
def test_error_feedback_invariant(name):
    """x + e_old == decoded + e_new, round after round (Karimireddy et al. 2019, Alg. 2)."""
    ef = ErrorFeedback(raw(name))
    state = ef.init_state((3, 5, 7))
    g = torch.Generator().manual_seed(3)
    for r in range(3):
        x = sample((3, 5, 7), seed=r)
        e_old = state.residual.clone()
        _, decoded = ef.compress(x, g, state)
        torch.testing.assert_close(x + e_old, decoded + state.residual)


def _decode_only_value_error(c, msg: bytes) -> None:
    try:
        out = c.decode(msg)
    except ValueError:
        return
    assert isinstance(out, torch.Tensor)


@pytest.mark.parametrize("name", NAMES)
def test_decode_truncated_at_every_length_raises(name):
    c = raw(name)
    msg = c.encode(sample((13,)), torch.Generator().manual_seed(0), c.init_state((13,)))
    for n in range(len(msg)):
        with pytest.raises(ValueError):
            c.decode(msg[:n])
    with pytest.raises(ValueError):
        c.decode(msg + b"\x00")


@pytest.mark.parametrize("name", NAMES)
@FUZZ
@given(data=st.data())
def test_decode_bit_flips_raise_only_value_error(name, data):
    c = raw(name)
    shape = data.draw(st.sampled_from([(13,), (3, 5, 7)]))
    msg = c.encode(sample(shape), torch.Generator().manual_seed(0), c.init_state(shape))
    shape_bytes = range(6, wire.header_size(len(shape)))
    # A flipped shape field may legitimately describe a huge sparse tensor: leave it.
    positions = [i for i in range(len(msg) * 8) if i // 8 not in shape_bytes]
    flips = data.draw(st.lists(st.sampled_from(positions), min_size=1, max_size=4))
    bad = bytearray(msg)
    for i in flips:
        bad[i // 8] ^= 1 << (i % 8)
    _decode_only_value_error(c, bytes(bad))


@pytest.mark.parametrize("name", NAMES)
@FUZZ
@given(junk=st.binary(max_size=300))
def test_decode_random_bytes_raise_only_value_error(name, junk):
    c = raw(name)
    header = c.encode(sample((13,)), torch.Generator().manual_seed(0), c.init_state((13,)))[:10]
    with pytest.raises(ValueError):
        c.decode(b"X" + junk)  # never the magic
    _decode_only_value_error(c, header + junk)  # a valid header, garbage payload


@pytest.mark.parametrize("name", NAMES)
def test_decode_header_claiming_2_to_40_values_raises(name):
    c = raw(name)
    msg = c.encode(sample((13,)), torch.Generator().manual_seed(0), c.init_state((13,)))
    hostile = msg[:4] + bytes([0, 2]) + struct.pack("<2I", 2**20, 2**20) + msg[10:]
    with pytest.raises(ValueError, match="claims"):
        c.decode(hostile)


@pytest.mark.parametrize("name", [n for n in NAMES if n != "none"])
def test_decode_rejects_another_codecs_message(name):
    c = raw(name)
    other = build("none").encode(sample((13,)))
    with pytest.raises(ValueError, match="codec"):
        c.decode(other)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", NAMES)
def test_cuda_round_trip(name):
    c = raw(name)
    x = sample((3, 5, 7)).cuda()
    g = torch.Generator(device="cuda").manual_seed(0)
    msg, decoded = c.compress(x, g, c.init_state((3, 5, 7), device="cuda"))
    assert decoded.device.type == "cuda"
    out = c.decode(msg, device="cuda")
    assert out.device.type == "cuda" and out.shape == x.shape
    exact(out, decoded)
