import math
import struct

import pytest
import torch

from fedbench.compress import wire
from fedbench.compress.natural import Natural


def gens(n):
    return [torch.Generator().manual_seed(i) for i in range(n)]


def test_values_are_one_of_the_two_nearest_powers_of_two():
    x = torch.randn(10_000, generator=torch.Generator().manual_seed(0)) * 10.0 ** torch.randint(
        -30, 30, (10_000,), generator=torch.Generator().manual_seed(1)
    )
    out = Natural().decode(Natural().encode(x, torch.Generator()))
    low = 2.0 ** torch.floor(torch.log2(x.abs().double()))
    mag = out.abs().double()
    assert bool(((mag == low) | (mag == 2 * low)).all())
    assert bool((torch.sign(out) == torch.sign(x)).all())


def test_unbiased():
    d, n = 40, 4000
    x = torch.randn(d, generator=torch.Generator().manual_seed(0))
    _, decoded = Natural().compress_batch(x.expand(n, d), gens(n))
    # per value sd <= 2^e / 2 <= |x| / 2
    se = x.abs() / 2 / math.sqrt(n)
    assert bool(((decoded.mean(0) - x).abs() <= 5 * se + 1e-7).all())


def test_zero_subnormals_and_exact_powers():
    x = torch.tensor([0.0, -0.0, 1.0, -0.5, 2.0**-126, 2.0**127, 2.0**-140])
    msg = Natural().encode(x, torch.Generator())
    out = Natural().decode(msg)
    torch.testing.assert_close(out[:6], x[:6], rtol=0, atol=0)
    assert float(out[6]) in (0.0, 2.0**-126)
    assert bool(torch.signbit(out[1]))


def test_subnormals_round_unbiasedly_between_zero_and_the_smallest_normal():
    n = 4000
    x = torch.full((n, 1), 2.0**-128)  # a quarter of 2^-126
    _, out = Natural().compress_batch(x, gens(n))
    frac = float((out == 2.0**-126).float().mean())
    assert abs(frac - 0.25) < 4 * math.sqrt(0.25 * 0.75 / n)


def test_hand_worked_message():
    x = torch.tensor([1.0, -0.5, 0.0])
    msg = Natural().encode(x, torch.Generator())
    header = wire.write_header(11, torch.float32, (3,))
    assert msg == header + bytes([127, 126, 0]) + bytes([0b010])


@pytest.mark.parametrize("shape", [(), (0,), (7,), (13,), (3, 5, 7)], ids=str)
def test_nine_bits_a_value(shape):
    d = math.prod(shape)
    assert Natural().payload_bytes(d) == d + math.ceil(d / 8)
    msg = Natural().encode(torch.randn(shape), torch.Generator())
    assert len(msg) == wire.header_size(len(shape)) + Natural().payload_bytes(d)


def test_magnitudes_that_could_round_past_the_dtype_raise():
    with pytest.raises(ValueError, match="2\\^127"):
        Natural().encode(torch.tensor([3e38]))
    with pytest.raises(ValueError, match="2\\^15"):
        Natural().encode(torch.tensor([40000.0], dtype=torch.float16))
    Natural().encode(torch.tensor([32768.0], dtype=torch.float16))  # exact power: fine


def test_corrupt_exponents_raise():
    msg = bytearray(Natural().encode(torch.randn(4), torch.Generator()))
    h = wire.header_size(1)
    msg[h] = 255
    with pytest.raises(ValueError, match="exponent"):
        Natural().decode(bytes(msg))
    half = bytearray(Natural().encode(torch.randn(4).half(), torch.Generator()))
    half[h] = 127 + 16
    with pytest.raises(ValueError, match="exponent"):
        Natural().decode(bytes(half))


def test_header_claiming_many_values_fails_fast():
    msg = Natural().encode(torch.randn(13), torch.Generator())
    hostile = msg[:5] + bytes([1]) + struct.pack("<I", 2**30) + msg[10:]
    with pytest.raises(ValueError):
        Natural().decode(hostile)
