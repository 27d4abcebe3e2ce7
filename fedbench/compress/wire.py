"""The wire format: one self-describing message per tensor.

Layout of every message (little-endian)::

    magic   b"FB"        2 bytes
    version u8           1   (FORMAT_VERSION)
    codec   u8           1   (the compressor's ``codec_id``)
    dtype   u8           1   (index into DTYPES: the dtype decode gives back)
    ndim    u8           1   (<= MAX_NDIM)
    shape   u32 x ndim   4 * ndim
    payload              codec-specific: the fields decode needs, then the data

``decode`` treats messages as untrusted: every read is bounds-checked through
:class:`Reader`, which raises ``ValueError`` naming what is wrong; no allocation is
sized by a header field before the payload length has been checked against it.
"""

from __future__ import annotations

import math
import os
import struct
from dataclasses import dataclass

import numpy as np
import torch

MAGIC = b"FB"
FORMAT_VERSION = 1
MAX_NDIM = 8
# One message never describes more than 2^31 - 1 values (8 GiB of fp32); a header
# claiming more is hostile or corrupt and fails before anything is allocated.
MAX_NUMEL = 2**31 - 1
# What a decoder agrees to allocate for one message. Sparse and low-rank payloads are
# legitimately far smaller than the tensor they describe, so the payload length cannot
# bound the output; this cap does (2^28 values = 1 GiB of fp32, 10x the largest layer of
# the models here). Raise it for bigger models: FEDBENCH_MAX_DECODE_NUMEL=N.
MAX_DECODE_NUMEL = int(os.environ.get("FEDBENCH_MAX_DECODE_NUMEL", 2**28))

DTYPES: tuple[torch.dtype, ...] = (
    torch.float32,
    torch.float16,
    torch.bfloat16,
    torch.float64,
)
_DTYPE_CODE = {dt: i for i, dt in enumerate(DTYPES)}

_HEADER = struct.Struct("<2sBBBB")


@dataclass(frozen=True)
class Header:
    codec: int
    dtype: torch.dtype
    shape: tuple[int, ...]

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


def dtype_code(dtype: torch.dtype) -> int:
    try:
        return _DTYPE_CODE[dtype]
    except KeyError:
        allowed = ", ".join(str(d) for d in DTYPES)
        raise ValueError(f"unsupported dtype {dtype}; allowed: {allowed}") from None


def write_header(codec: int, dtype: torch.dtype, shape: tuple[int, ...] | torch.Size) -> bytes:
    shape = tuple(int(s) for s in shape)
    if any(s < 0 for s in shape):
        raise ValueError(f"invalid shape {shape}: negative dimension")
    if len(shape) > MAX_NDIM:
        raise ValueError(f"tensor has {len(shape)} dimensions; at most {MAX_NDIM} are supported")
    if math.prod(shape) > MAX_NUMEL:
        raise ValueError(f"tensor has {math.prod(shape)} values; at most {MAX_NUMEL} per message")
    return _HEADER.pack(MAGIC, FORMAT_VERSION, codec, dtype_code(dtype), len(shape)) + struct.pack(
        f"<{len(shape)}I", *shape
    )


def header_size(ndim: int) -> int:
    return _HEADER.size + 4 * ndim


class Reader:
    """Bounds-checked reads from an untrusted message; every failure is a ValueError."""

    def __init__(self, msg: bytes | bytearray | memoryview, what: str = "message") -> None:
        if not isinstance(msg, bytes | bytearray | memoryview):
            raise ValueError(f"{what} must be bytes, got {type(msg).__name__}")
        self.buf = memoryview(msg).cast("B") if isinstance(msg, memoryview) else memoryview(msg)
        self.pos = 0
        self.what = what

    @property
    def remaining(self) -> int:
        return len(self.buf) - self.pos

    def take(self, n: int, field: str) -> memoryview:
        if n < 0 or n > self.remaining:
            raise ValueError(
                f"truncated {self.what}: {field} needs {n} bytes at offset {self.pos}, "
                f"{self.remaining} left"
            )
        out = self.buf[self.pos : self.pos + n]
        self.pos += n
        return out

    def unpack(self, fmt: str, field: str) -> tuple:
        s = struct.Struct("<" + fmt)
        return s.unpack(self.take(s.size, field))

    def u8(self, field: str) -> int:
        return self.unpack("B", field)[0]

    def u32(self, field: str) -> int:
        return self.unpack("I", field)[0]

    def u64(self, field: str) -> int:
        return self.unpack("Q", field)[0]

    def f32(self, field: str, *, finite: bool = True) -> float:
        v = self.unpack("f", field)[0]
        if finite and not math.isfinite(v):
            raise ValueError(f"corrupt {self.what}: {field} is {v}")
        return v

    def array(self, dtype: np.dtype | str, count: int, field: str) -> np.ndarray:
        """``count`` items of ``dtype``, length checked before anything is allocated."""
        dt = np.dtype(dtype).newbyteorder("<")
        if count < 0:
            raise ValueError(f"corrupt {self.what}: negative {field} count {count}")
        raw = self.take(count * dt.itemsize, field)
        return np.frombuffer(raw, dtype=dt, count=count)

    def header(self, codec: int) -> Header:
        if len(self.buf) < _HEADER.size:
            raise ValueError(
                f"truncated {self.what}: {len(self.buf)} bytes, a header needs {_HEADER.size}"
            )
        magic, version, got_codec, dcode, ndim = self.unpack(_HEADER.format[1:], "header")
        if magic != MAGIC:
            raise ValueError(f"not a fedbench {self.what}: bad magic {bytes(magic)!r}")
        if version != FORMAT_VERSION:
            raise ValueError(
                f"unsupported wire format version {version} (this build reads {FORMAT_VERSION})"
            )
        if got_codec != codec:
            raise ValueError(
                f"{self.what} was written by codec {got_codec}, this decoder is codec {codec}"
            )
        if dcode >= len(DTYPES):
            raise ValueError(f"corrupt {self.what}: unknown dtype code {dcode}")
        if ndim > MAX_NDIM:
            raise ValueError(f"corrupt {self.what}: ndim {ndim} > {MAX_NDIM}")
        shape = self.unpack(f"{ndim}I", "shape") if ndim else ()
        numel = math.prod(shape)
        if numel > min(MAX_NUMEL, MAX_DECODE_NUMEL):
            raise ValueError(
                f"corrupt {self.what}: shape {shape} claims {numel} values, more than this "
                f"decoder allocates ({min(MAX_NUMEL, MAX_DECODE_NUMEL)}; raise it with "
                "FEDBENCH_MAX_DECODE_NUMEL)"
            )
        return Header(codec=codec, dtype=DTYPES[dcode], shape=tuple(shape))

    def expect_end(self) -> None:
        if self.remaining:
            raise ValueError(f"corrupt {self.what}: {self.remaining} unexpected trailing bytes")


