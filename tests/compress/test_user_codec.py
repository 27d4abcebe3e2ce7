"""A user's codec with only encode/decode of one tensor works everywhere (issue 12, 5).

The codec lives in a module of its own outside fedbench (written to a temporary folder
and imported by ``_target_``), implements two methods, and passes the contract: round
trip, batched == single bit for bit, same generator same bytes, ValueError on bad bytes.
"""

from __future__ import annotations

import textwrap

import pytest
import torch

from fedbench.compress import ErrorFeedback, from_config
from fedbench.compress.base import Compressor

USER_MODULE = '''
import numpy as np
import torch

from fedbench.compress import Compressor, wire


class DitheredHalf(Compressor):
    """fp16 values after a dither drawn from the generator: 2 bytes a value."""

    name = "dithered_half"
    codec_id = 200
    randomised = True

    def __init__(self, dither: float = 1e-3) -> None:
        self.dither = dither

    def encode(self, x, generator=None, state=None):
        noise = torch.rand(x.shape, generator=generator) - 0.5
        v = (x.to(torch.float32) + self.dither * noise).to(torch.float16)
        return wire.write_header(self.codec_id, x.dtype, tuple(x.shape)) + v.numpy().tobytes()

    def decode(self, msg, device=None):
        r = wire.Reader(msg, "dithered_half message")
        h = r.header(self.codec_id)
        vals = r.array("<f2", h.numel, "values")
        r.expect_end()
        return torch.from_numpy(vals.copy()).to(h.dtype).reshape(h.shape).to(device)
'''


@pytest.fixture
def user_codec(tmp_path, monkeypatch):
    (tmp_path / "fb_user_codec.py").write_text(textwrap.dedent(USER_MODULE))
    monkeypatch.syspath_prepend(str(tmp_path))
    return from_config({"_target_": "fb_user_codec.DitheredHalf", "dither": 0.01})


def gens(n: int, offset: int = 0) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(offset + i) for i in range(n)]


@pytest.mark.parametrize("shape", [(), (13,), (3, 5, 7)], ids=str)
def test_round_trip_and_batched_equals_single(user_codec, shape):
    c = user_codec
    x = torch.randn(4, *shape, generator=torch.Generator().manual_seed(1))
    msgs, decoded = c.compress_batch(x, gens(4))
    assert decoded.shape == x.shape and decoded.dtype == x.dtype
    assert msgs == [c.encode(x[i], g) for i, g in enumerate(gens(4))]
    assert c.encode_batch(x, gens(4)) == msgs
    torch.testing.assert_close(c.decode_batch(msgs), decoded, rtol=0, atol=0)
    torch.testing.assert_close(torch.stack([c.decode(m) for m in msgs]), decoded, rtol=0, atol=0)
    torch.testing.assert_close(decoded, x, rtol=0, atol=0.01)  # fp16 + dither


def test_same_generator_same_bytes_and_the_generator_matters(user_codec):
    x = torch.randn(100)
    assert user_codec.encode(x, gens(1)[0]) == user_codec.encode(x, gens(1)[0])
    assert user_codec.encode(x, gens(1)[0]) != user_codec.encode(x, gens(1, 5)[0])


def test_error_feedback_wraps_a_two_method_codec(user_codec):
    ef = ErrorFeedback(user_codec)
    x = torch.randn(2, 50)
    st = [ef.init_state((50,)) for _ in range(2)]
    msgs, decoded = ef.compress_batch(x, gens(2), st)
    torch.testing.assert_close(st[0].residual, x[0] - decoded[0], rtol=0, atol=0)
    torch.testing.assert_close(ef.decode_batch(msgs), decoded, rtol=0, atol=0)


def test_bad_bytes_raise_value_error(user_codec):
    msg = user_codec.encode(torch.randn(10))
    with pytest.raises(ValueError, match="truncated"):
        user_codec.decode(msg[:-3])
    with pytest.raises(ValueError, match="written by codec"):
        user_codec.decode(msg[:3] + bytes([1]) + msg[4:])
    inf16 = torch.tensor([float("inf")], dtype=torch.float16).numpy().tobytes()
    with pytest.raises(ValueError, match="non-finite"):  # the shared finite check
        user_codec.decode(msg[:-2] + inf16)
    with pytest.raises(ValueError, match="differ in shape"):
        user_codec.decode_batch([msg, user_codec.encode(torch.randn(11))])


def test_a_codec_with_neither_pair_is_refused_with_a_clear_error():
    class EncodesOnly(Compressor):
        name = "encodes_only"
        codec_id = 210

        def encode(self, x, generator=None, state=None):
            return b""

    with pytest.raises(ValueError, match=r"neither decode \(or decode_batch\)"):
        EncodesOnly()

    class Nothing(Compressor):
        name = "nothing"
        codec_id = 211

    with pytest.raises(ValueError, match=r"encode .or compress_batch. nor decode"):
        Nothing()


def test_a_user_codec_without_an_id_is_refused():
    class NoId(Compressor):
        name = "no_id"

        def encode(self, x, generator=None, state=None):
            return b""

        def decode(self, msg, device=None):
            return torch.zeros(0)

    with pytest.raises(ValueError, match=r"no codec_id.*128\.\.255"):
        NoId()
