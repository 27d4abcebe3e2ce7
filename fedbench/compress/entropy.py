"""Entropy coding of any codec's message, and the empirical entropy the coded size is judged by.

``Entropy(inner, coder="zstd")`` compresses the inner codec's complete message with
Zstandard (lossless; ``coder="ans"``: an order-0 ANS coder of its bytes under their own
histogram, :mod:`fedbench.compress.ans`), so the decoded tensor is the inner codec's, bit for bit, and the
bytes counted are the compressed ones. Quantised codes are far from uniform (QSGD's
levels are mostly 0, top-k positions are sorted), so a general-purpose coder recovers
part of the gap to the entropy; :func:`empirical_entropy_bits` states that gap.

Message layout (the inner message is untrusted after decompression too)::

    header (codec 23, the tensor's dtype and shape) | coder u8 | inner_len u32 | frame

    coder 1 = zstd (a zstd frame), 2 = ans (the frame of fedbench.compress.ans)

Decompression is bounded before it starts: ``inner_len`` must not exceed what the inner
codec can legitimately write for the header's shape (:func:`max_inner_bytes`) nor
``FEDBENCH_MAX_DECODE_BYTES``; the zstd frame must declare exactly ``inner_len`` bytes,
and at most ``inner_len`` are produced.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from fedbench.compress import ans, ids, wire
from fedbench.compress.base import Compressor, ErrorFeedback, _Wrapper, check_batch

CODERS = ("zstd", "ans")
_CODER_ID = {"zstd": 1, "ans": 2}
# What one inner message may hold per value (fp64 dense is 8; an index + fp64 value is
# 12) plus a fixed allowance for per-message fields (scales, seeds, bucket statistics).
_BYTES_PER_VALUE = 16
_FIXED_BYTES = 4096


def _zstd():
    try:
        import zstandard
    except ImportError:  # pragma: no cover - exercised only without the package
        raise ValueError(
            "entropy coder 'zstd' needs the zstandard package: pip install zstandard"
        ) from None
    return zstandard


def max_inner_bytes(numel: int, ndim: int) -> int:
    """The largest inner message accepted for a tensor of ``numel`` values."""
    cap = getattr(wire, "MAX_DECODE_BYTES", 2**30)  # read per call: tests and users change it
    return min(wire.header_size(ndim) + _FIXED_BYTES + _BYTES_PER_VALUE * numel, cap)


class Entropy(_Wrapper):
    """Lossless entropy coding (zstd, or order-0 ANS: :mod:`fedbench.compress.ans`) of
    the inner codec's message."""

    name = "entropy"
    codec_id = ids.codec_id("entropy")

    def __init__(self, inner: Compressor, coder: str = "zstd", level: int = 3) -> None:
        if not isinstance(inner, Compressor) or isinstance(inner, ErrorFeedback):
            raise ValueError(
                "entropy: inner must be a codec (apply error feedback outside entropy coding)"
            )
        if coder not in CODERS:
            raise ValueError(f"entropy: coder must be one of {CODERS}, got {coder!r}")
        if isinstance(level, bool) or not isinstance(level, int) or not 1 <= level <= 22:
            raise ValueError(f"entropy: level must be an int in 1..22, got {level!r}")
        self.inner = inner
        self.coder = coder
        self.level = level  # zstd only
        self._zstd = _zstd() if coder == "zstd" else None
        if coder == "ans":
            ans._constriction()  # a missing package fails here, not at the first message

    def init_state(self, shape, *, dtype=torch.float32, device=None):
        return self.inner.init_state(shape, dtype=dtype, device=device)

    def _wrap(self, x: torch.Tensor, msgs: Sequence[bytes]) -> list[bytes]:
        header = wire.write_header(self.codec_id, x.dtype, tuple(x.shape[1:]))
        if self.coder == "ans":
            code = ans.encode_bytes
        else:
            code = self._zstd.ZstdCompressor(level=self.level, write_content_size=True).compress
        meta = bytes([_CODER_ID[self.coder]])
        return [b"".join((header, meta, np.uint32(len(m)).tobytes(), code(m))) for m in msgs]

    def compress_batch(self, x, generators=None, states=None):
        gens, sts = check_batch(self, x, generators, states)
        msgs, decoded = self.inner.compress_batch(x, gens, sts)
        return self._wrap(x, msgs), decoded

    def encode_batch(self, x, generators=None, states=None):
        gens, sts = check_batch(self, x, generators, states)
        return self._wrap(x, self.inner.encode_batch(x, gens, sts))

    def unwrap(self, msg: bytes) -> bytes:
        """The inner codec's message inside ``msg``, validated; ValueError if malformed."""
        r = wire.Reader(msg, "entropy message")
        h = r.header(self.codec_id)
        coder = r.u8("coder")
        if coder != _CODER_ID[self.coder]:
            raise ValueError(
                f"corrupt entropy message: coder {coder}, this decoder is {self.coder}"
            )
        inner_len = r.u32("inner_len")
        cap = max_inner_bytes(h.numel, len(h.shape))
        if inner_len > cap:
            raise ValueError(
                f"corrupt entropy message: inner_len {inner_len} exceeds the {cap} bytes a "
                f"{h.shape} tensor may take (FEDBENCH_MAX_DECODE_BYTES)"
            )
        if self.coder == "ans":
            # the decoded symbol indices (int32) and the bytes they map to
            wire.check_decode_bytes(5 * inner_len, r.what)
            inner = ans.decode_bytes(r.take(r.remaining, "ans frame"), inner_len)
        else:
            inner = self._unzstd(bytes(r.take(r.remaining, "zstd frame")), inner_len)
        ih = wire.Reader(inner, "entropy inner message").header(self.inner.codec_id)
        if ih.shape != h.shape or ih.dtype != h.dtype:
            raise ValueError(
                "corrupt entropy message: inner shape or dtype differs from the header"
            )
        return inner

    def _unzstd(self, frame: bytes, inner_len: int) -> bytes:
        zstd = self._zstd
        try:
            declared = zstd.get_frame_parameters(frame).content_size
            if declared != inner_len:
                raise ValueError(
                    f"corrupt entropy message: frame declares {declared} bytes, header {inner_len}"
                )
            inner = zstd.ZstdDecompressor().decompress(
                frame, max_output_size=inner_len, allow_extra_data=False
            )
        except zstd.ZstdError as e:
            raise ValueError(f"corrupt entropy message: zstd: {e}") from None
        if len(inner) != inner_len:
            raise ValueError(f"corrupt entropy message: {len(inner)} bytes, header {inner_len}")
        return inner

    def decode_batch(self, msgs, device=None):
        if len(msgs) == 0:
            raise ValueError("entropy: decode_batch needs at least one message")
        return self.inner.decode_batch([self.unwrap(m) for m in msgs], device)

    def __repr__(self) -> str:
        level = f", level={self.level}" if self.coder == "zstd" else ""
        return f"Entropy({self.inner!r}, coder={self.coder!r}{level})"


def wrap(codec: Compressor, entropy: str | None, level: int = 3) -> Compressor:
    """``codec`` entropy-coded by ``entropy`` (None: unchanged). Error feedback stays outside."""
    if entropy is None:
        return codec
    if isinstance(codec, ErrorFeedback):
        return ErrorFeedback(Entropy(codec.inner, entropy, level))
    return Entropy(codec, entropy, level)


def empirical_entropy_bits(msg_symbols: torch.Tensor | np.ndarray | Sequence[int]) -> float:
    """Total bits an ideal order-0 coder needs for these symbols: ``N * H(p_hat)``.

    ``p_hat`` is the symbols' empirical distribution (QSGD levels, TernGrad's ternary
    values, gaps between sparse positions). A lower bound for any coder that models
    symbols one at a time without context; the leaderboard compares coded sizes to it.
    """
    a = np.asarray(
        msg_symbols.detach().cpu() if isinstance(msg_symbols, torch.Tensor) else msg_symbols
    ).ravel()
    if a.size == 0:
        return 0.0
    _, counts = np.unique(a, return_counts=True)
    p = counts / a.size
    return float(-(counts * np.log2(p)).sum())
