"""Which values a sparse codec keeps: exact top-k, thresholds, uniform random subsets.

Shared by top-k, random-k, DGC, STC and the count sketch's server-side top-k. Every
function returns positions as int64 on the CPU (where the messages are built), and
:func:`scatter_dense` puts kept values back into a dense tensor. On the CPU numpy's
element-wise scans, zero-fills and scatters are several times faster than torch's for
these sizes, which is most of a sparse codec's time, hence the numpy views.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

_NUMPY_DTYPES = {torch.float32: np.float32, torch.float64: np.float64, torch.float16: np.float16}


def _np_view(x: torch.Tensor) -> np.ndarray | None:
    """A numpy view of a CPU tensor numpy handles natively, else None."""
    if x.device.type == "cpu" and x.dtype in _NUMPY_DTYPES and not x.requires_grad:
        return x.detach().numpy()
    return None


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


def seeded_positions_bytes(n: int, k: int) -> int:
    """Peak bytes of :func:`sample_positions` (n, k): a permutation of n, or ~4k draws
    with their sort (values, indices, masks) for k < n / 3."""
    return 8 * n + 16 * k if 3 * k >= n else 160 * k


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
