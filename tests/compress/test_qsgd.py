import math
import struct
import time

import numpy as np
import pytest
import torch

from fedbench.compress import build, elias, wire
from fedbench.compress.qsgd import QSGD


def gens(n):
    return [torch.Generator().manual_seed(i) for i in range(n)]


def levels_of(c: QSGD, x: torch.Tensor, decoded: torch.Tensor) -> torch.Tensor:
    """Integer levels behind ``decoded`` (d,), from each bucket's norm."""
    size = c.bucket_size or x.numel()
    norms = torch.stack([b.norm() for b in x.split(size)])
    unit = (norms / c.levels).repeat_interleave(size)[: x.numel()]
    return torch.where(unit > 0, decoded.abs() / unit, 0.0).round().long()


@pytest.mark.parametrize("coding", ["fixed", "elias"])
@pytest.mark.parametrize("levels", [1, 4, 7])
def test_unbiased(coding, levels):
    d, n = 48, 4000
    x = torch.randn(d, generator=torch.Generator().manual_seed(levels))
    c = QSGD(levels=levels, bucket_size=16, coding=coding)
    _, decoded = c.compress_batch(x.expand(n, d), gens(n))
    unit = max(float(b.norm()) for b in x.split(16)) / levels
    torch.testing.assert_close(decoded.mean(0), x, atol=5 * unit / 2 / math.sqrt(n), rtol=0)


@pytest.mark.parametrize("levels", [1, 7])
def test_variance_within_the_papers_bound(levels):
    """E||Q(v) - v||^2 <= min(d/s^2, sqrt(d)/s) ||v||^2 (Alistarh et al. 2017, Lemma 3.1)."""
    d, n = 256, 500
    x = torch.randn(d, generator=torch.Generator().manual_seed(0))
    c = QSGD(levels=levels, bucket_size=0)
    _, decoded = c.compress_batch(x.expand(n, d), gens(n))
    mse = float(((decoded - x) ** 2).sum(-1).mean())
    bound = min(d / levels**2, math.sqrt(d) / levels) * float(x.norm() ** 2)
    assert mse <= bound


def test_decoded_values_are_signed_levels_of_the_norm():
    x = torch.randn(1001, generator=torch.Generator().manual_seed(0))
    c = QSGD(levels=7, bucket_size=100)
    out = c.decode(c.encode(x, torch.Generator().manual_seed(1)))
    lvl = levels_of(c, x, out)
    assert int(lvl.max()) <= 7
    norms = torch.stack([b.norm() for b in x.split(100)]).repeat_interleave(100)[:1001]
    torch.testing.assert_close(out.abs(), lvl * (norms / 7))
    nonzero = out != 0
    assert bool((torch.sign(out[nonzero]) == torch.sign(x[nonzero])).all())


def test_hand_worked_message():
    # |v| / ||v|| * s = [3, 4] exactly, so no randomness is involved
    x = torch.tensor([-3.0, 4.0])
    msg = QSGD(levels=5, bucket_size=0).encode(x, torch.Generator())
    header = wire.write_header(5, torch.float32, (2,))
    # width = bit_length(5) + 1 = 4 bits; code = signed level + 5: -3 -> 2, 4 -> 9
    assert msg == header + bytes([0, 5]) + struct.pack("<If", 0, 5.0) + bytes([0x92])
    torch.testing.assert_close(QSGD().decode(msg), x, rtol=0, atol=0)


@pytest.mark.parametrize("levels", [1, 4, 7, 16, 127])
@pytest.mark.parametrize("bucket_size", [0, 5, 512])
@pytest.mark.parametrize("shape", [(), (0,), (13,), (3, 5, 7)], ids=str)
def test_fixed_length_is_header_plus_documented_payload(levels, bucket_size, shape):
    c = QSGD(levels=levels, bucket_size=bucket_size)
    d = math.prod(shape)
    nb = 0 if d == 0 else math.ceil(d / (d if bucket_size == 0 else bucket_size))
    assert c.payload_bytes(d) == 6 + 4 * nb + math.ceil(d * (levels.bit_length() + 1) / 8)
    msg = c.encode(torch.randn(shape), torch.Generator())
    assert len(msg) == wire.header_size(len(shape)) + c.payload_bytes(d)


