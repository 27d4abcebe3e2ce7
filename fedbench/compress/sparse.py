"""Sparsification: top-k (exact, or with a sampled threshold as in DGC) and random-k.

Message layout of both codecs, after ``wire.write_header(codec_id, x.dtype, shape)``::

    flags   u8    bit 0: values are fp16 (else fp32); bit 1: positions come from a seed
    k       u32   how many values follow (approximate top-k: how many it actually kept)
    where   positions block (positions.py: tag byte + data), or a u64 seed if bit 1 is set
    values  k x 4 bytes (fp32) or k x 2 bytes (fp16), in increasing position order

    len(msg) = header_size(ndim) + 5 + positions_size(n, k) + k * value_bytes
             = header_size(ndim) + 5 + 8 + k * value_bytes        (randk, shared_seed)

:func:`kept` reads k back from a message: that is how a caller learns how many values
approximate top-k kept (nothing is stored on the shared instance).
"""

from __future__ import annotations

import math
import struct

import numpy as np
import torch

from fedbench.compress import ids, positions, wire
from fedbench.compress.base import Compressor, check_batch
from fedbench.compress.finite import all_finite, require_finite
from fedbench.compress.selection import (
    abs_at_least,
    check_ratio_k,
    resolve_k,
    row_counts,
    sample_positions,
    scatter_dense,
    seeded_positions_bytes,
    select_topk,
    threshold_sample,
)

_FP16, _SEED = 1, 2
_VALUE_DTYPES = {"float32": torch.float32, "float16": torch.float16}
_FLAGS_K = struct.Struct("<BI")


def wire_value_dtype(name: str, value_dtype: str) -> torch.dtype:
    if value_dtype not in _VALUE_DTYPES:
        raise ValueError(
            f"{name}: value_dtype must be one of {list(_VALUE_DTYPES)}, got {value_dtype!r}"
        )
    return _VALUE_DTYPES[value_dtype]


def kept(msg: bytes) -> int:
    """How many values a top-k / random-k message carries (its k field), validated."""
    r = wire.Reader(msg, "sparse message")
    if len(msg) < 4:
        raise ValueError("truncated sparse message")
    codec = msg[3]
    if codec not in (TopK.codec_id, RandK.codec_id):
        raise ValueError(f"not a top-k or random-k message (codec {codec})")
    h = r.header(codec)
    _, k = r.unpack("BI", "flags and k")
    if k > h.numel:
        raise ValueError(f"corrupt sparse message: k={k} > numel={h.numel}")
    return k


class _Sparse(Compressor):
    """Shared encoder tail and decoder of top-k and random-k."""

    _allowed_flags = _FP16
    _wire: torch.dtype

    def _emit(
        self,
        x: torch.Tensor,  # (clients, *shape)
        flat: torch.Tensor,  # (total,) int64 on CPU: flat indices into x, ascending
        counts: list[int],  # values per client
        values: torch.Tensor | None = None,  # (total,) what to send; default x at flat
        seeds: list[int] | None = None,
    ) -> tuple[list[bytes], torch.Tensor]:
        c, shape = x.shape[0], tuple(x.shape[1:])
        n = math.prod(shape)
        vals = x.reshape(-1)[flat.to(x.device)] if values is None else values
        sent = vals.to(self._wire)
        if not all_finite(sent):
            raise ValueError(f"{self.name}: values overflow {self._wire}; use value_dtype=float32")
        decoded = scatter_dense(c * n, flat, sent, x.dtype, x.device)
        header = wire.write_header(self.codec_id, x.dtype, shape)
        flags = _FP16 if self._wire == torch.float16 else 0
        vals_np = sent.cpu().numpy()
        bounds = np.cumsum([0, *counts])
        if seeds is not None:
            flags |= _SEED
            blocks = [struct.pack("<Q", s) for s in seeds]
        else:
            cols = flat.numpy() - np.repeat(np.arange(c, dtype=np.int64) * n, counts)
            if len(set(counts)) <= 1:
                blocks = positions.encode_positions(cols.reshape(c, -1), n)
            else:
                blocks = [
                    positions.encode_positions(cols[None, bounds[i] : bounds[i + 1]], n)[0]
                    for i in range(c)
                ]
        msgs = [
            header
            + _FLAGS_K.pack(flags, counts[i])
            + blocks[i]
            + vals_np[bounds[i] : bounds[i + 1]].tobytes()
            for i in range(c)
        ]
        return msgs, decoded.reshape(x.shape)

    def decode_batch(self, msgs, device=None):
        if len(msgs) == 0:
            raise ValueError(f"{self.name}: decode_batch needs at least one message")
        hdr, flat_parts, val_parts = None, [], []
        for i, msg in enumerate(msgs):
            r = wire.Reader(msg, f"{self.name} message")
            h = r.header(self.codec_id)
            if hdr is not None and h != hdr:
                raise ValueError(f"{self.name}: messages in one batch differ in shape or dtype")
            hdr, n = h, h.numel
            flags, k = r.unpack("BI", "flags and k")
            if flags & ~self._allowed_flags:
                raise ValueError(f"corrupt {self.name} message: unknown flags {flags:#x}")
            if k > n:
                raise ValueError(f"corrupt {self.name} message: k={k} > {n} values")
            # the output, and the values on their way into it (copies, int64 flat indices)
            reserve = n * h.dtype.itemsize + k * (32 + h.dtype.itemsize)
            if flags & _SEED:
                seed = r.u64("seed")
                pos = None
                wire.check_decode_bytes(reserve + seeded_positions_bytes(n, k), r.what)
            else:
                pos = positions.read_positions(r, n, k, reserve=reserve)
            vals = r.array("<f2" if flags & _FP16 else "<f4", k, "values")
            r.expect_end()
            if pos is None:
                pos = sample_positions(n, k, torch.Generator().manual_seed(seed)).numpy()
            flat_parts.append(pos + i * n)
            val_parts.append(torch.from_numpy(vals.copy()))
        values = torch.cat(val_parts)  # NaN/inf: Compressor's check of the output
        flat = torch.from_numpy(np.concatenate(flat_parts))
        out = scatter_dense(len(msgs) * hdr.numel, flat, values, hdr.dtype, device)
        return out.reshape(len(msgs), *hdr.shape)


