"""Compiled CPU kernels of the randomised Hadamard rotation (numba, one thread, fp32).

The transform of one row, unnormalised and in place, runs in three parts, each where
the row's memory sits best:

1. the lowest four index bits (butterflies at distance 1, 2, 4, 8): one unrolled
   16-point transform a chunk of 16 values, in registers;
2. distances 16 .. 1024 inside each 2,048-value block (8 KiB, resident in L1), two
   stages a pass (radix 4) over contiguous halves the compiler vectorises;
3. distances 2048 .. n/2: radix-4 passes over the whole row.

At n = 2^20 on one thread this is ~6x faster than ``log_16 n`` BLAS products with H_16
(the portable path in :mod:`fedbench.compress.hadamard`, kept for other devices): the
butterflies do 20 add/sub a value where the products do 80 multiply-adds.

Each output value is a fixed sequence of sums whatever the number of rows, so a row
gives the same bits alone or inside a batch. Compiled on first use and cached beside
this file (``cache=True``), so later processes load it in milliseconds.
"""

from __future__ import annotations

import numba as nb
import numpy as np

_OPTS = {"cache": True, "nogil": True, "error_model": "numpy", "boundscheck": False}
_BLOCK = 2048  # part 2's block: 8 KiB of fp32, well inside a 32-48 KiB L1


@nb.njit(inline="always", **_OPTS)
def _radix4(a, b, c, d, h):
    """Two butterfly stages (distances h and 2h) on four contiguous quarters of length h."""
    for j in range(h):
        x0, x1, x2, x3 = a[j], b[j], c[j], d[j]
        s0, s1, s2, s3 = x0 + x1, x0 - x1, x2 + x3, x2 - x3
        a[j], b[j], c[j], d[j] = s0 + s2, s1 + s3, s0 - s2, s1 - s3


@nb.njit(inline="always", **_OPTS)
def _radix2(a, b, h):
    for j in range(h):
        u, v = a[j], b[j]
        a[j], b[j] = u + v, u - v


@nb.njit(**_OPTS)
def _stages(row, first, stop, span):
    """Stages at distances first, 2 first, ... < stop, inside each contiguous ``span``."""
    n = row.shape[0]
    for start in range(0, n, span):
        blk = row[start : start + span]
        g = first
        while g * 4 <= stop:
            for i in range(0, span, 4 * g):
                _radix4(
                    blk[i : i + g],
                    blk[i + g : i + 2 * g],
                    blk[i + 2 * g : i + 3 * g],
                    blk[i + 3 * g : i + 4 * g],
                    g,
                )
            g *= 4
        if g < stop:
            for i in range(0, span, 2 * g):
                _radix2(blk[i : i + g], blk[i + g : i + 2 * g], g)


@nb.njit(**_OPTS)
def _low16(row):
    """Distances 1, 2, 4, 8 on each chunk of 16 values (n a multiple of 16)."""
    for i in range(0, row.shape[0], 16):
        v = row[i : i + 16]
        x0, x1, x2, x3, x4, x5, x6, x7 = v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7]
        x8, x9, xa, xb, xc, xd, xe, xf = v[8], v[9], v[10], v[11], v[12], v[13], v[14], v[15]
        a0, a1, a2, a3 = x0 + x1, x0 - x1, x2 + x3, x2 - x3
        a4, a5, a6, a7 = x4 + x5, x4 - x5, x6 + x7, x6 - x7
        a8, a9, aa, ab = x8 + x9, x8 - x9, xa + xb, xa - xb
        ac, ad, ae, af = xc + xd, xc - xd, xe + xf, xe - xf
        b0, b1, b2, b3 = a0 + a2, a1 + a3, a0 - a2, a1 - a3
        b4, b5, b6, b7 = a4 + a6, a5 + a7, a4 - a6, a5 - a7
        b8, b9, ba, bb = a8 + aa, a9 + ab, a8 - aa, a9 - ab
        bc, bd, be, bf = ac + ae, ad + af, ac - ae, ad - af
        c0, c1, c2, c3 = b0 + b4, b1 + b5, b2 + b6, b3 + b7
        c4, c5, c6, c7 = b0 - b4, b1 - b5, b2 - b6, b3 - b7
        c8, c9, ca, cb = b8 + bc, b9 + bd, ba + be, bb + bf
        cc, cd, ce, cf = b8 - bc, b9 - bd, ba - be, bb - bf
        v[0], v[1], v[2], v[3] = c0 + c8, c1 + c9, c2 + ca, c3 + cb
        v[4], v[5], v[6], v[7] = c4 + cc, c5 + cd, c6 + ce, c7 + cf
        v[8], v[9], v[10], v[11] = c0 - c8, c1 - c9, c2 - ca, c3 - cb
        v[12], v[13], v[14], v[15] = c4 - cc, c5 - cd, c6 - ce, c7 - cf


