"""Entropy coding around any codec: lossless, smaller where codes are skewed, hostile bytes."""

import contextlib
import struct

import numpy as np
import pytest
import torch

from fedbench.compress import ErrorFeedback, build, wire
from fedbench.compress.entropy import Entropy, empirical_entropy_bits, max_inner_bytes, wrap

pytest.importorskip("zstandard")
INNERS = ["none", "qsgd", "topk", "drive_unbiased", "eden"]


def _x(shape=(1001,), seed=0):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", INNERS)
def test_decodes_exactly_what_the_inner_codec_decodes(name):
    inner = build(name, error_feedback=False)
    c = Entropy(inner)
    x = torch.stack([_x(seed=i) for i in range(3)])
    gens = lambda: [torch.Generator().manual_seed(i) for i in range(3)]  # noqa: E731
    msgs, decoded = c.compress_batch(x, gens())
    inner_msgs, inner_decoded = inner.compress_batch(x, gens())
    assert [c.unwrap(m) for m in msgs] == inner_msgs
    torch.testing.assert_close(c.decode_batch(msgs), inner_decoded, rtol=0, atol=0)
    torch.testing.assert_close(decoded, inner_decoded, rtol=0, atol=0)
    assert c.encode(x[1], gens()[1]) == msgs[1]


def test_skewed_codes_get_smaller_than_fixed_width():
    """QSGD at s=1 sends mostly-zero levels: zstd removes a good part of the fixed width."""
    inner = build("qsgd", levels=1)
    x = _x((2**16,))
    plain = inner.encode(x, torch.Generator().manual_seed(0))
    coded = Entropy(inner, level=9).encode(x, torch.Generator().manual_seed(0))
    assert len(coded) < 0.8 * len(plain)


@pytest.mark.parametrize("name", ["qsgd", "drive"])
def test_truncated_or_padded_messages_raise(name):
    c = Entropy(build(name))
    msg = c.encode(_x((13,)), torch.Generator().manual_seed(0))
    for n in range(len(msg)):
        with pytest.raises(ValueError):
            c.decode(msg[:n])
    with pytest.raises(ValueError, match=r"unused data|corrupt"):
        c.decode(msg + b"\x00")


def test_inner_length_above_the_cap_is_refused_before_decompressing():
    c = Entropy(build("none"))
    msg = bytearray(c.encode(_x((13,))))
    at = wire.header_size(1) + 1
    msg[at : at + 4] = struct.pack("<I", max_inner_bytes(13, 1) + 1)
    with pytest.raises(ValueError, match="exceeds"):
        c.decode(bytes(msg))


def test_a_frame_that_expands_beyond_its_header_is_refused():
    """A zip bomb: 1 MB of zeros in a tiny frame, announced for a 13-value tensor."""
    import zstandard

    c = Entropy(build("none"))
    header = wire.write_header(c.codec_id, torch.float32, (13,))
    bomb = zstandard.ZstdCompressor().compress(bytes(2**20))
    with pytest.raises(ValueError):
        c.decode(header + b"\x01" + struct.pack("<I", 2**20) + bomb)
    with pytest.raises(ValueError, match="declares"):
        c.decode(header + b"\x01" + struct.pack("<I", 100) + bomb)


def test_inner_message_of_another_shape_is_refused():
    c = Entropy(build("none"))
    a = c.encode(_x((13,)))
    b = c.encode(_x((14,)))
    h13, h14 = wire.header_size(1), wire.header_size(1)
    with pytest.raises(ValueError, match="differs"):
        c.decode(a[:h13] + b[h14:])


def test_random_bytes_after_a_valid_header_raise_only_value_error():
    c = Entropy(build("qsgd"))
    head = c.encode(_x((13,)))[: wire.header_size(1)]
    rng = np.random.default_rng(0)
    for _ in range(200):
        junk = rng.integers(0, 256, rng.integers(0, 80)).astype(np.uint8).tobytes()
        with contextlib.suppress(ValueError):
            c.decode(head + b"\x01" + junk)


def test_wrap_keeps_error_feedback_outside():
    assert wrap(build("sign"), None).__class__.__name__ == "Sign"
    ef = wrap(build("sign", error_feedback=True), "zstd")
    assert isinstance(ef, ErrorFeedback) and isinstance(ef.inner, Entropy)
    with pytest.raises(ValueError, match="coder"):
        wrap(build("sign"), "lzma")
    with pytest.raises(ValueError, match="error feedback"):
        Entropy(build("sign", error_feedback=True))


def test_empirical_entropy_bits_worked_by_hand():
    assert empirical_entropy_bits([0, 0, 0, 0]) == 0.0
    assert empirical_entropy_bits([0, 1, 0, 1]) == pytest.approx(4.0)
    # p = (1/2, 1/4, 1/4): H = 1.5 bits a symbol
    assert empirical_entropy_bits(torch.tensor([5, 5, 7, 9])) == pytest.approx(6.0)
    assert empirical_entropy_bits([]) == 0.0
