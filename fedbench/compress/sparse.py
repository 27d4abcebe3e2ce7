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
from collections.abc import Sequence

import numpy as np
import torch

from fedbench.compress import positions, wire
from fedbench.compress.base import Compressor, check_batch

_FP16, _SEED = 1, 2
_VALUE_DTYPES = {"float32": torch.float32, "float16": torch.float16}
_FLAGS_K = struct.Struct("<BI")


_NUMPY_DTYPES = {torch.float32: np.float32, torch.float64: np.float64, torch.float16: np.float16}


def _np_view(x: torch.Tensor) -> np.ndarray | None:
    """A numpy view of a CPU tensor numpy handles natively, else None.

    On CPU numpy's element-wise scans, zero-fills and scatters are several times
    faster than torch's for these sizes, which is most of a sparse codec's time.
    """
    if x.device.type == "cpu" and x.dtype in _NUMPY_DTYPES and not x.requires_grad:
        return x.detach().numpy()
    return None


def require_finite(x: torch.Tensor, what: str) -> None:
    """``wire.require_finite`` in one cheap reduction: min and max propagate NaN and inf."""
    if not all_finite(x):
        wire.require_finite(x, what)  # raises with the count of bad values


def all_finite(t: torch.Tensor) -> bool:
    """True if ``t`` holds no NaN or inf (one min/max reduction)."""
    if t.numel() == 0:
        return True
    tn = _np_view(t)
    if tn is not None:
        lo, hi = float(tn.min()), float(tn.max())
    else:
        lo, hi = (float(v) for v in torch.aminmax(t.reshape(-1).to(torch.float32)))
    return math.isfinite(lo) and math.isfinite(hi)


