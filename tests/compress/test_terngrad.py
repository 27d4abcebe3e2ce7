import math
import struct

import pytest
import torch

from fedbench.compress import build, wire
from fedbench.compress.terngrad import TernGrad


def gens(n):
    return [torch.Generator().manual_seed(i) for i in range(n)]


@pytest.mark.parametrize("bucket_size", [0, 16])
def test_unbiased(bucket_size):
    d, n = 48, 4000
    x = torch.randn(d, generator=torch.Generator().manual_seed(0))
    _, decoded = TernGrad(bucket_size=bucket_size).compress_batch(x.expand(n, d), gens(n))
    scale = float(x.abs().max())
    torch.testing.assert_close(decoded.mean(0), x, atol=5 * scale / 2 / math.sqrt(n), rtol=0)


@pytest.mark.parametrize("bucket_size", [0, 7])
def test_values_are_ternary_times_the_bucket_max(bucket_size):
    x = torch.randn(100, generator=torch.Generator().manual_seed(0))
    out = build("terngrad", bucket_size=bucket_size).decode(
        build("terngrad", bucket_size=bucket_size).encode(x, torch.Generator())
    )
    size = bucket_size or 100
    scale = torch.stack([b.abs().max() for b in x.split(size)]).repeat_interleave(size)[:100]
    ratio = out / scale
    assert set(ratio.unique().tolist()) <= {-1.0, 0.0, 1.0}
    nonzero = out != 0
    assert bool((torch.sign(out[nonzero]) == torch.sign(x[nonzero])).all())
    # the largest magnitude of each bucket always survives
    top = x.abs() == scale
    torch.testing.assert_close(out[top], x[top])


def test_hand_worked_message():
    x = torch.tensor([-2.0, 0.0, 2.0, 0.0, 0.0])  # |x|/max is 0 or 1: no randomness
    msg = TernGrad().encode(x, torch.Generator())
    header = wire.write_header(6, torch.float32, (5,))
    # codes ternary + 1: 0 (-s), 1, 2 (+s), 1 | 1, two bits each, LSB first
    assert msg == header + struct.pack("<If", 0, 2.0) + bytes([0b01_10_01_00, 0b01])
    torch.testing.assert_close(TernGrad().decode(msg), x, rtol=0, atol=0)


@pytest.mark.parametrize("bucket_size", [0, 5, 512])
@pytest.mark.parametrize("shape", [(), (0,), (13,), (3, 5, 7)], ids=str)
def test_length_is_header_plus_documented_payload(bucket_size, shape):
    c = TernGrad(bucket_size=bucket_size)
    d = math.prod(shape)
    nb = 0 if d == 0 else math.ceil(d / (d if bucket_size == 0 else bucket_size))
    assert c.payload_bytes(d) == 4 + 4 * nb + math.ceil(d / 4)
    assert len(c.encode(torch.randn(shape), torch.Generator())) == (
        wire.header_size(len(shape)) + c.payload_bytes(d)
    )


def test_code_three_is_corrupt():
    msg = bytearray(TernGrad().encode(torch.randn(4), torch.Generator()))
    msg[-1] = 0b11
    with pytest.raises(ValueError, match="code 3"):
        TernGrad().decode(bytes(msg))


@pytest.mark.parametrize("bucket_size", [-1, 1.0, True])
def test_bad_settings_raise(bucket_size):
    with pytest.raises(ValueError):
        TernGrad(bucket_size=bucket_size)
