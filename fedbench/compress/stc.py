"""Sparse Ternary Compression (Sattler et al. 2019, "Robust and Communication-Efficient
Federated Learning from Non-IID Data", IEEE TNNLS, Alg. 1 and sec. IV).

Keep the top-k magnitudes (k = round(ratio * n)), replace each by
``mu * sign(x)`` with ``mu`` the mean magnitude of the kept values, and Golomb-code the
gaps between kept positions. Biased: use with error feedback (the paper does).

Golomb (Rice) coding of the gaps: with density p = k / n the gaps are ~geometric and the
paper's optimal Rice parameter is (sec. IV)::

    b* = 1 + floor(log2( log(phi - 1) / log(1 - p) )),   phi = (1 + sqrt 5) / 2

(clamped to [0, 30]); gap g = pos_i - pos_{i-1} - 1 (pos_{-1} = -1) is sent as the
quotient q = g >> b* in unary (q zero bits, then a one) and the remainder in b* bits,
about ``b* + 1 / (1 - (1 - p)^(2^b*))`` bits a position.

Message layout, after ``wire.write_header(12, x.dtype, shape)``::

    k        u32
    b        u8                  Rice parameter
    mu       f32                 mean kept magnitude (finite, >= 0)
    signs    ceil(k / 8) bytes   1 = negative, LSB first, in position order
    rems     ceil(k b / 8) bytes remainders, b bits each, LSB first
    unary    ceil((sum q + k) / 8) bytes, to the end of the message

    len(msg) = header_size(ndim) + 9 + ceil(k/8) + ceil(k b/8) + ceil((sum_i q_i + k)/8)
"""

from __future__ import annotations

import math
import struct

import numpy as np
import torch

from fedbench.compress import ids, wire
from fedbench.compress.base import Compressor, check_batch
from fedbench.compress.finite import require_finite
from fedbench.compress.selection import resolve_k, select_topk

_GOLDEN = (1 + math.sqrt(5)) / 2
_MAX_B = 30
_KBM = struct.Struct("<IBf")


def rice_parameter(n: int, k: int) -> int:
    """Sattler et al. 2019 sec. IV: the Rice parameter b* for k positions among n."""
    if k <= 0 or n <= 0 or k >= n:
        return 0
    p = k / n
    b = 1 + math.floor(math.log2(math.log(_GOLDEN - 1) / math.log1p(-p)))
    return min(_MAX_B, max(0, b))


def _pack(bits: np.ndarray) -> np.ndarray:
    return np.packbits(bits.astype(np.uint8, copy=False), axis=-1, bitorder="little")


