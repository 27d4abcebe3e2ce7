"""Elias-gamma coding of positive integers, vectorised with numpy.

The gamma code of v >= 1 is ``z = floor(log2 v)`` zeros, then v in binary (z + 1 bits,
leading 1 first): ``2z + 1`` bits (Elias 1975). Interleaved, the codes must be read
one after another; we store the same bits as two streams instead, so both sides are
vectorised:

- ``prefix``: for each value, z zeros then a one (the unary part), ``sum(z + 1)`` bits;
- ``mantissa``: for each value, its z bits below the leading one, LSB first,
  ``sum(z)`` bits.

The total is exactly the gamma code length ``sum(2z + 1)``; each stream is packed LSB
first and padded to a whole byte.
"""

from __future__ import annotations

import numpy as np

# Values up to 2**MAX_Z * 2 - 1 are accepted (z <= MAX_Z); a decoder meeting a longer
# prefix rejects the stream instead of allocating for it.
MAX_Z = 30


def gamma_bits(values: np.ndarray) -> int:
    """Total bits of the gamma codes of ``values`` (n,) >= 1: ``sum(2*floor(log2 v) + 1)``."""
    z = _floor_log2(values)
    return int(2 * z.sum(dtype=np.int64) + len(values))


def _floor_log2(values: np.ndarray) -> np.ndarray:
    v = np.asarray(values, dtype=np.int64)
    if v.size and (v.min() < 1 or v.max() >= 1 << (MAX_Z + 1)):
        raise ValueError(
            f"gamma codes need integers in [1, 2**{MAX_Z + 1}), got {v.min()}..{v.max()}"
        )
    return np.frexp(v.astype(np.float64))[1].astype(np.int64) - 1  # exact below 2**53


def gamma_encode(values: np.ndarray) -> tuple[int, bytes, int, bytes]:
    """Encode ``values`` (n,) ints >= 1 -> ``(prefix_bits, prefix, mantissa_bits, mantissa)``.

    ``prefix``/``mantissa`` are the packed streams (ceil(bits/8) bytes each).
    """
    v = np.asarray(values, dtype=np.int64)
    z = _floor_log2(v)
    ends = np.cumsum(z + 1)  # position after each value's terminating one
    prefix_bits = int(ends[-1]) if len(v) else 0
    prefix = np.zeros(prefix_bits, dtype=np.uint8)
    prefix[ends - 1] = 1
    mantissa_bits = int(z.sum())
    mantissa = np.zeros(mantissa_bits, dtype=np.uint8)
    start = ends - 1 - z - np.arange(len(v))  # == cumsum(z) - z: each value's first bit
    for b in range(int(z.max()) if len(v) else 0):
        sel = z > b
        mantissa[start[sel] + b] = (v[sel] >> b) & 1
    return (
        prefix_bits,
        np.packbits(prefix, bitorder="little").tobytes(),
        mantissa_bits,
        np.packbits(mantissa, bitorder="little").tobytes(),
    )


def gamma_decode(
    n: int, prefix_bits: int, prefix: np.ndarray, mantissa_bits: int, mantissa: np.ndarray
) -> np.ndarray:
    """Decode ``n`` values from the two streams (uint8 arrays as packed) -> (n,) int64.

    Untrusted input: counts that disagree with the streams raise ValueError. Work and
    memory are bounded by the stream lengths, which the caller has already checked.
    """
    if len(prefix) != (prefix_bits + 7) // 8 or len(mantissa) != (mantissa_bits + 7) // 8:
        raise ValueError("corrupt gamma stream: bit counts disagree with the stream lengths")
    bits = np.unpackbits(prefix, count=prefix_bits, bitorder="little")
    ones = np.flatnonzero(bits)
    if len(ones) != n or (n and ones[-1] != prefix_bits - 1) or (not n and prefix_bits):
        raise ValueError(
            f"corrupt gamma stream: {len(ones)} codes in {prefix_bits} prefix bits, expected {n}"
        )
    z = np.diff(ones, prepend=-1) - 1
    if n and z.max() > MAX_Z:
        raise ValueError(f"corrupt gamma stream: a code longer than {2 * MAX_Z + 1} bits")
    if int(z.sum()) != mantissa_bits:
        raise ValueError("corrupt gamma stream: mantissa length disagrees with the prefixes")
    mbits = np.unpackbits(mantissa, count=mantissa_bits, bitorder="little")
    start = np.cumsum(z) - z
    out = np.ones(n, dtype=np.int64) << z
    for b in range(int(z.max()) if n else 0):
        sel = np.flatnonzero(z > b)
        out[sel] |= mbits[start[sel] + b].astype(np.int64) << b
    return out
