"""Bucket layout and batch-independent row reductions, shared by the quantisers.

A bucket is ``bucket_size`` consecutive values sharing one scale (0 = the whole tensor).
The hot loops walk a row chunk by chunk (:func:`spans`), each chunk holding whole
buckets, so temporaries stay in cache. Row reductions (:func:`row_abs_sum`,
:func:`row_sq_sum`, :func:`row_dot`) sum fixed-size chunks first, so a row's result has
the same bits alone or inside a batch of any size.
"""

from __future__ import annotations

import torch

from fedbench.compress import wire


def check_bucket_size(name: str, bucket_size: object) -> None:
    """ValueError naming ``name`` unless ``bucket_size`` is an int in 0..wire.MAX_NUMEL."""
    if isinstance(bucket_size, bool) or not isinstance(bucket_size, int) or bucket_size < 0:
        raise ValueError(
            f"{name}: bucket_size must be an int >= 0 (0 = per tensor), got {bucket_size!r}"
        )
    if bucket_size > wire.MAX_NUMEL:
        raise ValueError(f"{name}: bucket_size must be <= {wire.MAX_NUMEL}")


def bucket_layout(d: int, bucket_size: int) -> tuple[int, int]:
    """``(nb, size)``: how many buckets ``d`` values fill, and their size (0 = one)."""
    if d == 0:
        return 0, 1
    size = d if bucket_size == 0 else min(bucket_size, d)
    return -(-d // size), size


# Values a chunk: the hot loops work chunk by chunk so that temporaries stay in cache
# and no full-size scratch tensor is allocated (fresh 40 MB buffers cost page faults).
CHUNK = 1 << 20


def spans(d: int, nb: int, size: int):
    """Yield ``(a, b, b0, b1)``: value columns [a, b) covering whole buckets [b0, b1).

    With one bucket the chunks split it; with many, each chunk holds whole buckets.
    """
    if nb == 1:
        for a in range(0, d, CHUNK):
            yield a, min(a + CHUNK, d), 0, 1
        return
    per = max(1, CHUNK // size)
    for b0 in range(0, nb, per):
        b1 = min(b0 + per, nb)
        yield b0 * size, min(b1 * size, d), b0, b1


def chunk3(x2: torch.Tensor, a: int, b: int, k: int, size: int, *, edge: bool) -> torch.Tensor:
    """Columns [a, b) of x2 (rows, d) as fp32 (rows, k, width / k).

    ``k`` is the number of buckets the chunk holds (1: part of a single bucket). The
    last bucket is padded to ``size`` with its last value (``edge``) or zeros.
    """
    rows = x2.shape[0]
    c = x2[:, a:b].to(torch.float32)
    width = k * size if k > 1 else b - a
    if width > b - a:
        pad = c[:, -1:] if edge else c.new_zeros(rows, 1)
        c = torch.cat([c, pad.expand(rows, width - (b - a))], dim=1)
    return c.reshape(rows, k, -1)


def columns(per_bucket: torch.Tensor, a: int, b: int, b0: int, size: int) -> torch.Tensor:
    """Per-bucket values (rows, nb) spread over value columns [a, b): (rows, b - a)."""
    if per_bucket.shape[1] == 1:
        return per_bucket
    b1 = -(-(b - b0 * size) // size) + b0
    return per_bucket[:, b0:b1].repeat_interleave(size, dim=1)[:, a - b0 * size : b - b0 * size]


def row_abs_sum(v: torch.Tensor) -> torch.Tensor:
    """sum(|v|) of each row of v (rows, d) as fp64 (rows,), independent of ``rows``.

    A plain ``sum`` over one long row splits the work across threads (a different
    order, so different rounding, than the same row inside a batch); summing fixed-size
    chunks first keeps every partial sum on one thread in the same order.
    """
    rows, d = v.shape
    if d == 0:
        return torch.zeros(rows, dtype=torch.float64, device=v.device)
    chunk = max(4096, -(-d // 16384))
    k = d // chunk
    parts = [torch.linalg.vector_norm(v[:, : k * chunk].reshape(rows, k, chunk), 1, dim=-1)]
    if d > k * chunk:
        parts.append(torch.linalg.vector_norm(v[:, k * chunk :], 1, dim=-1, keepdim=True))
    return torch.cat(parts, dim=1).double().sum(-1)


def row_sq_sum(v: torch.Tensor) -> torch.Tensor:
    """sum(v^2) of each row of v (rows, n) as fp64 (rows,), independent of ``rows``.

    Fixed-size chunks keep each partial sum in one thread's order (as :func:`row_abs_sum`).
    """
    rows, n = v.shape
    chunk = max(4096, -(-n // 16384))
    k = n // chunk
    parts = [torch.linalg.vector_norm(v[:, : k * chunk].reshape(rows, k, chunk), 2, dim=-1)]
    if n > k * chunk:
        parts.append(torch.linalg.vector_norm(v[:, k * chunk :], 2, dim=-1, keepdim=True))
    return torch.cat(parts, dim=1).double().square().sum(-1)


def row_dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """<a_i, b_i> of each row (rows, n) as fp64 (rows,), independent of the batch size."""
    rows, n = a.shape
    chunk = max(4096, -(-n // 16384))
    k = n // chunk
    prod = a * b
    parts = [prod[:, : k * chunk].reshape(rows, k, chunk).sum(-1)]
    if n > k * chunk:
        parts.append(prod[:, k * chunk :].sum(-1, keepdim=True))
    return torch.cat(parts, dim=1).double().sum(-1)
