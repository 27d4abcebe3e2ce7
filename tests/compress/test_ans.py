"""The order-0 ANS coder (fedbench/compress/ans.py) and ``entropy: ans`` around codecs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedbench.compress import ans, build
from fedbench.compress.entropy import Entropy, empirical_entropy_bits

pytest.importorskip("constriction")


def _bytes(kind: str, n: int = 50_000) -> bytes:
    rng = np.random.default_rng(0)
    if kind == "uniform":
        return rng.integers(0, 256, n, dtype=np.uint8).tobytes()
    if kind == "geometric":
        return rng.geometric(0.3, n).clip(0, 255).astype(np.uint8).tobytes()
    if kind == "two":
        return rng.choice(np.array([0, 7], np.uint8), n, p=[0.9, 0.1]).tobytes()
    return b"\x05" * n


@pytest.mark.parametrize("kind", ["uniform", "geometric", "two", "constant"])
def test_round_trip_and_size_close_to_the_order0_entropy(kind):
    data = _bytes(kind)
    frame = ans.encode_bytes(data)
    assert ans.decode_bytes(frame, len(data)) == data
    bound = empirical_entropy_bits(np.frombuffer(data, np.uint8)) / 8
    nsym = len(set(data))
    table = 2 + 3 * nsym
    # ANS words are 32-bit: at most one word of slack, plus the u16 quantisation of p
    assert len(frame) <= table + bound * 1.002 + 8, (len(frame), bound)


def test_malformed_frames_raise_value_error_only():
    data = _bytes("geometric", 5000)
    frame = ans.encode_bytes(data)
    rng = np.random.default_rng(1)
    for cut in (0, 1, 3, len(frame) // 2, len(frame) - 1):
        with pytest.raises(ValueError):
            ans.decode_bytes(frame[:cut], len(data))
    for _ in range(200):  # flipped bytes: ValueError, or some bytes (checked by the codec)
        bad = bytearray(frame)
        bad[int(rng.integers(len(bad)))] ^= int(rng.integers(1, 256))
        try:
            out = ans.decode_bytes(bytes(bad), len(data))
        except ValueError:
            continue
        assert len(out) == len(data)


def test_table_errors_name_the_problem():
    with pytest.raises(ValueError, match="0 symbols"):
        ans.decode_bytes(b"\x00\x00", 4)
    with pytest.raises(ValueError, match="not ascending"):
        ans.decode_bytes(b"\x02\x00" + bytes([5, 3]) + b"\x01\x00\x01\x00" + b"\0" * 4, 4)


@pytest.mark.parametrize("name", ["qsgd", "terngrad", "topk", "eden", "none"])
def test_entropy_ans_decodes_what_the_inner_codec_decodes(name):
    inner = build(name, error_feedback=False)
    c = build(name, error_feedback=False, entropy="ans")
    assert isinstance(c, Entropy) and c.coder == "ans"
    x = torch.randn(3, 2000, generator=torch.Generator().manual_seed(0))
    gens = lambda: [torch.Generator().manual_seed(i) for i in range(3)]  # noqa: E731
    msgs, decoded = c.compress_batch(x, gens())
    inner_msgs, inner_decoded = inner.compress_batch(x, gens())
    assert [c.unwrap(m) for m in msgs] == inner_msgs
    torch.testing.assert_close(c.decode_batch(msgs), inner_decoded, rtol=0, atol=0)
    torch.testing.assert_close(decoded, inner_decoded, rtol=0, atol=0)
    assert c.encode(x[1], gens()[1]) == msgs[1]


def test_a_zstd_message_is_refused_by_the_ans_decoder():
    x = torch.randn(100)
    msg = build("qsgd", entropy="zstd").encode(x)
    with pytest.raises(ValueError, match="coder 1, this decoder is ans"):
        build("qsgd", entropy="ans").decode(msg)


def test_ans_codes_qsgd_smaller_than_zstd():
    """Skewed levels: an order-0 model of the bytes beats LZ77 + Huffman's framing."""
    x = torch.randn(2**16, generator=torch.Generator().manual_seed(0))
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    zstd = len(build("qsgd", levels=1, entropy="zstd").encode(x, g()))
    coded = len(build("qsgd", levels=1, entropy="ans").encode(x, g()))
    plain = len(build("qsgd", levels=1).encode(x, g()))
    assert coded < zstd < plain


@pytest.mark.parametrize("name", ["qsgd", "drive"])
def test_truncated_padded_or_random_entropy_messages_raise_only_value_error(name):
    import contextlib

    from fedbench.compress import wire

    c = Entropy(build(name), "ans")
    msg = c.encode(torch.randn(13), torch.Generator().manual_seed(0))
    for n in range(len(msg)):
        with pytest.raises(ValueError):
            c.decode(msg[:n])
    with pytest.raises(ValueError):
        c.decode(msg + b"\x00")
    head = msg[: wire.header_size(1)]
    rng = np.random.default_rng(0)
    for _ in range(300):
        junk = rng.integers(0, 256, rng.integers(0, 80)).astype(np.uint8).tobytes()
        with contextlib.suppress(ValueError):
            c.decode(head + b"\x02" + junk)


def test_an_inner_length_past_the_decode_cap_is_refused_before_decoding(monkeypatch):
    import struct

    from fedbench.compress import wire

    c = Entropy(build("none"), "ans")
    msg = bytearray(c.encode(torch.randn(2**14)))
    monkeypatch.setattr(wire, "MAX_DECODE_BYTES", 2**16)  # 5 x inner_len > the cap
    at = wire.header_size(1) + 1
    msg[at : at + 4] = struct.pack("<I", 2**15)
    with pytest.raises(ValueError, match="decode cap"):
        c.decode(bytes(msg))
