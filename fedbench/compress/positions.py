"""Encoding of k sorted positions among n: the index part of every sparse message.

Three encodings (and a free one for "all positions"); the encoder takes the cheapest for
the (n, k) at hand, and a 1-byte tag says which one was used:

=====  ============  ============================================================
tag    encoding      bytes after the tag
=====  ============  ============================================================
0      ``index32``   ``4 k`` (uint32 little-endian, strictly increasing)
1      ``bitmap``    ``ceil(n / 8)`` (bit i, LSB first, set iff position i is kept)
2      Elias-Fano    ``ceil(k l / 8) + ceil((k + ((n - 1) >> l)) / 8)``, l below
3      ``all``       ``0`` (only when k == n)
=====  ============  ============================================================

Elias-Fano (Elias 1974; Fano 1971; Vigna 2013, "Quasi-succinct indices" sec. 3) splits
each position p into its ``l`` low bits, stored verbatim, and its high part ``p >> l``,
stored as one set bit at ``(p >> l) + i`` of an upper bit array. With
``l ~ log2(n / k)`` it costs at most ``2 + ceil(log2(n / k))`` bits a position, within
2 bits of the information-theoretic ``log2 C(n, k)``. It beats delta-varint (which pays
whole bytes: 8 bits a position for gaps under 128) at every density, and it is decoded
with array operations only (``unpackbits`` + ``flatnonzero``), where a varint decoder
needs a sequential scan. ``l`` is a function of (n, k) alone (:func:`elias_fano_low_bits`),
so it is not sent and every size is known before encoding.

All sizes depend on (n, k) only: :func:`positions_size` tells a codec its exact message
length before it encodes anything.
"""

from __future__ import annotations

import numpy as np

from fedbench.compress import wire

INDEX32, BITMAP, ELIAS_FANO, ALL = 0, 1, 2, 3
TAG_NAMES = {INDEX32: "index32", BITMAP: "bitmap", ELIAS_FANO: "elias-fano", ALL: "all"}
_MAX_LOW_BITS = 31


def _ef_cost(n: int, k: int, low: int) -> int:
    return (k * low + 7) // 8 + (k + ((n - 1) >> low) + 7) // 8


def elias_fano_low_bits(n: int, k: int) -> int:
    """The number of low bits ``l`` Elias-Fano uses for k positions among n (the cheapest)."""
    if k <= 0 or n <= 1:
        return 0
    costs = [_ef_cost(n, k, low) for low in range(min(_MAX_LOW_BITS, (n - 1).bit_length()) + 1)]
    return int(np.argmin(costs))  # first minimum: deterministic


def encoded_size(n: int, k: int, tag: int) -> int:
    """Bytes (tag byte excluded) that ``tag`` needs for k positions among n."""
    if tag == INDEX32:
        return 4 * k
    if tag == BITMAP:
        return (n + 7) // 8
    if tag == ELIAS_FANO:
        return _ef_cost(n, k, elias_fano_low_bits(n, k)) if k else 0
    if tag == ALL:
        if k != n:
            raise ValueError(f"tag 'all' encodes k == n positions only, got k={k}, n={n}")
        return 0
    raise ValueError(f"unknown positions tag {tag}; allowed: {sorted(TAG_NAMES)}")


def choose(n: int, k: int) -> int:
    """The cheapest tag for k positions among n (ties go to the lower tag)."""
    if not 0 <= k <= n:
        raise ValueError(f"k must be in [0, n={n}], got {k}")
    if k == n:
        return ALL
    sizes = [encoded_size(n, k, tag) for tag in (INDEX32, BITMAP, ELIAS_FANO)]
    return int(np.argmin(sizes))


def positions_size(n: int, k: int) -> int:
    """Exact bytes of the positions block (tag byte included) for k positions among n."""
    return 1 + encoded_size(n, k, choose(n, k))


def _pack_rows(bits: np.ndarray) -> np.ndarray:
    """(rows, nbits) of 0/1 -> (rows, ceil(nbits / 8)) uint8, LSB first."""
    return np.packbits(bits.astype(np.uint8, copy=False), axis=-1, bitorder="little")