def golomb_encode(pos: np.ndarray, b: int) -> tuple[np.ndarray, list[bytes]]:
    """Rice-code ascending positions, vectorised over rows.

    pos: (rows, k) int64, each row strictly increasing. Returns the packed remainders
    (rows, ceil(k b / 8)) uint8 and each row's unary stream as bytes.
    """
    rows, k = pos.shape
    prev = np.concatenate([np.full((rows, 1), -1, dtype=np.int64), pos[:, :-1]], axis=1)
    gaps = pos - prev - 1
    q, rem = gaps >> b, gaps & ((1 << b) - 1)
    rem_packed = _pack(((rem[..., None] >> np.arange(b)) & 1).reshape(rows, k * b))
    ends = np.cumsum(q + 1, axis=1) - 1  # bit index of each terminating one
    length = ends[:, -1] + 1 if k else np.zeros(rows, dtype=np.int64)
    unary = np.zeros((rows, int(length.max(initial=0))), dtype=np.uint8)
    unary[np.arange(rows)[:, None], ends] = 1
    packed = _pack(unary)
    return rem_packed, [packed[i, : (int(length[i]) + 7) // 8].tobytes() for i in range(rows)]


def golomb_decode(rem_raw: np.ndarray, unary_raw: np.ndarray, n: int, k: int, b: int) -> np.ndarray:
    """Inverse of :func:`golomb_encode` for one row: (k,) int64 positions, validated."""
    if k == 0:
        if unary_raw.size:
            raise ValueError("corrupt stc message: position stream for k=0")
        return np.zeros(0, dtype=np.int64)
    ends = np.flatnonzero(np.unpackbits(unary_raw, bitorder="little"))
    if ends.size != k:
        raise ValueError(f"corrupt stc message: {ends.size} unary codes, expected {k}")
    if ends[-1] < 8 * (unary_raw.size - 1):
        raise ValueError("corrupt stc message: trailing bytes after the position stream")
    q = np.diff(ends, prepend=-1) - 1
    if int(q.max()) > (n >> b):
        raise ValueError(f"corrupt stc message: a gap runs past {n} positions")
    gaps = q << b
    if b:
        rbits = np.unpackbits(rem_raw, count=k * b, bitorder="little").reshape(k, b)
        gaps |= (rbits.astype(np.int64) << np.arange(b)).sum(axis=1)
    pos = np.cumsum(gaps + 1) - 1
    if pos[-1] >= n:
        raise ValueError(f"corrupt stc message: position {int(pos[-1])} >= {n}")
    return pos


def decode_bytes(n: int, k: int, b: int, stream: int, dtype: torch.dtype) -> int:
    """Peak bytes of decoding one message: the output (n values of ``dtype``), the
    unpacked unary stream (a byte a bit of the ``stream`` bytes left), the int64 gaps and
    positions (~10 words a position) and the remainders' bits widened to int64."""
    return n * dtype.itemsize + 8 * stream + 80 * k + 17 * k * b


class STC(Compressor):
    """Sparse Ternary Compression (Sattler et al. 2019, Alg. 1 "STC"; Golomb positions,
    sec. IV). Top-k, then ternary values ``mu * sign``; 1 bit a sign, ~b*+2 bits a
    position. Size: see the module docstring (depends on the gaps, exactly computable)."""

    name = "stc"
    codec_id = ids.codec_id("stc")
    family = ids.family("stc")
    biased = True
    randomised = False

    def __init__(self, ratio: float = 0.01, sample_size: int = 65536) -> None:
        if isinstance(ratio, bool) or not isinstance(ratio, int | float) or not 0 < ratio <= 1:
            raise ValueError(f"stc: ratio must be in (0, 1], got {ratio!r}")
        if not isinstance(sample_size, int) or sample_size < 1:
            raise ValueError(f"stc: sample_size must be an integer >= 1, got {sample_size!r}")
        self.ratio = float(ratio)
        self.sample_size = sample_size

    def compress_batch(self, x, generators=None, states=None):
        check_batch(self, x, generators, states)
        require_finite(x, "stc input")
        c, shape = x.shape[0], tuple(x.shape[1:])
        n = math.prod(shape)
        k = resolve_k(self.ratio, None, n)
        b = rice_parameter(n, k)
        x2 = x.reshape(c, n)
        idx = select_topk(x2, k, self.sample_size)  # (c, k) ascending, CPU
        kept = x2.gather(1, idx.to(x.device)).to(torch.float32).cpu()
        mu = kept.abs().mean(1) if k else torch.zeros(c)  # (c,)
        if not bool(torch.isfinite(mu).all()):
            raise ValueError("stc: the mean kept magnitude overflows float32")
        negative = kept < 0
        decoded_vals = torch.where(negative, -mu[:, None], mu[:, None]).to(x.dtype)
        decoded = torch.zeros(c, n, dtype=x.dtype)
        decoded.scatter_(1, idx, decoded_vals)
        signs = np.packbits(negative.numpy().astype(np.uint8), axis=-1, bitorder="little")
        rems, unary = golomb_encode(idx.numpy(), b)
        header = wire.write_header(self.codec_id, x.dtype, shape)
        msgs = [
            header
            + _KBM.pack(k, b, float(mu[i]))
            + signs[i].tobytes()
            + rems[i].tobytes()
            + unary[i]
            for i in range(c)
        ]
        return msgs, decoded.to(x.device).reshape(x.shape)

    def decode_batch(self, msgs, device=None):
        if len(msgs) == 0:
            raise ValueError("stc: decode_batch needs at least one message")
        hdr, rows = None, []
        for msg in msgs:
            r = wire.Reader(msg, "stc message")
            h = r.header(self.codec_id)
            if hdr is not None and h != hdr:
                raise ValueError("stc: messages in one batch differ in shape or dtype")
            hdr, n = h, h.numel
            k, b, mu = r.unpack("IBf", "k, b and mu")
            if k > n:
                raise ValueError(f"corrupt stc message: k={k} > {n} values")
            if b > _MAX_B:
                raise ValueError(f"corrupt stc message: Rice parameter {b} > {_MAX_B}")
            if not math.isfinite(mu) or mu < 0:
                raise ValueError(f"corrupt stc message: mean magnitude {mu}")
            wire.check_decode_bytes(decode_bytes(n, k, b, r.remaining, h.dtype), r.what)
            signs = np.frombuffer(r.take((k + 7) // 8, "signs"), dtype=np.uint8)
            rem_raw = np.frombuffer(r.take((k * b + 7) // 8, "remainders"), dtype=np.uint8)
            unary_raw = np.frombuffer(r.take(r.remaining, "positions"), dtype=np.uint8)
            pos = golomb_decode(rem_raw, unary_raw, n, k, b)
            neg = np.unpackbits(signs, count=k, bitorder="little").astype(bool)
            rows.append((pos, torch.from_numpy(neg), mu))
        n = hdr.numel
        out = torch.zeros(len(msgs), n, dtype=hdr.dtype)
        for i, (pos, neg, mu) in enumerate(rows):
            mu_t = torch.tensor(mu, dtype=torch.float32)
            out[i, torch.from_numpy(pos)] = torch.where(neg, -mu_t, mu_t).to(hdr.dtype)
        return out.to(device).reshape(len(msgs), *hdr.shape)