@nb.njit(**_OPTS)
def _transform(row):
    """Unnormalised Walsh-Hadamard transform of one row in place (length a power of 2)."""
    n = row.shape[0]
    if n < 16:
        _stages(row, 1, n, n)
        return
    _low16(row)
    span = min(n, _BLOCK)
    _stages(row, 16, span, span)
    if n > span:
        _stages(row, span, n, n)


@nb.njit(**_OPTS)
def _flip(src, signs, table, dst, d):
    """dst[:d] = src[:d] * table[bit]: byte k of ``signs`` picks the row of 8 factors."""
    full = d // 8
    for k in range(full):
        t = table[signs[k]]
        for j in range(8):
            dst[8 * k + j] = src[8 * k + j] * t[j]
    for i in range(8 * full, d):
        dst[i] = src[i] * table[signs[i >> 3], i & 7]


@nb.njit(**_OPTS)
def transform_rows(src, scale, dst):
    """dst[r] = H src[r] * scale for each row; src and dst (rows, n) fp32."""
    rows, n = src.shape
    for r in range(rows):
        out, x = dst[r], src[r]
        for i in range(n):
            out[i] = x[i] * scale
        _transform(out)


@nb.njit(**_OPTS)
def rotate_rows(x, signs, table, dst):
    """dst[r] = H D_r pad(x[r]) with the factors of ``table`` (+-1/sqrt(n) by sign bit).

    x (rows, d) fp32, signs (rows, >= ceil(d/8)) uint8, table (256, 8) fp32, dst
    (rows, n) fp32 with n >= d a power of two.
    """
    rows, d = x.shape
    n = dst.shape[1]
    for r in range(rows):
        out = dst[r]
        _flip(x[r], signs[r], table, out, d)
        for i in range(d, n):
            out[i] = 0.0
        _transform(out)


@nb.njit(**_OPTS)
def unrotate_rows(y, signs, scale, table, out):
    """out[r] = (D_r H y[r] * scale)[:d]; y (rows, n), out (rows, d), table of +-1."""
    rows, n = y.shape
    d = out.shape[1]
    tmp = np.empty(n, dtype=np.float32)
    for r in range(rows):
        x = y[r]
        for i in range(n):
            tmp[i] = x[i] * scale
        _transform(tmp)
        _flip(tmp, signs[r], table, out[r], d)


