import math
import struct
import time

import pytest
import torch

from fedbench.compress import buckets, build, wire
from fedbench.compress.buckets import row_abs_sum
from fedbench.compress.quant import QUANT_BITS, Quant
from fedbench.compress.rounding import noise16, stochastic_floor_


def gens(n, offset=0):
    return [torch.Generator().manual_seed(offset + i) for i in range(n)]


def bucket_steps(x: torch.Tensor, bits: int, bucket_size: int) -> torch.Tensor:
    """The step each value of x (d,) is quantised with, worked out independently."""
    d = x.numel()
    size = d if bucket_size == 0 else bucket_size
    steps = torch.empty(d)
    for start in range(0, d, size):
        b = x[start : start + size]
        steps[start : start + size] = (b.max() - b.min()) / (2**bits - 1)
    return steps


@pytest.mark.parametrize("bits", QUANT_BITS)
@pytest.mark.parametrize("bucket_size", [0, 7, 1000])
def test_deterministic_error_at_most_half_a_step(bits, bucket_size):
    x = torch.randn(1001, generator=torch.Generator().manual_seed(bits))
    c = Quant(bits=bits, bucket_size=bucket_size)
    err = (c.decode(c.encode(x)) - x).abs()
    step = bucket_steps(x, bits, bucket_size)
    assert bool((err <= step / 2 * (1 + 1e-4) + 1e-6).all()), float((err - step / 2).max())


@pytest.mark.parametrize("bits", [1, 2, 3, 4, 8, 16])
@pytest.mark.parametrize("bucket_size", [0, 7])
def test_stochastic_error_below_one_step(bits, bucket_size):
    x = torch.randn(1001, generator=torch.Generator().manual_seed(bits))
    c = Quant(bits=bits, stochastic=True, bucket_size=bucket_size)
    err = (c.decode(c.encode(x, torch.Generator().manual_seed(0))) - x).abs()
    step = bucket_steps(x, bits, bucket_size)
    assert bool((err < step * (1 + 1e-4) + 1e-6).all())


@pytest.mark.parametrize("bits", [1, 4])
def test_stochastic_rounding_is_unbiased(bits):
    d, n = 64, 4000
    x = torch.randn(d, generator=torch.Generator().manual_seed(1))
    c = Quant(bits=bits, stochastic=True)
    _, decoded = c.compress_batch(x.expand(n, d), gens(n))
    step = float(x.max() - x.min()) / (2**bits - 1)
    se = step / 2 / math.sqrt(n)  # per-value sd <= step/2
    torch.testing.assert_close(decoded.mean(0), x, atol=5 * se, rtol=0)
    # nearest rounding, by contrast, has a visible bias on some value
    det = Quant(bits=bits).decode(Quant(bits=bits).encode(x))
    assert float((det - x).abs().max()) > 5 * se


@pytest.mark.parametrize("stochastic", [False, True])
@pytest.mark.parametrize("bits", [1, 8, 16])
def test_constant_tensor_round_trips_exactly(stochastic, bits):
    c = Quant(bits=bits, stochastic=stochastic, bucket_size=4)
    for value in (0.0, 3.25, -1e-30):
        x = torch.full((2, 5), value)
        torch.testing.assert_close(c.decode(c.encode(x, torch.Generator())), x, rtol=0, atol=0)


def test_hand_worked_message():
    x = torch.tensor([0.0, 1.0, 2.0, 3.0])
    msg = Quant(bits=2).encode(x)
    expected = wire.write_header(4, torch.float32, (4,))
    expected += bytes([2]) + struct.pack("<Iff", 0, 0.0, 1.0) + bytes([0b11_10_01_00])
    assert msg == expected


@pytest.mark.parametrize("bits", QUANT_BITS)
@pytest.mark.parametrize("bucket_size", [0, 5, 512])
@pytest.mark.parametrize("shape", [(), (0,), (7,), (13,), (3, 5, 7)], ids=str)
def test_message_length_is_header_plus_documented_payload(bits, bucket_size, shape):
    c = Quant(bits=bits, bucket_size=bucket_size)
    d = math.prod(shape)
    nb = 0 if d == 0 else math.ceil(d / (d if bucket_size == 0 else bucket_size))
    assert c.payload_bytes(d) == 5 + 8 * nb + math.ceil(d * bits / 8)
    assert len(c.encode(torch.randn(shape))) == wire.header_size(len(shape)) + c.payload_bytes(d)


def test_variants_set_their_bits():
    for bits in (1, 2, 4, 8):
        c = build(f"quant{bits}")
        assert isinstance(c, Quant) and c.bits == bits
    assert build("quant").biased and not build("quant", stochastic=True).biased


@pytest.mark.parametrize(
    "kwargs",
    [{"bits": 0}, {"bits": 9}, {"bits": 32}, {"bits": True}, {"bucket_size": -1},
     {"bucket_size": 1.5}, {"stochastic": "yes"}],
)  # fmt: skip
def test_bad_settings_raise(kwargs):
    with pytest.raises(ValueError):
        Quant(**kwargs)


