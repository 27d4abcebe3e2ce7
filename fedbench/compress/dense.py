"""Dense codecs: ``none`` (the fp32 baseline every ratio is measured against) and casts.

Payload: the values in the wire dtype, row-major; 32, 16 or 16 bits a value.
"""

from __future__ import annotations

import warnings
from typing import ClassVar

import numpy as np
import torch

from fedbench.compress import ids, wire
from fedbench.compress.base import Compressor, check_batch
from fedbench.compress.finite import all_finite, require_finite


class _Cast(Compressor):
    wire_dtype: ClassVar[torch.dtype]
    biased = False

    def _encode(self, x, generators, states) -> tuple[list[bytes], torch.Tensor]:
        check_batch(self, x, generators, states)
        cast = x.to(self.wire_dtype)
        # One reduction over the cast catches NaN/inf in x and overflow of the wire dtype.
        if not all_finite(cast):
            require_finite(x, f"{self.name} input")
            raise ValueError(f"{self.name}: input overflows {self.wire_dtype} (|x| too large)")
        header = wire.write_header(self.codec_id, x.dtype, tuple(x.shape[1:]))
        flat = cast.reshape(x.shape[0], -1).contiguous().cpu()
        if self.wire_dtype == torch.bfloat16:
            flat = flat.view(torch.int16)
        rows = flat.numpy()
        # join copies each row once into the new bytes object (header + row + header ...)
        return [b"".join((header, rows[i].data)) for i in range(rows.shape[0])], cast

    def encode_batch(self, x, generators=None, states=None):
        return self._encode(x, generators, states)[0]

    def compress_batch(self, x, generators=None, states=None):
        msgs, cast = self._encode(x, generators, states)
        return msgs, cast.to(x.dtype)

    def decode_batch(self, msgs, device=None):
        np_dtype = {torch.float32: "<f4", torch.float16: "<f2", torch.bfloat16: "<i2"}[
            self.wire_dtype
        ]
        rows, hdr = [], None
        for msg in msgs:
            r = wire.Reader(msg, f"{self.name} message")
            h = r.header(self.codec_id)
            if hdr is not None and h != hdr:
                raise ValueError(f"{self.name}: messages in one batch differ in shape or dtype")
            hdr = h
            # peak: the stacked wire values of a batch, then the output
            wire.check_decode_bytes(h.numel * (self.wire_dtype.itemsize + h.dtype.itemsize), r.what)
            rows.append(r.array(np_dtype, h.numel, "values"))
            r.expect_end()
        if hdr is None:
            raise ValueError(f"{self.name}: decode_batch needs at least one message")
        if len(rows) > 1:
            data = torch.from_numpy(np.stack(rows))
        else:  # a read-only view of the message: checked, then copied once by the cast
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # "buffer is not writable"
                data = torch.from_numpy(rows[0]).unsqueeze(0)
        if self.wire_dtype == torch.bfloat16:
            data = data.view(torch.bfloat16)
        # NaN/inf on the wire, or an overflowing cast: Compressor's check of the output
        out = data.to(device=device, dtype=hdr.dtype, copy=True)
        return out.reshape(len(msgs), *hdr.shape)


class Dense(_Cast):
    """No compression: fp32 on the wire (4 bytes a value). Exact for fp32 input."""

    name = "none"
    codec_id = ids.codec_id("none")
    family = ids.family("none")
    wire_dtype = torch.float32


class Fp16(_Cast):
    """IEEE half precision on the wire (2 bytes a value); relative error <= 2^-11."""

    name = "fp16"
    codec_id = ids.codec_id("fp16")
    family = ids.family("fp16")
    wire_dtype = torch.float16


class Bf16(_Cast):
    """bfloat16 on the wire (2 bytes a value): fp32's range, 8 bits of mantissa."""

    name = "bf16"
    codec_id = ids.codec_id("bf16")
    family = ids.family("bf16")
    wire_dtype = torch.bfloat16