def test_elias_length_is_the_gamma_code_length():
    x = torch.randn(1001, generator=torch.Generator().manual_seed(0))
    c = QSGD(levels=7, bucket_size=100, coding="elias")
    msg = c.encode(x, torch.Generator().manual_seed(1))
    lvl = levels_of(c, x, c.decode(msg)).numpy()
    gamma = elias.gamma_bits(lvl + 1)
    prefix = int(np.frexp((lvl + 1).astype(float))[1].sum())  # sum(floor(log2 v) + 1)
    mantissa = gamma - prefix
    signs = int((lvl > 0).sum())
    payload = 6 + 4 * 11 + 24 + sum(math.ceil(b / 8) for b in (prefix, mantissa, signs))
    assert len(msg) == wire.header_size(1) + payload


def test_elias_and_fixed_send_the_same_levels():
    x = torch.randn(5, 700, generator=torch.Generator().manual_seed(0))
    _, fixed = QSGD(coding="fixed").compress_batch(x, gens(5))
    msgs, coded = QSGD(coding="elias").compress_batch(x, gens(5))
    torch.testing.assert_close(coded, fixed, rtol=0, atol=0)
    torch.testing.assert_close(QSGD().decode_batch(msgs), fixed, rtol=0, atol=0)


def test_elias_saves_bytes_on_gaussian_updates():
    x = torch.randn(100_000, generator=torch.Generator().manual_seed(0))
    fixed = len(build("qsgd").encode(x, torch.Generator()))
    coded = len(build("qsgd_elias").encode(x, torch.Generator()))
    assert coded < 0.75 * fixed


def test_variants():
    assert build("qsgd4").levels == 4 and build("qsgd16").levels == 16
    assert build("qsgd_elias").coding == "elias"


@pytest.mark.parametrize(
    "kwargs",
    [{"levels": 0}, {"levels": 128}, {"levels": 2.5}, {"bucket_size": -1}, {"coding": "huffman"}],
)
def test_bad_settings_raise(kwargs):
    with pytest.raises(ValueError):
        QSGD(**kwargs)


def test_huge_values_raise_instead_of_overflowing_the_norm():
    with pytest.raises(ValueError, match="overflow"):
        QSGD().encode(torch.tensor([1e20, 1e20]))


@pytest.mark.parametrize("coding", ["fixed", "elias"])
def test_header_claiming_many_values_fails_fast(coding):
    msg = QSGD(coding=coding).encode(torch.randn(13), torch.Generator())
    hostile = msg[:5] + bytes([1]) + struct.pack("<I", 2**30) + msg[10:]
    start = time.perf_counter()
    with pytest.raises(ValueError):
        QSGD().decode(hostile)
    assert time.perf_counter() - start < 1.0


def test_corrupt_levels_raise():
    c = QSGD(levels=4, bucket_size=0)  # 4-bit codes, levels 0..4
    msg = bytearray(c.encode(torch.randn(13), torch.Generator()))
    msg[-1] = 0xFF  # codes 15 and 15: levels 11
    with pytest.raises(ValueError, match="exceeds"):
        c.decode(bytes(msg))
    e = QSGD(levels=4, coding="elias")
    msg = e.encode(torch.full((13,), 1.0), torch.Generator())
    h = wire.header_size(1)
    with pytest.raises(ValueError, match="levels 0"):
        e.decode(msg[:h] + bytes([1, 0]) + msg[h + 2 :])
    with pytest.raises(ValueError, match="coding"):
        e.decode(msg[:h] + bytes([2]) + msg[h + 1 :])


def test_one_norm_per_tensor_agrees_between_batch_and_single():
    x = torch.randn(2, 600_001, generator=torch.Generator().manual_seed(0))
    c = QSGD(bucket_size=0)
    msgs, decoded = c.compress_batch(x, gens(2))
    for i, g in enumerate(gens(2)):
        msg, one = c.compress(x[i], g)
        assert msg == msgs[i]
        torch.testing.assert_close(one, decoded[i], rtol=0, atol=0)
    ratio = decoded / (x.double().norm(dim=-1, keepdim=True) / 7)  # whole levels of one norm
    torch.testing.assert_close(ratio, ratio.round(), atol=1e-3, rtol=0)
