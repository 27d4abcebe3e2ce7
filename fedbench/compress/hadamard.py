"""The randomised Hadamard rotation: a reusable stage for rotation-based codecs.

``R x = H D x / sqrt(n)``: pad ``x`` with zeros to ``n``, the next power of two, flip
the sign of each coordinate by a random Rademacher diagonal ``D``, then apply the
Walsh-Hadamard matrix ``H`` (entries +-1). ``R`` is orthonormal, so ``R^-1 y =
D H y / sqrt(n)``. After the rotation every coordinate of ``R x`` is close to
N(0, ||x||^2 / n) whatever ``x`` looked like (Ailon & Chazelle 2009), which is what
DRIVE, EDEN and TFF's Hadamard stage quantise (Vargaftik et al. 2021, Sec. 4.3; 2022).

The diagonal is not sent: the message carries an 8-byte seed drawn from the client's
generator, and both ends expand it into signs on the CPU (``torch.Generator("cpu")``),
so a message encoded on a GPU decodes to the same rotation anywhere.

On the CPU the transform, the sign flips, the padding and the normalisation run in one
compiled kernel a row (:mod:`fedbench.compress._wht`): at n = 2^20 on one thread a
rotation costs ~15x a clone of the (cache-resident) input, against ~50-120x for the
PyPI ``hadamard-transform`` package and for BLAS products with H_16. On other devices it
is ``log_16 n`` small matrix products with ``H_16`` (and one smaller ``H_2^k``), each
over one 4-bit group of the index. Either way every output coordinate is a fixed
sequence of +-1 sums, so a row gives the same bits alone or inside a batch (tested);
CPU and GPU round differently in the last bit, which is why the device kind is part
of a cell's identity.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import cache

import numpy as np
import torch

from fedbench.compress.bitpack import pack_codes
from fedbench.compress.buckets import row_abs_sum, row_sq_sum

SEED_BYTES = 8
_RADIX_BITS = 4  # H_16 blocks: the fastest block size measured on one CPU thread


def padded_size(d: int) -> int:
    """``n``: the power of two the rotation pads ``d`` values to (1 for d = 0)."""
    return 1 if d <= 1 else 1 << (d - 1).bit_length()


@cache
def _hadamard_matrix(bits: int, device: torch.device) -> torch.Tensor:
    """Unnormalised Sylvester Hadamard matrix H_{2^bits} (fp32, entries +-1)."""
    h = torch.ones(1, 1)
    for _ in range(bits):
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    return h.to(device)


def fwht(x: torch.Tensor) -> torch.Tensor:
    """Normalised fast Walsh-Hadamard transform of each row: (rows, n) -> (rows, n) fp32.

    ``n`` must be a power of two. Orthonormal and its own inverse: ``fwht(fwht(x)) == x``
    up to rounding. Returns a new tensor; ``x`` is not modified.
    """
    rows, n = x.shape
    if n & (n - 1) or n == 0:
        raise ValueError(f"fwht: row length must be a power of two, got {n}")
    if x.device.type == "cpu":
        from fedbench.compress import _wht

        out = np.empty((rows, n), dtype=np.float32)
        _wht.transform_rows(_as_numpy(x), np.float32(1 / math.sqrt(n)), out)
        return torch.from_numpy(out)
    return _fwht_blas(x)


def _as_numpy(x: torch.Tensor) -> np.ndarray:
    """A C-contiguous fp32 numpy view (or copy) of a CPU tensor."""
    return x.detach().to(torch.float32).contiguous().numpy()


def _fwht_blas(x: torch.Tensor) -> torch.Tensor:
    """``fwht`` as log_16 n batched products with H_16: any device.

    The normalisation rides on the stage matrices (H_16 / 4 is exact: a power of two),
    so no pass of its own is spent on it unless ``n`` is an odd power of two (then one
    multiply by 2^-1/2 at the end, which rounds exactly as ``x / sqrt(n)`` would).
    """
    rows, n = x.shape
    levels = n.bit_length() - 1
    if levels == 0:
        return x.to(torch.float32).clone()
    y = x.to(torch.float32)
    done = 0
    while done < levels:
        k = min(_RADIX_BITS, levels - done)
        block, inner = 1 << k, 1 << done
        h = _scaled_hadamard(k, y.device)  # H_{2^k} * 2^-floor(k/2)
        if inner == 1:  # the lowest index bits: a plain (.., block) @ H product
            y = (y.reshape(-1, block) @ h).reshape(rows, n)
        else:  # H acts on index bits [done, done + k): (.., block, inner) batched products
            v = y.reshape(-1, block, inner)
            # a batched product with H expanded (no copy) beats broadcasting for small inner
            hh = h.expand(v.shape[0], block, block) if inner < 1024 else h
            y = torch.matmul(hh, v).reshape(rows, n)
        done += k
    half_bits = sum(min(_RADIX_BITS, levels - i) % 2 for i in range(0, levels, _RADIX_BITS))
    if half_bits:  # what the power-of-two scales left: 2^(-half_bits/2)
        y = y.mul_(2.0 ** (-half_bits / 2))
    return y


@cache
def _scaled_hadamard(bits: int, device: torch.device) -> torch.Tensor:
    """H_{2^bits} * 2^-(bits // 2): the stage matrix with its exact share of 1/sqrt(n)."""
    return _hadamard_matrix(bits, device) * 2.0 ** -(bits // 2)


def draw_seeds(generators: Sequence[torch.Generator | None]) -> list[int]:
    """One 63-bit rotation seed from each client's generator (the global RNG for None)."""
    seeds = []
    for g in generators:
        device = g.device if g is not None else "cpu"
        seeds.append(int(torch.randint(0, 2**63 - 1, (1,), generator=g, device=device)))
    return seeds


def _sign_words(seed: int, n: int) -> np.ndarray:
    """The bytes of D's sign bits (bit j of the stream set = flip coordinate j)."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    words = torch.empty((n + 63) // 64, dtype=torch.int64).random_(-(2**63), None, generator=g)
    return words.numpy().view(np.uint8)


def negative_mask(seed: int, n: int) -> np.ndarray:
    """The diagonal D of one rotation as a (n,) bool mask (True = flip the sign).

    Expanded on the CPU from ``seed`` alone (64 signs a draw), the same on every device.
    """
    return np.unpackbits(_sign_words(seed, n), count=n, bitorder="little").view(np.bool_)


@cache
def _sign_table() -> np.ndarray:
    """(256, 8) fp32: row b holds the 8 signs (+1 / -1, LSB first) that byte b encodes."""
    bits = np.unpackbits(np.arange(256, dtype=np.uint8)[:, None], axis=1, bitorder="little")
    return 1.0 - 2.0 * bits.astype(np.float32)


def unrotate_levels(
    codes: torch.Tensor, levels: torch.Tensor, seeds: Sequence[int], d: int
) -> torch.Tensor:
    """``R_i^-1 levels[i, codes_i]`` cropped to ``d``: codes (rows, n) integer indices
    into levels (rows, K) fp32 -> (rows, d) fp32. The decode of a quantised rotation,
    one fused pass on the CPU (the lookup feeds the transform directly)."""
    rows, n = codes.shape
    _check_rotated(n, d, rows, seeds)
    if levels.shape[0] != rows or (codes.numel() and int(codes.max()) >= levels.shape[1]):
        raise ValueError(f"unrotate_levels: codes index past the {levels.shape[1]} levels")
    if codes.device.type != "cpu":
        return unrotate(torch.gather(levels, 1, codes.long()), seeds, d)
    from fedbench.compress import _wht

    out = np.empty((rows, d), dtype=np.float32)
    c = codes.detach().to(torch.uint8).contiguous().numpy()
    scale = np.float32(1 / math.sqrt(n))
    _wht.unrotate_levels(c, _as_numpy(levels), _sign_bytes(seeds, n), scale, _sign_table(), out)
    return torch.from_numpy(out)


def sign_stats(y: torch.Tensor) -> tuple[np.ndarray, torch.Tensor, torch.Tensor]:
    """DRIVE's encode statistics of rotated rows y (rows, n) fp32, in one pass on the CPU:
    (the packed bits of ``y >= +0`` (rows, ceil(n/8)) uint8, sum |y| fp64 (rows,),
    sum y^2 fp64 (rows,)). Each sum is in a fixed order, the same in any batch."""
    rows, n = y.shape
    if y.device.type != "cpu" or n % 8:
        return pack_codes(~torch.signbit(y), 1), row_abs_sum(y), row_sq_sum(y)
    from fedbench.compress import _wht

    packed = np.empty((rows, n // 8), dtype=np.uint8)
    stats = np.empty((rows, 2), dtype=np.float64)
    _wht.sign_stats(_as_numpy(y), packed, stats)
    return packed, torch.from_numpy(stats[:, 0].copy()), torch.from_numpy(stats[:, 1].copy())


def _check_rotated(n: int, d: int, rows: int, seeds: Sequence[int]) -> None:
    """A rotated row's length is the power of two ``padded_size(d)``; one seed a row."""
    if len(seeds) != rows:
        raise ValueError(f"unrotate: {len(seeds)} seeds for {rows} rows")
    if n != padded_size(d):
        raise ValueError(f"unrotate: rows of {n} values, expected {padded_size(d)} for d={d}")


def _sign_bytes(seeds: Sequence[int], n: int) -> np.ndarray:
    """(rows, ceil(n/8)) uint8: row i holds the sign bits of D for ``seeds[i]``."""
    if not seeds:
        return np.zeros((0, (n + 7) // 8), dtype=np.uint8)
    return np.stack([_sign_words(s, n)[: (n + 7) // 8] for s in seeds])


def _signs(seeds: Sequence[int], n: int, device: torch.device) -> torch.Tensor:
    """(rows, n) fp32 of +1 / -1: row i is D of ``seeds[i]``, one table lookup a byte."""
    raw = _sign_bytes(seeds, n)
    signs = np.take(_sign_table(), raw, axis=0)  # (rows, n/8, 8); take beats [] ~8x
    return torch.from_numpy(signs.reshape(len(seeds), -1)[:, :n]).to(device)


def rotate(x: torch.Tensor, seeds: Sequence[int]) -> torch.Tensor:
    """``R_i x_i`` for each row: x (rows, d) -> (rows, n) fp32, n = padded_size(d)."""
    rows, d = x.shape
    n = padded_size(d)
    if len(seeds) != rows:
        raise ValueError(f"rotate: {len(seeds)} seeds for {rows} rows")
    if x.device.type == "cpu":
        from fedbench.compress import _wht

        out = np.empty((rows, n), dtype=np.float32)
        table = _sign_table() * np.float32(1 / math.sqrt(n))
        _wht.rotate_rows(_as_numpy(x), _sign_bytes(seeds, n), table, out)
        return torch.from_numpy(out)
    signs = _signs(seeds, n, x.device)
    y = torch.empty(rows, n, dtype=torch.float32, device=x.device)
    torch.mul(x, signs[:, :d], out=y[:, :d])  # pad and flip in one pass
    torch.mul(signs[:, d:], 0.0, out=y[:, d:])  # the padding: +0 or -0, as D flips it
    return fwht(y)


def unrotate(y: torch.Tensor, seeds: Sequence[int], d: int) -> torch.Tensor:
    """``R_i^-1 y_i`` for each row, cropped to ``d``: y (rows, n) -> (rows, d) fp32."""
    rows, n = y.shape
    _check_rotated(n, d, rows, seeds)
    if y.device.type == "cpu":
        from fedbench.compress import _wht

        out = np.empty((rows, d), dtype=np.float32)
        scale = np.float32(1 / math.sqrt(n))
        _wht.unrotate_rows(_as_numpy(y), _sign_bytes(seeds, n), scale, _sign_table(), out)
        return torch.from_numpy(out)
    z = fwht(y)[:, :d]
    return z * _signs(seeds, n, z.device)[:, :d]