class TopK(_Sparse):
    """Top-k sparsification (Aji & Heafield 2017; Stich et al. 2018): keep the k largest
    magnitudes, zero the rest. Biased: pair it with error feedback.

    ``approximate=True`` estimates the threshold from a sample as in Deep Gradient
    Compression (Lin et al. 2018, sec. 3 "sampling"): t = the (round(s k / n))-th largest
    magnitude among s sampled values; every |x| >= t is kept, so the count varies around
    k (always >= 1) and is the message's k field (:func:`kept`). The sample is drawn from
    the generator when one is given, else a deterministic strided one.
    Exact mode keeps exactly k, ties broken toward the lower index (see :func:`select_topk`).

    Size: ``header_size(ndim) + 5 + positions_size(n, k) + k * (4 | 2)`` bytes.
    """

    name = "topk"
    codec_id = ids.codec_id("topk")
    family = ids.family("topk")
    biased = True
    randomised = False

    def __init__(
        self,
        ratio: float | None = None,
        k: int | None = None,
        approximate: bool = False,
        value_dtype: str = "float32",
        sample_size: int = 65536,
    ) -> None:
        check_ratio_k(self.name, ratio, k)
        if not isinstance(sample_size, int) or sample_size < 1:
            raise ValueError(
                f"{self.name}: sample_size must be an integer >= 1, got {sample_size!r}"
            )
        self.ratio, self.k = ratio, k
        self.approximate = bool(approximate)
        self.value_dtype = value_dtype
        self.sample_size = sample_size
        self._wire = wire_value_dtype(self.name, value_dtype)
        if self.approximate:
            self.randomised = True  # the sample comes from the generator when given

    def _threshold_keep(self, x2: torch.Tensor, k: int, gens) -> torch.Tensor:
        """DGC threshold per row of ``x2`` (clients, n): flat indices (CPU) of |x| >= t."""
        n = x2.shape[1]
        s = min(n, self.sample_size)
        stride = n // s
        m = max(1, min(s, round(s * k / n)))
        if all(g is None for g in gens):
            sample = x2[:, ::stride][:, :s].abs()
        else:
            sample = x2.gather(1, threshold_sample(n, s, gens, x2.device)).abs()
        t = torch.topk(sample, m, dim=1).values[:, -1:]
        return abs_at_least(x2, t)

    def compress_batch(self, x, generators=None, states=None):
        gens, _ = check_batch(self, x, generators, states)
        require_finite(x, f"{self.name} input")
        c = x.shape[0]
        n = math.prod(x.shape[1:])
        k = resolve_k(self.ratio, self.k, n)
        x2 = x.reshape(c, n)
        if self.approximate and 0 < k < n:
            flat = self._threshold_keep(x2, k, gens)
            counts = row_counts(flat, c, n)
        else:
            idx = select_topk(x2, k, self.sample_size)
            flat = (idx + torch.arange(c)[:, None] * n).reshape(-1)
            counts = [k] * c
        return self._emit(x, flat, counts)


class RandK(_Sparse):
    """Random-k sparsification (Stich et al. 2018; Wangni et al. 2018): k positions drawn
    uniformly without replacement from the generator, values scaled by n / k so that
    E[decode(encode(x))] = x (unbiased; variance grows as n / k).

    ``shared_seed=True`` sends a u64 seed drawn from the generator instead of the
    positions; the receiver redraws them with :func:`sample_positions` from
    ``torch.Generator().manual_seed(seed)``.

    Size: ``header_size(ndim) + 5 + (8 | positions_size(n, k)) + k * (4 | 2)`` bytes.
    """

    name = "randk"
    codec_id = ids.codec_id("randk")
    family = ids.family("randk")
    biased = False
    randomised = True
    _allowed_flags = _FP16 | _SEED

    def __init__(
        self,
        ratio: float | None = None,
        k: int | None = None,
        shared_seed: bool = False,
        value_dtype: str = "float32",
    ) -> None:
        check_ratio_k(self.name, ratio, k)
        self.ratio, self.k = ratio, k
        self.shared_seed = bool(shared_seed)
        self.value_dtype = value_dtype
        self._wire = wire_value_dtype(self.name, value_dtype)

    def compress_batch(self, x, generators=None, states=None):
        gens, _ = check_batch(self, x, generators, states)
        require_finite(x, f"{self.name} input")
        c = x.shape[0]
        n = math.prod(x.shape[1:])
        k = resolve_k(self.ratio, self.k, n)
        seeds = None
        if self.shared_seed:
            dev = [g.device if g is not None else "cpu" for g in gens]
            seeds = [
                int(torch.randint(2**63 - 1, (1,), generator=g, device=d))
                for g, d in zip(gens, dev, strict=True)
            ]
            idx = [sample_positions(n, k, torch.Generator().manual_seed(s)) for s in seeds]
        else:
            idx = [sample_positions(n, k, g) for g in gens]
        cols = torch.stack(idx) if c else torch.zeros(0, k, dtype=torch.int64)
        flat = (cols + torch.arange(c)[:, None] * n).reshape(-1)
        scale = n / k if k else 1.0
        values = x.reshape(-1)[flat.to(x.device)].to(torch.float32) * scale
        return self._emit(x, flat, [k] * c, values=values, seeds=seeds)
