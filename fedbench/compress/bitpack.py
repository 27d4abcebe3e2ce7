"""Bit packing: the one packer of fixed-width integer codes (1..8 or 16 bits a code).

Layout, shared by every codec that sends codes (quant, qsgd, terngrad, sign, natural,
drive, eden): codes are packed densely along the last axis, LSB first -- code ``j``
occupies bits ``[j*bits, (j+1)*bits)`` of the row's byte string -- and 16-bit codes
are little-endian pairs. ``n`` codes take :func:`packed_size` bytes.

The packer works in numpy on the CPU with fast paths for 1, 2, 4 and 8 bits (no int64
intermediates); other widths expand to one byte a bit and use ``np.packbits``.
"""

from __future__ import annotations

import numpy as np
import torch

PACK_BITS = (1, 2, 3, 4, 5, 6, 7, 8, 16)


def packed_size(n: int, bits: int) -> int:
    """Bytes that ``n`` codes of ``bits`` bits occupy once packed."""
    return (n * bits + 7) // 8


def pack_codes(codes: torch.Tensor, bits: int) -> np.ndarray:
    """Pack codes (clients, n) in [0, 2**bits) into (clients, ceil(n*bits/8)) uint8.

    The layout of the module docstring; ``codes`` may live on any device (copied to
    the CPU) and have any integer or bool dtype.
    """
    if bits not in PACK_BITS:
        raise ValueError(f"bits must be one of {PACK_BITS}, got {bits}")
    c = codes.detach().cpu().numpy()
    rows, n = c.shape
    if bits == 16:
        return np.ascontiguousarray(c.astype("<u2")).view(np.uint8).reshape(rows, 2 * n)
    if bits == 1:  # np.packbits takes bool (a sign mask) as it is: no uint8 copy
        return np.packbits(
            c if c.dtype == np.bool_ else c.astype(np.uint8), axis=-1, bitorder="little"
        )
    c = c.astype(np.uint8, copy=False)
    if bits == 8:
        return np.ascontiguousarray(c)
    per = 8 // bits if 8 % bits == 0 else 0
    if per:
        pad = (-n) % per
        if pad or not c.flags.c_contiguous:
            c = np.concatenate([c, np.zeros((rows, pad), np.uint8)], axis=1)
        if bits == 4:
            w = c.view("<u2")
            return (w | (w >> 4)).astype(np.uint8)
        w = c.view("<u4")  # bits == 2
        return (w | (w >> 6) | (w >> 12) | (w >> 18)).astype(np.uint8)
    expanded = (c[..., None] >> np.arange(bits, dtype=np.uint8)) & 1  # (rows, n, bits)
    return np.packbits(expanded.reshape(rows, n * bits), axis=-1, bitorder="little")


def unpacked_bytes(bits: int, n: int) -> int:
    """Peak bytes :func:`unpack_codes` allocates for n codes of ``bits`` bits (a batch's
    stacked packed bytes included), so that decoders can check it before unpacking."""
    if bits == 16:
        return 6 * n  # the stacked u16 pairs, then int32 codes
    if bits in (1, 8):
        return 2 * n
    if bits in (2, 4):
        return 4 * n  # widened words and their shifted copies
    return (2 * bits + 2) * n  # a byte a bit, twice (the bits and their weighted copy)


def unpack_codes(packed: np.ndarray, bits: int, n: int) -> torch.Tensor:
    """Inverse of :func:`pack_codes`: (clients, ceil(n*bits/8)) uint8 -> (clients, n).

    Codes come back as uint8 (int32 for 16 bits). ``packed`` must have exactly the
    packed length; callers read it through :class:`wire.Reader`, which checks that.
    """
    rows = packed.shape[0]
    if bits == 16:
        out = packed.reshape(rows, -1).view("<u2")[:, :n].astype(np.int32)
    elif bits == 8:
        out = np.array(packed[:, :n], dtype=np.uint8)
    elif bits == 1:
        out = np.unpackbits(packed, axis=-1, count=n, bitorder="little")
    elif bits == 4:
        w = packed.astype("<u2")
        w = (w | (w << 4)) & 0x0F0F
        out = w.view(np.uint8).reshape(rows, -1)[:, :n]
    elif bits == 2:
        w = packed.astype("<u4")
        w = (w | (w << 6) | (w << 12) | (w << 18)) & 0x03030303
        out = w.view(np.uint8).reshape(rows, -1)[:, :n]
    elif bits in PACK_BITS:
        flat = np.unpackbits(packed, axis=-1, count=n * bits, bitorder="little")
        weights = (1 << np.arange(bits, dtype=np.uint8)).astype(np.uint8)
        out = (flat.reshape(rows, n, bits) * weights).sum(-1, dtype=np.uint8)
    else:
        raise ValueError(f"bits must be one of {PACK_BITS}, got {bits}")
    return torch.from_numpy(np.ascontiguousarray(out))


def dequantised_bytes(bits: int, n: int, dtype: torch.dtype) -> int:
    """Peak bytes of decoding n codes to fp32 and casting to ``dtype``: the shared estimate
    of quant, qsgd and terngrad (codes, fp32 values, the cast)."""
    cast = 0 if dtype == torch.float32 else n * dtype.itemsize
    return unpacked_bytes(bits, n) + 4 * n + cast


def unpack_mask(packed: np.ndarray, n: int) -> torch.Tensor:
    """1-bit codes back as a bool mask: (rows, ceil(n/8)) uint8 -> (rows, n) bool."""
    return unpack_codes(packed, 1, n).view(torch.bool)