def test_values_beyond_fp32_range_raise():
    with pytest.raises(ValueError, match="overflow"):
        Quant().encode(torch.tensor([-3e38, 3e38]))
    with pytest.raises(ValueError, match="overflow"):
        Quant().encode(torch.tensor([1.0, 1e300], dtype=torch.float64))


def test_header_claiming_many_values_fails_fast():
    msg = Quant(bits=8).encode(torch.randn(13))
    hostile = msg[:5] + bytes([1]) + struct.pack("<I", 2**30) + msg[10:]
    start = time.perf_counter()
    with pytest.raises(ValueError):
        Quant().decode(hostile)
    assert time.perf_counter() - start < 1.0


def test_corrupt_fields_raise():
    msg = bytearray(Quant(bits=4).encode(torch.randn(13)))
    h = wire.header_size(1)
    for pos, value in [(h, 9), (h, 0)]:
        bad = bytearray(msg)
        bad[pos] = value
        with pytest.raises(ValueError):
            Quant().decode(bytes(bad))
    bad = bytearray(msg)
    bad[h + 9 : h + 13] = struct.pack("<f", -1.0)  # negative step
    with pytest.raises(ValueError, match="step"):
        Quant().decode(bytes(bad))
    bad[h + 5 : h + 13] = struct.pack("<ff", 3e38, 3e37)  # lo + 15 * step overflows
    with pytest.raises(ValueError, match="overflows"):
        Quant().decode(bytes(bad))


def test_decode_batch_rejects_mixed_settings():
    x = torch.randn(13)
    with pytest.raises(ValueError, match="differ"):
        Quant().decode_batch([Quant(bits=4).encode(x), Quant(bits=8).encode(x)])
    with pytest.raises(ValueError, match="at least one"):
        Quant().decode_batch([])


def test_noise16_rows_depend_only_on_their_generator():
    a = noise16(11, gens(3), None)
    assert a.dtype == torch.int16 and a.shape == (3, 11)
    for i in range(3):
        torch.testing.assert_close(a[i], noise16(11, gens(1, offset=i), None)[0])
    assert not torch.equal(a[0], a[1])
    big = noise16(100_000, gens(1), None).float()
    assert abs(float(big.mean())) < 300 and abs(float(big.std()) - 65536 / math.sqrt(12)) < 300


def test_stochastic_floor_rounds_up_with_probability_frac():
    n = 20_000
    v = torch.full((1, n), 2.25)
    lvl = stochastic_floor_(v.clone(), noise16(n, gens(1), None))
    assert set(lvl.unique().tolist()) == {2, 3}
    assert abs(float((lvl == 3).float().mean()) - 0.25) < 4 * math.sqrt(0.25 * 0.75 / n)
    exact_ints = torch.full((1, n), 5.0)
    lvl = stochastic_floor_(exact_ints, noise16(n, gens(1), None))
    assert bool((lvl == 5).all())


def test_row_abs_sum_does_not_depend_on_the_batch():
    x = torch.randn(3, 300_001, generator=torch.Generator().manual_seed(0))
    together = row_abs_sum(x)
    for i in range(3):
        assert float(row_abs_sum(x[i : i + 1])[0]) == float(together[i])
    torch.testing.assert_close(together, x.double().abs().sum(-1))


@pytest.mark.parametrize(
    "name, params",
    [("quant", {"bucket_size": 0}), ("quant", {"bucket_size": 7}),
     ("quant", {"bucket_size": 5000, "stochastic": True}), ("quant", {"bits": 16}),
     ("qsgd", {"bucket_size": 0}), ("qsgd", {"bucket_size": 5000}),
     ("qsgd_elias", {"bucket_size": 3}), ("terngrad", {"bucket_size": 0}),
     ("terngrad", {"bucket_size": 100})],
)  # fmt: skip
def test_chunked_paths_agree_between_batch_and_single(name, params, monkeypatch):
    monkeypatch.setattr(buckets, "CHUNK", 1000)
    c = build(name, **params)
    x = torch.randn(3, 12_345, generator=torch.Generator().manual_seed(0)).half()
    msgs, decoded = c.compress_batch(x, gens(3))
    for i, g in enumerate(gens(3)):
        msg, one = c.compress(x[i], g)
        assert msg == msgs[i]
        torch.testing.assert_close(one, decoded[i], rtol=0, atol=0)
    torch.testing.assert_close(c.decode_batch(msgs), decoded, rtol=0, atol=0)
    if name == "quant" and not params.get("stochastic"):
        step = bucket_steps(x[0].float(), c.bits, c.bucket_size)
        err = (decoded[0].float() - x[0].float()).abs()
        assert bool((err <= step / 2 * (1 + 1e-3) + 1e-3).all())