def encode_positions(idx: np.ndarray, n: int, tag: int | None = None) -> list[bytes]:
    """Positions blocks (tag + data), one per row of ``idx``.

    idx: (rows, k) integer array, each row strictly increasing in [0, n) (not checked:
    the caller computed them). All rows share k, so the work is vectorised over rows.
    ``tag`` forces an encoding (tests); by default the cheapest, :func:`choose`.
    """
    idx = np.asarray(idx, dtype=np.int64)
    if idx.ndim != 2:
        raise ValueError(f"idx must be (rows, k), got shape {idx.shape}")
    rows, k = idx.shape
    tag = choose(n, k) if tag is None else tag
    encoded_size(n, k, tag)  # validates tag (and 'all' needs k == n)
    head = bytes([tag])
    if tag == ALL or (k == 0 and tag != BITMAP):
        return [head] * rows
    if tag == INDEX32:
        data = idx.astype("<u4")
        return [head + data[i].tobytes() for i in range(rows)]
    if tag == BITMAP:
        bits = np.zeros((rows, n), dtype=np.uint8)
        bits[np.arange(rows)[:, None], idx] = 1
        packed = _pack_rows(bits)
        return [head + packed[i].tobytes() for i in range(rows)]
    low = elias_fano_low_bits(n, k)
    upper_bits = k + ((n - 1) >> low)
    upper = np.zeros((rows, upper_bits), dtype=np.uint8)
    upper[np.arange(rows)[:, None], (idx >> low) + np.arange(k)] = 1
    upper_packed = _pack_rows(upper)
    if low:
        lows = (idx[..., None] >> np.arange(low)) & 1  # (rows, k, low)
        low_packed = _pack_rows(lows.reshape(rows, k * low))
        return [head + low_packed[i].tobytes() + upper_packed[i].tobytes() for i in range(rows)]
    return [head + upper_packed[i].tobytes() for i in range(rows)]


def _check_increasing(pos: np.ndarray, n: int, what: str) -> np.ndarray:
    if pos.size and (pos[0] < 0 or pos[-1] >= n or not bool(np.all(pos[1:] > pos[:-1]))):
        raise ValueError(f"corrupt {what}: positions are not strictly increasing in [0, {n})")
    return pos


def peak_bytes(n: int, k: int, tag: int) -> int:
    """Peak bytes :func:`read_positions` allocates for k positions among n with ``tag``:
    the int64 positions and the copies made on the way (unpacked bits, low-bit words)."""
    if k == 0 and tag != BITMAP:
        return 0  # nothing is read or allocated
    if tag == ALL:
        return 16 * n
    if tag == INDEX32:
        return 24 * k
    if tag == BITMAP:
        return 8 * ((n + 7) // 8) + 24 * k
    low = elias_fano_low_bits(n, k)
    return k + ((n - 1) >> low) + 48 * k + 17 * k * low


def read_positions(r: wire.Reader, n: int, k: int, *, reserve: int = 0) -> np.ndarray:
    """Read one positions block from ``r``: (k,) int64, strictly increasing, in [0, n).

    Untrusted input: a bad tag, a short block, positions out of range, repeated or out
    of order, or a count that disagrees with k raise ValueError. Nothing is allocated
    beyond 8 bits per byte actually present in the message (and k, which the caller has
    bounded by n), and not before :func:`peak_bytes` plus ``reserve`` (what the caller
    allocates beside the positions: its output) has passed ``wire.check_decode_bytes``.
    """
    what = r.what
    if not 0 <= k <= n:
        raise ValueError(f"corrupt {what}: {k} positions among {n}")
    tag = r.u8("positions tag")
    if tag not in TAG_NAMES:
        raise ValueError(f"corrupt {what}: unknown positions tag {tag}")
    wire.check_decode_bytes(reserve + peak_bytes(n, k, tag), what)
    if tag == ALL:
        if k != n:
            raise ValueError(f"corrupt {what}: tag 'all' with k={k} != n={n}")
        return np.arange(n, dtype=np.int64)
    if tag == INDEX32:
        pos = r.array("<u4", k, "positions").astype(np.int64)
        return _check_increasing(pos, n, what)
    if tag == BITMAP:
        raw = np.frombuffer(r.take((n + 7) // 8, "position bitmap"), dtype=np.uint8)
        bits = np.unpackbits(raw, bitorder="little")
        if bits[n:].any():
            raise ValueError(f"corrupt {what}: bitmap has bits set past position {n}")
        pos = np.flatnonzero(bits)
        if pos.size != k:
            raise ValueError(f"corrupt {what}: bitmap holds {pos.size} positions, header says {k}")
        return pos.astype(np.int64)
    # Elias-Fano
    if k == 0:
        return np.zeros(0, dtype=np.int64)
    low = elias_fano_low_bits(n, k)
    upper_bits = k + ((n - 1) >> low)
    low_raw = np.frombuffer(r.take((k * low + 7) // 8, "Elias-Fano low bits"), dtype=np.uint8)
    up_raw = np.frombuffer(r.take((upper_bits + 7) // 8, "Elias-Fano high bits"), dtype=np.uint8)
    ones = np.flatnonzero(np.unpackbits(up_raw, count=upper_bits, bitorder="little"))
    if ones.size != k:
        raise ValueError(
            f"corrupt {what}: Elias-Fano high bits hold {ones.size} positions, not {k}"
        )
    pos = (ones - np.arange(k)) << low
    if low:
        lbits = np.unpackbits(low_raw, count=k * low, bitorder="little").reshape(k, low)
        pos |= (lbits.astype(np.int64) << np.arange(low)).sum(axis=1)
    return _check_increasing(pos, n, what)
