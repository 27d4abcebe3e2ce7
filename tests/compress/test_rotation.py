"""DRIVE, EDEN and rotated_quant: the papers' error constants, scales, sizes, hostile bytes."""

import math
import struct

import pytest
import torch

from fedbench.compress import build, wire
from fedbench.compress.rotation import Drive, Eden, RotatedQuant, lloyd_max_centroids

D = 2**14


def _vnmse(c, d=D, reps=4, seed=0) -> float:
    """E||x_hat - x||^2 / ||x||^2 on Gaussian input, one client."""
    x = torch.randn(reps, d, generator=torch.Generator().manual_seed(seed))
    gens = [torch.Generator().manual_seed(100 + i) for i in range(reps)]
    _, out = c.compress_batch(x, gens)
    return float(((out - x) ** 2).sum(1).div(x.pow(2).sum(1)).mean())


def test_drive_unbiased_vnmse_is_pi_over_2_minus_1():
    """Vargaftik et al. 2021, Thm. 3: vNMSE -> pi/2 - 1 ~ 0.571 for large d."""
    assert _vnmse(Drive(unbiased=True)) == pytest.approx(math.pi / 2 - 1, rel=0.03)


def test_drive_biased_vnmse_is_1_minus_2_over_pi():
    """The MSE-optimal scale ||Rx||_1 / d: vNMSE -> 1 - 2/pi ~ 0.363 (Thm. 2)."""
    assert _vnmse(Drive(unbiased=False)) == pytest.approx(1 - 2 / math.pi, rel=0.03)


@pytest.mark.parametrize(
    ("bits", "lloyd_mse"), [(1, 0.3634), (2, 0.1175), (3, 0.03454), (4, 0.009497)]
)
def test_eden_vnmse_follows_the_lloyd_max_distortion(bits, lloyd_mse):
    """With the unbiasing scale, vNMSE = mse / (1 - mse) for the N(0,1) quantiser (EDEN, Sec. 3)."""
    assert _vnmse(Eden(bits)) == pytest.approx(lloyd_mse / (1 - lloyd_mse), rel=0.05)


def test_lloyd_max_centroids_match_the_published_tables():
    """Half-normal centroids from Vargaftik et al. 2022 (their quantisation constants)."""
    assert float(lloyd_max_centroids(1)[1]) == pytest.approx(0.7978845608, abs=1e-8)
    torch.testing.assert_close(
        lloyd_max_centroids(2)[2:].tolist(), [0.45278004, 1.51041761], rtol=1e-6, atol=0
    )
    assert float(lloyd_max_centroids(4)[-1]) == pytest.approx(2.7325888, rel=1e-5)
    assert float(lloyd_max_centroids(8)[128]) == pytest.approx(0.0084459741, rel=5e-3)
    c = lloyd_max_centroids(3)
    assert bool((c[1:] > c[:-1]).all()) and torch.equal(c, -c.flip(0))


def test_drive_unbiased_scale_is_norm_squared_over_l1():
    x = torch.randn(1000, generator=torch.Generator().manual_seed(1))
    msg = Drive(unbiased=True).encode(x, torch.Generator().manual_seed(0))
    h = wire.header_size(1)
    (seed,) = struct.unpack("<Q", msg[h : h + 8])
    (scale,) = struct.unpack("<f", msg[h + 8 : h + 12])
    from fedbench.compress.hadamard import rotate

    y = rotate(x[None], [seed])[0].double()
    assert scale == pytest.approx(float(x.double().square().sum() / y.abs().sum()), rel=1e-6)


@pytest.mark.parametrize("codec", [Drive(), Eden(1), Eden(3), Eden(8), RotatedQuant(4)], ids=repr)
@pytest.mark.parametrize("d", [1, 1000, 1024])
def test_length_is_header_plus_documented_payload(codec, d):
    msg = codec.encode(torch.randn(d), torch.Generator().manual_seed(0))
    n = 1 << max(0, (d - 1).bit_length())
    if isinstance(codec, RotatedQuant):
        want = 8 + wire.header_size(1) + codec.quant.payload_bytes(n)
    else:
        want = codec.payload_bytes(d)
        assert (
            want
            == (12 if isinstance(codec, Drive) else 13) + (n * getattr(codec, "bits", 1) + 7) // 8
        )
    assert len(msg) == wire.header_size(1) + want


def test_rotation_tames_a_spike_that_plain_quant_cannot():
    """One outlier wrecks min-max quantisation; after the rotation it is spread out."""
    x = torch.randn(4096, generator=torch.Generator().manual_seed(0)) * 0.01
    x[17] = 100.0
    g = torch.Generator().manual_seed(1)
    plain = build("quant", bits=2, stochastic=True).compress(x, g)[1]
    rotated = RotatedQuant(2).compress(x, torch.Generator().manual_seed(1))[1]
    err = lambda v: float((v - x).square().sum() / x.square().sum())  # noqa: E731
    assert err(rotated) < err(plain) / 2


def test_zero_vector_decodes_to_zero():
    for c in (Drive(), Drive(unbiased=True), Eden(2), RotatedQuant(2)):
        assert torch.equal(c.decode(c.encode(torch.zeros(100))), torch.zeros(100))