@nb.njit(**_OPTS)
def sign_stats(y, packed, stats):
    """One pass a row for DRIVE's encode: packed[r] = the bits of ``y[r] >= +0`` (LSB
    first; -0 counts as negative, as ``signbit``), stats[r] = (sum |y|, sum y^2) in fp64.

    y (rows, n) fp32 with n a multiple of 8, packed (rows, n/8) uint8, stats (rows, 2).
    Eight fp64 lanes accumulate in a fixed order, so a row sums the same in any batch.
    """
    rows, n = y.shape
    l1 = np.zeros(8, dtype=np.float64)
    sq = np.zeros(8, dtype=np.float64)
    for r in range(rows):
        v = y[r]
        bits = v.view(np.uint32)
        out = packed[r]
        l1[:] = 0.0
        sq[:] = 0.0
        for k in range(n // 8):
            byte = 0
            for j in range(8):
                x = np.float64(v[8 * k + j])
                l1[j] += abs(x)
                sq[j] += x * x
                byte |= ((bits[8 * k + j] >> 31) ^ 1) << j
            out[k] = byte
        stats[r, 0] = l1.sum()
        stats[r, 1] = sq.sum()


@nb.njit(**_OPTS)
def unrotate_levels(codes, levels, signs, scale, table, out):
    """out[r] = (D_r H levels[r, codes[r]] * scale)[:d]: decode a quantised rotation.

    codes (rows, n) uint8 indices into levels (rows, K) fp32; table of +-1 as in
    :func:`unrotate_rows`.
    """
    rows, n = codes.shape
    d = out.shape[1]
    tmp = np.empty(n, dtype=np.float32)
    lv = np.empty(levels.shape[1], dtype=np.float32)
    for r in range(rows):
        c = codes[r]
        for k in range(levels.shape[1]):
            lv[k] = levels[r, k] * scale
        for i in range(n):
            tmp[i] = lv[c[i]]
        _transform(tmp)
        _flip(tmp, signs[r], table, out[r], d)


@nb.njit(**_OPTS)
def _sum_squares(v):
    """sum v^2 in fp64 over eight fixed lanes (the same bits in any batch)."""
    acc = np.zeros(8, dtype=np.float64)
    n8 = v.shape[0] // 8
    for k in range(n8):
        for j in range(8):
            x = np.float64(v[8 * k + j])
            acc[j] += x * x
    for i in range(8 * n8, v.shape[0]):
        x = np.float64(v[i])
        acc[i & 7] += x * x
    return acc.sum()


@nb.njit(**_OPTS)
def lloyd_codes(y, boundaries, centroids, codes, stats):
    """EDEN's encode of rotated rows, two passes a row: stats[r] = (sum y^2, <y, c(z)>)
    in fp64 and codes[r, i] = #boundaries below z_i, where z = y sqrt(n) / ||y|| in fp32.

    y (rows, n) fp32, boundaries (K-1,) and centroids (K,) fp32 ascending, codes
    (rows, n) uint8, K <= 16. Sums run in fixed orders (the same bits in any batch).
    """
    rows, n = y.shape
    for r in range(rows):
        v = y[r]
        sq = _sum_squares(v)
        norm = np.float32(np.sqrt(sq))
        inv = np.float32(np.sqrt(np.float32(n))) / norm if norm > 0 else np.float32(0.0)
        dot = 0.0
        out = codes[r]
        for i in range(n):
            c = _code(boundaries, v[i] * inv)
            out[i] = c
            dot += np.float64(v[i]) * np.float64(centroids[c])
        stats[r, 0] = sq
        stats[r, 1] = dot


@nb.njit(**_OPTS)
def select_subset(u, k, out):
    """out[i] = True for exactly k of the n places, each k-subset equally likely
    (selection sampling, Knuth's Algorithm S) from uniform fp64 draws u (n,) in [0, 1)."""
    n = u.shape[0]
    need = k
    for i in range(n):
        take = need > 0 and u[i] * (n - i) < need  # (n - i) u < n - i for every u < 1
        out[i] = take
        need -= take


@nb.njit(**_OPTS)
def _code(boundaries, z):
    """#boundaries strictly below z: a comparison count up to 15, else binary search."""
    k = boundaries.shape[0]
    if k <= 15:
        c = 0
        for j in range(k):
            c += boundaries[j] < z
        return c
    lo, hi = 0, k
    while lo < hi:
        mid = (lo + hi) >> 1
        if boundaries[mid] < z:
            lo = mid + 1
        else:
            hi = mid
    return lo


@nb.njit(**_OPTS)
def split_codes(z, high, b_low, c_low, b_high, c_high, codes_low, codes_high, levels):
    """EDEN at a fractional rate: z (n,) fp32 coded with the low quantiser where ``high``
    is False (into codes_low, in order) and with the high one where True; levels (n,)
    gets each value's centroid."""
    a = 0
    b = 0
    for i in range(z.shape[0]):
        if high[i]:
            c = _code(b_high, z[i])
            codes_high[b] = c
            levels[i] = c_high[c]
            b += 1
        else:
            c = _code(b_low, z[i])
            codes_low[a] = c
            levels[i] = c_low[c]
            a += 1


@nb.njit(**_OPTS)
def merge_levels(high, codes_low, c_low, codes_high, c_high, levels):
    """The inverse of :func:`split_codes`: levels (n,) from the two code streams."""
    a = 0
    b = 0
    for i in range(high.shape[0]):
        if high[i]:
            levels[i] = c_high[codes_high[b]]
            b += 1
        else:
            levels[i] = c_low[codes_low[a]]
            a += 1