def packed_size(n: int, bits: int) -> int:
    """Bytes that ``n`` codes of ``bits`` bits occupy once packed."""
    return (n * bits + 7) // 8


def pack_bits(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Pack integer codes in [0, 2**bits) along the last dim, LSB first.

    codes: (..., n) any integer dtype  ->  (..., packed_size(n, bits)) uint8.
    Widths 1..8 are packed densely (8 codes -> ``bits`` bytes), 16 as little-endian pairs.
    """
    if bits == 8:
        return codes.to(torch.uint8)
    if bits == 16:
        c = codes.to(torch.int32)
        return torch.stack([c & 0xFF, c >> 8], dim=-1).to(torch.uint8).flatten(-2)
    if not 1 <= bits <= 8:
        raise ValueError(f"bits must be in 1..8 or 16, got {bits}")
    *lead, n = codes.shape
    pad = (-n) % 8
    c = codes.to(torch.int64)
    if pad:
        c = torch.nn.functional.pad(c, (0, pad))
    c = c.reshape(*lead, -1, 8)
    shifts = torch.arange(0, 8 * bits, bits, device=c.device, dtype=torch.int64)
    word = (c << shifts).sum(-1, keepdim=True)  # (..., groups, 1): 8*bits <= 56 bits used
    byte_shifts = torch.arange(0, 8 * bits, 8, device=c.device, dtype=torch.int64)
    out = ((word >> byte_shifts) & 0xFF).to(torch.uint8).reshape(*lead, -1)
    return out[..., : packed_size(n, bits)]


def unpack_bits(packed: torch.Tensor, bits: int, n: int) -> torch.Tensor:
    """Inverse of :func:`pack_bits`: (..., packed_size(n, bits)) uint8 -> (..., n) int64."""
    if bits == 8:
        return packed[..., :n].to(torch.int64)
    if bits == 16:
        p = packed.to(torch.int64).reshape(*packed.shape[:-1], -1, 2)
        return (p[..., 0] | (p[..., 1] << 8))[..., :n]
    if not 1 <= bits <= 8:
        raise ValueError(f"bits must be in 1..8 or 16, got {bits}")
    *lead, nbytes = packed.shape
    groups = (n + 7) // 8
    p = packed.to(torch.int64)
    if groups * bits > nbytes:
        p = torch.nn.functional.pad(p, (0, groups * bits - nbytes))
    p = p.reshape(*lead, groups, bits)
    byte_shifts = torch.arange(0, 8 * bits, 8, device=p.device, dtype=torch.int64)
    word = (p << byte_shifts).sum(-1, keepdim=True)
    shifts = torch.arange(0, 8 * bits, bits, device=p.device, dtype=torch.int64)
    codes = (word >> shifts) & ((1 << bits) - 1)
    return codes.reshape(*lead, groups * 8)[..., :n]


def tensor_bytes(t: torch.Tensor) -> bytes:
    """Raw little-endian bytes of a tensor (bf16 included, which numpy lacks)."""
    t = t.detach().contiguous().cpu()
    if t.dtype == torch.bfloat16:
        t = t.view(torch.int16)
    return t.numpy().tobytes()


def all_finite(x: torch.Tensor) -> bool:
    """True if ``x`` has no NaN or inf: one min/max reduction, no mask of x's size."""
    if not x.is_floating_point() or x.numel() == 0:
        return True
    lo, hi = torch.aminmax(x)
    return bool(torch.isfinite(lo) & torch.isfinite(hi))


def require_finite(x: torch.Tensor, what: str = "input") -> None:
    """Raise ValueError if ``x`` holds NaN or inf: they must never be encoded silently."""
    if not all_finite(x):
        bad = int((~torch.isfinite(x)).sum())
        raise ValueError(f"{what} holds {bad} non-finite value(s) (NaN or inf); refusing to encode")
