"""The wire format: one self-describing message per tensor.

Layout of every message (little-endian)::

    magic   b"FB"        2 bytes
    version u8           1   (FORMAT_VERSION)
    codec   u8           1   (the compressor's ``codec_id``)
    dtype   u8           1   (index into DTYPES: the dtype decode gives back)
    ndim    u8           1   (<= MAX_NDIM)
    shape   u32 x ndim   4 * ndim
    payload              codec-specific: the fields decode needs, then the data

Codes inside payloads are packed by :mod:`fedbench.compress.bitpack`; the finite checks
live in :mod:`fedbench.compress.finite`.

``decode`` treats messages as untrusted: every read is bounds-checked through
:class:`Reader`, which raises ``ValueError`` naming what is wrong; no allocation is
sized by a header field before the payload length has been checked against it.

The decode cap. Sparse, low-rank and sketched payloads are legitimately far smaller than
the tensor they describe, so the payload length cannot bound what decoding allocates;
the cap does. It counts BYTES, the decoder's peak for one message (its output in the
header's dtype plus its temporaries: unpacked codes, index arrays, hash tables, the
product of two factors; a message decoded in a batch is counted as such), and every
codec checks its estimate with :func:`check_decode_bytes` before allocating.

- ``FEDBENCH_MAX_DECODE_BYTES=B``: the cap, in bytes (default ``2**30``, 1 GiB: about
  10x the largest layer of the models here, as fp32, with its temporaries).
- ``FEDBENCH_MAX_DECODE_NUMEL=N``: the older knob, in values; it still raises the cap,
  to ``16 * N`` bytes (N values of up to 8 bytes each, as much again for temporaries)
  when that is more than the byte cap.

Both are read at import. Whatever the cap, a shape whose non-zero dimensions multiply
to more than :data:`MAX_NUMEL` is refused, a zero-size one included.
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
_MAX_DIM = 2**32 - 1  # a shape field is a u32


def _env_count(name: str) -> int | None:
    raw = os.environ.get(name)
    if raw is None or raw.strip() == "":
        return None
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"{name} must be a positive integer, got {raw!r}") from None
    if value < 1:
        raise ValueError(f"{name} must be a positive integer, got {raw!r}")
    return value


def _decode_cap_from_env() -> int:
    """The decode cap in bytes from the environment (see the module docstring)."""
    cap = _env_count("FEDBENCH_MAX_DECODE_BYTES") or 2**30
    numel = _env_count("FEDBENCH_MAX_DECODE_NUMEL")
    return max(cap, 16 * numel) if numel is not None else cap


# What a decoder agrees to allocate for one message, in bytes (module docstring).
MAX_DECODE_BYTES = _decode_cap_from_env()

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

    @property
    def nbytes(self) -> int:
        """Bytes of the decoded tensor: ``numel`` values of ``dtype``."""
        return self.numel * self.dtype.itemsize


def check_decode_bytes(nbytes: int, what: str) -> None:
    """ValueError unless decoding may allocate ``nbytes`` (a peak estimate) under the cap.

    Call it before allocating; ``what`` names the message ("topk message").
    """
    if nbytes > MAX_DECODE_BYTES:
        raise ValueError(
            f"{what} needs ~{nbytes} bytes to decode, more than the decode cap of "
            f"{MAX_DECODE_BYTES} bytes (raise the cap with FEDBENCH_MAX_DECODE_BYTES)"
        )


def _check_shape_size(shape: tuple[int, ...]) -> int:
    """The product of the non-zero dims; ValueError past MAX_NUMEL (any shape, 0-size too)."""
    nonzero = math.prod(s for s in shape if s)
    if nonzero > MAX_NUMEL:
        raise ValueError(
            f"shape {shape} claims {nonzero} values in its non-zero dimensions; at most "
            f"{MAX_NUMEL} per message"
        )
    return nonzero


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
    if any(s > _MAX_DIM for s in shape):
        raise ValueError(f"invalid shape {shape}: a dimension exceeds {_MAX_DIM}")
    _check_shape_size(shape)
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
        shape = tuple(self.unpack(f"{ndim}I", "shape")) if ndim else ()
        try:
            nonzero = _check_shape_size(shape)
        except ValueError as e:
            raise ValueError(f"corrupt {self.what}: {e}") from None
        dtype = DTYPES[dcode]
        # Checked on the non-zero dims, so (0, 2**31) fails here too, not in a reshape.
        if nonzero * dtype.itemsize > MAX_DECODE_BYTES:
            raise ValueError(
                f"corrupt {self.what}: shape {shape} claims {nonzero} {dtype} values, more "
                f"than the decode cap of {MAX_DECODE_BYTES} bytes (raise the cap with "
                "FEDBENCH_MAX_DECODE_BYTES)"
            )
        return Header(codec=codec, dtype=dtype, shape=shape)

    def expect_end(self) -> None:
        if self.remaining:
            raise ValueError(f"corrupt {self.what}: {self.remaining} unexpected trailing bytes")


def tensor_bytes(t: torch.Tensor) -> bytes:
    """Raw little-endian bytes of a tensor (bf16 included, which numpy lacks)."""
    t = t.detach().contiguous().cpu()
    if t.dtype == torch.bfloat16:
        t = t.view(torch.int16)
    return t.numpy().tobytes()