@pytest.mark.parametrize("codec", [Drive(), Eden(2)], ids=repr)
def test_scale_that_overflows_the_output_is_corrupt(codec):
    msg = bytearray(codec.encode(torch.randn(64), torch.Generator().manual_seed(0)))
    at = wire.header_size(1) + 8 + (1 if isinstance(codec, Eden) else 0)
    msg[at : at + 4] = struct.pack("<f", 3e38)
    with pytest.raises(ValueError, match="overflow"):
        codec.decode(bytes(msg))
    msg[at : at + 4] = struct.pack("<f", -1.0)
    with pytest.raises(ValueError, match="negative"):
        codec.decode(bytes(msg))


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="bits"):
        Eden(9)
    with pytest.raises(ValueError, match="unbiased"):
        Drive(unbiased=1)
    with pytest.raises(ValueError, match="bits"):
        RotatedQuant(bits=0)


def test_yamls_build_the_codecs():
    assert isinstance(build("drive"), Drive) and not build("drive").unbiased
    assert build("drive_unbiased").unbiased and not build("drive_unbiased").biased
    assert build("eden").bits == 2 and build("eden4").bits == 4 and build("eden1").bits == 1
    assert isinstance(build("rotated_quant"), RotatedQuant)


def test_eden_cell_index_is_bucketize():
    """The comparison-sum fast path gives torch.bucketize's codes, ties included."""
    from fedbench.compress.rotation import _cell_index, _tables

    z = torch.randn(5000, generator=torch.Generator().manual_seed(0)) * 2
    for bits in (1, 2, 4, 5):
        _, edges = _tables(bits, z.device)
        zz = torch.cat([z, edges, -edges])  # values exactly on a boundary
        want = torch.bucketize(zz, edges).to(torch.uint8)
        torch.testing.assert_close(_cell_index(zz, edges), want, rtol=0, atol=0)


# Fractional bit rates (EDEN, Sec. 5): between whole bits a shared random share of the
# rotated values gets the higher width; below one bit a shared random subset is kept.

FRACTIONAL = (0.25, 0.5, 1.5, 2.5, 3.75)


@pytest.mark.parametrize("bits", FRACTIONAL)
@pytest.mark.parametrize("d", [1, 7, 1000, 4096])
def test_fractional_size_is_exact_and_round_trips(bits, d):
    codec = Eden(bits)
    x = torch.randn(3, d, generator=torch.Generator().manual_seed(d))
    gens = [torch.Generator().manual_seed(i) for i in range(3)]
    msgs, sent = codec.compress_batch(x, gens)
    assert all(len(m) == wire.header_size(1) + codec.payload_bytes(d) for m in msgs)
    assert torch.equal(codec.decode_batch(msgs), sent)  # the sender's decoded is the server's
    for i in range(3):  # a row alone gives the same message as inside the batch
        assert codec.encode(x[i], torch.Generator().manual_seed(i)) == msgs[i]


@pytest.mark.parametrize("bits", FRACTIONAL)
def test_fractional_rate_is_the_requested_bits_at_a_power_of_two(bits):
    d = 2**14
    msg = Eden(bits).encode(torch.randn(d), torch.Generator().manual_seed(0))
    assert len(msg) * 8 / d == pytest.approx(bits, abs=0.02)


@pytest.mark.parametrize("bits", [0.5, 1.5, 2.5])
def test_fractional_eden_is_unbiased(bits):
    """The mean of many independent encodings converges to x: its NMSE is vNMSE / reps."""
    d, reps = 4096, 200
    x = torch.randn(d, generator=torch.Generator().manual_seed(3))
    gens = [torch.Generator().manual_seed(100 + i) for i in range(reps)]
    _, out = Eden(bits).compress_batch(x.expand(reps, d), gens)
    vnmse = float(((out - x) ** 2).sum(1).mean() / x.square().sum())
    nmse_of_mean = float((out.mean(0) - x).square().sum() / x.square().sum())
    assert nmse_of_mean == pytest.approx(vnmse / reps, rel=0.25)


def test_fractional_error_falls_between_the_whole_bit_rates():
    errs = {b: _vnmse(Eden(b)) for b in (0.5, 1, 1.5, 2, 2.5, 3)}
    assert list(errs.values()) == sorted(errs.values(), reverse=True)
    # below one bit: keeping a share p of the values costs about (1 + vNMSE_1) / p - 1
    assert errs[0.5] == pytest.approx((1 + errs[1]) / 0.5 - 1, rel=0.05)


def test_fractional_bits_refused_or_kept_exactly():
    for bad in (0, -1, 8.5, float("nan"), float("inf"), True, "2"):
        with pytest.raises(ValueError, match="bits"):
            Eden(bad)
    assert Eden(2.0).bits == 2 and not Eden(2.0).fractional  # whole: the integer format
    assert Eden(0.1).bits == float(torch.tensor(0.1).item())  # the fp32 value both ends use
    assert build("eden05").bits == 0.5


@pytest.mark.parametrize("bits", [0.5, 1.5])
def test_fractional_hostile_bytes_raise_value_error(bits):
    codec = Eden(bits)
    msg = codec.encode(torch.randn(300), torch.Generator().manual_seed(0))
    h = wire.header_size(1)
    for cut in (1, 5, len(msg) - h - 1):
        with pytest.raises(ValueError):
            codec.decode(msg[:-cut])
    with pytest.raises(ValueError):
        codec.decode(msg + b"\0")
    for rate in (float("nan"), 2.0, 9.5, 0.0, -0.5):  # the fp32 rate after the 0 byte
        bad = bytearray(msg)
        bad[h + 9 : h + 13] = struct.pack("<f", rate)
        with pytest.raises(ValueError, match="bits"):
            codec.decode(bytes(bad))