def abs_at_least(x2: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Flat indices (ascending, int64, on CPU) where |x2| >= t, per row: x2 (c, n), t (c, 1)."""
    xn = _np_view(x2.contiguous())
    if xn is not None:
        return torch.from_numpy(np.flatnonzero(np.abs(xn) >= t.cpu().numpy().astype(xn.dtype)))
    return (x2.abs() >= t).reshape(-1).nonzero().squeeze(1).cpu()


def row_counts(flat: torch.Tensor, c: int, n: int) -> list[int]:
    """How many of the ascending flat indices fall in each of c rows of length n."""
    edges = np.searchsorted(flat.numpy(), np.arange(c + 1, dtype=np.int64) * n)
    return np.diff(edges).tolist()


def scatter_dense(
    size: int,
    flat: torch.Tensor,
    values: torch.Tensor,
    dtype: torch.dtype,
    device: torch.device | str | None,
) -> torch.Tensor:
    """A zero vector of ``size`` with ``values`` at the (CPU, int64) indices ``flat``."""
    dev = torch.device(device) if device is not None else values.device
    values = values.to(dtype)
    if dev.type == "cpu" and dtype in _NUMPY_DTYPES:
        out = np.zeros(size, dtype=_NUMPY_DTYPES[dtype])
        out[flat.numpy()] = values.cpu().numpy()
        return torch.from_numpy(out)
    out = torch.zeros(size, dtype=dtype, device=dev)
    out[flat.to(dev)] = values.to(dev)
    return out


def threshold_sample(
    n: int, s: int, gens: Sequence[torch.Generator | None], device: torch.device
) -> torch.Tensor:
    """(clients, s) positions of a threshold sample of n values, a row per client: s
    uniform draws from the client's generator, or every (n // s)-th position without one
    (DGC's sampled threshold, Lin et al. 2018, sec. 5)."""
    stride = n // s
    strided = torch.arange(0, s * stride, stride, device=device)
    return torch.stack(
        [
            strided
            if g is None
            else torch.randint(n, (s,), generator=g, device=g.device).to(device)
            for g in gens
        ]
    )


def resolve_k(ratio: float | None, k: int | None, n: int) -> int:
    """Values to keep out of n: ``k`` clamped to n, or ``round(ratio * n)``; at least 1."""
    if n == 0:
        return 0
    want = int(k) if k is not None else round(float(ratio) * n)
    return min(n, max(1, want))


def check_ratio_k(name: str, ratio: float | None, k: int | None) -> None:
    if (ratio is None) == (k is None):
        raise ValueError(
            f"{name}: give exactly one of ratio and k (got ratio={ratio!r}, k={k!r}); "
            f"set the other to null, e.g. compressor.ratio=null compressor.k=1000"
        )
    if ratio is not None and not (isinstance(ratio, int | float) and 0 < ratio <= 1):
        raise ValueError(f"{name}: ratio must be in (0, 1], got {ratio!r}")
    if k is not None and (isinstance(k, bool) or not isinstance(k, int) or k < 1):
        raise ValueError(f"{name}: k must be an integer >= 1, got {k!r}")


def wire_value_dtype(name: str, value_dtype: str) -> torch.dtype:
    if value_dtype not in _VALUE_DTYPES:
        raise ValueError(
            f"{name}: value_dtype must be one of {list(_VALUE_DTYPES)}, got {value_dtype!r}"
        )
    return _VALUE_DTYPES[value_dtype]


def select_topk(x2: torch.Tensor, k: int, sample_size: int = 65536) -> torch.Tensor:
    """Exact top-k magnitudes of each row of ``x2`` (clients, n): (clients, k) int64
    positions on CPU, ascending.

    Equals a stable sort by decreasing |x|: among equal magnitudes the lower index wins.
    Fast path: the m-th largest |x| of a strided sample of ``sample_size`` values, m a few
    standard deviations above the expected count, is almost surely below the k-th largest;
    only the entries above it (~k of them) are searched (``np.partition``). If a row has
    fewer than k candidates (an adversarial layout), the full rows are searched: the result
    is exact either way, only the speed differs.
    """
    c, n = x2.shape
    if k >= n:
        return torch.arange(n).expand(c, n).clone()
    vals = cols = None
    s = min(n, sample_size)
    hits = s * k / n  # expected sample values above the k-th largest
    m = math.ceil(hits + 4 * math.sqrt(hits) + 4)
    if n > 4 * s and m < s:
        t = torch.topk(x2[:, :: n // s][:, :s].abs(), m, dim=1).values[:, -1:]
        flat = abs_at_least(x2, t)
        counts = row_counts(flat, c, n)
        if min(counts) >= k:
            a = x2.reshape(-1)[flat.to(x2.device)].abs().to(torch.float32).cpu().numpy()
            flat_np = flat.numpy()
            if c == 1:
                vals, cols = a[None], flat_np[None]
            else:
                rows = np.repeat(np.arange(c), counts)
                starts = np.cumsum(counts) - np.asarray(counts)
                slot = np.arange(flat_np.size) - np.repeat(starts, counts)
                vals = np.full((c, max(counts)), -1.0, dtype=np.float32)
                cols = np.zeros((c, max(counts)), dtype=np.int64)
                vals[rows, slot] = a
                cols[rows, slot] = flat_np - rows * n
    if vals is None:
        vals = x2.abs().to(torch.float32).cpu().numpy()
        cols = np.broadcast_to(np.arange(n, dtype=np.int64), (c, n))
    width = vals.shape[1]
    kth = np.partition(vals, width - k, axis=1)[:, width - k, None]  # (c, 1); padding is -1
    above = vals > kth
    need = k - above.sum(1, keepdims=True)
    tied = vals == kth
    keep = above | (tied & (np.cumsum(tied, 1) <= need))
    return torch.from_numpy(cols[keep].reshape(c, k))


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
            if flags & _SEED:
                seed = r.u64("seed")
                pos = None
            else:
                pos = positions.read_positions(r, n, k)
            vals = r.array("<f2" if flags & _FP16 else "<f4", k, "values")
            r.expect_end()
            if pos is None:
                pos = sample_positions(n, k, torch.Generator().manual_seed(seed)).numpy()
            flat_parts.append(pos + i * n)
            val_parts.append(torch.from_numpy(vals.copy()))
        values = torch.cat(val_parts)
        if not all_finite(values):
            raise ValueError(f"corrupt {self.name} message: non-finite values")
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
    codec_id = 8
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


def sample_positions(n: int, k: int, generator: torch.Generator | None) -> torch.Tensor:
    """k distinct positions among n, uniformly at random, ascending: (k,) int64 on CPU.

    A deterministic function of the generator's state (the shared-seed receiver relies on
    it). For k < n / 3 it draws 2k integers at a time and keeps the first k distinct ones
    in draw order (a uniform k-subset), O(k log k) work and memory whatever n; otherwise
    ``randperm(n)[:k]``.
    """
    dev = generator.device if generator is not None else "cpu"
    if k == 0:
        return torch.zeros(0, dtype=torch.int64)
    if 3 * k >= n:
        return torch.randperm(n, generator=generator, device=dev)[:k].cpu().sort().values
    draws = torch.zeros(0, dtype=torch.int64)
    while True:
        more = torch.randint(n, (2 * k,), generator=generator, device=dev).cpu()
        draws = torch.cat([draws, more])
        sv, si = torch.sort(draws, stable=True)
        first = torch.ones_like(sv, dtype=torch.bool)
        first[1:] = sv[1:] != sv[:-1]
        if int(first.sum()) >= k:
            break
    uniq, first_at = sv[first], si[first]
    return uniq[torch.argsort(first_at)[:k]].sort().values


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
    codec_id = 9
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
