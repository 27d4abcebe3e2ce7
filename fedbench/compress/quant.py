"""Uniform min-max quantisation (``quant``).

``Quant`` maps each value to one of ``2**bits`` evenly spaced levels between the
minimum and the maximum of its bucket (a bucket is the whole tensor, or ``bucket_size``
consecutive values), i.e. ``code = round((x - lo) / step)`` with
``step = (hi - lo) / (2**bits - 1)``, and decodes ``lo + code * step``. Rounding is to
nearest (error <= step/2, biased) or stochastic (error < step, unbiased: Gupta et al.
2015, "Deep learning with limited numerical precision", eq. 2).

Payload after the header (everything decode needs)::

    bits u8 | bucket_size u32 (0 = one bucket) | lo f32[nb] | step f32[nb] | codes

``codes`` are ``bits`` bits a value, packed LSB first (the layout of
:mod:`fedbench.compress.bitpack`), so a message is ``header + 5 + 8*nb + ceil(d*bits/8)``
bytes for ``d`` values in ``nb = ceil(d / bucket_size)`` buckets.

The kernels the quantiser family shares live in their own modules: bit packing
(``bitpack``), stochastic rounding (``rounding``), bucket layout and row reductions
(``buckets``), batch parsing and the bytes-first codec base (``messages``).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from fedbench.compress import ids, wire
from fedbench.compress.base import check_batch
from fedbench.compress.bitpack import (
    PACK_BITS,
    dequantised_bytes,
    pack_codes,
    packed_size,
    unpack_codes,
)
from fedbench.compress.buckets import bucket_layout, check_bucket_size, chunk3, columns, spans
from fedbench.compress.finite import check_stats
from fedbench.compress.messages import BytesFirstCodec, parse_batch, stack_rows, to_output
from fedbench.compress.rounding import (
    cast_into,
    noise16,
    stochastic_floor_,
    stochastic_floor_exact_,
)

QUANT_BITS = PACK_BITS
_TINY_STEP = 2.0**-100


class Quant(BytesFirstCodec):
    """Uniform min-max quantisation to ``bits`` bits a value, per tensor or per bucket.

    Deterministic: ``code = round((x - lo) / step)``, error <= step/2 (biased).
    Stochastic: ``code = floor((x - lo)/step + u)``, u ~ U[0,1) (Gupta et al. 2015,
    eq. 2), error < step and E[decode] = x (to ~2^-15 of a step, see
    :func:`stochastic_floor_`). A constant bucket has step 0 and decodes exactly; a
    range below 2^-100 is sent as constant too (error < 1e-28).
    Payload: ``5 + 8*nb + ceil(d*bits/8)`` bytes.
    """

    name = "quant"
    codec_id = ids.codec_id("quant")
    family = ids.family("quant")

    def __init__(self, bits: int = 8, stochastic: bool = False, bucket_size: int = 0) -> None:
        if isinstance(bits, bool) or bits not in QUANT_BITS:
            raise ValueError(f"quant: bits must be one of {QUANT_BITS}, got {bits!r}")
        if not isinstance(stochastic, bool):
            raise ValueError(f"quant: stochastic must be true or false, got {stochastic!r}")
        check_bucket_size("quant", bucket_size)
        self.bits = bits
        self.stochastic = stochastic
        self.bucket_size = bucket_size

    @property
    def biased(self) -> bool:  # type: ignore[override]
        return not self.stochastic

    @property
    def randomised(self) -> bool:  # type: ignore[override]
        return self.stochastic

    def payload_bytes(self, d: int) -> int:
        """Exact payload size (after the header) for a tensor of ``d`` values."""
        nb, _ = bucket_layout(d, self.bucket_size)
        return 5 + 8 * nb + packed_size(d, self.bits)

    def _compress(self, x, generators, states, with_decoded):
        gens, _ = check_batch(self, x, generators, states)
        rows, shape = x.shape[0], tuple(x.shape[1:])
        d = math.prod(shape)
        header = wire.write_header(self.codec_id, x.dtype, shape)
        nb, size = bucket_layout(d, self.bucket_size)
        top = (1 << self.bits) - 1
        x2 = x.reshape(rows, d)
        lo, hi, step = (torch.zeros(rows, nb, device=x.device) for _ in range(3))
        if nb == 1:  # one range for the row: a pass for it first
            lo[:] = x2.amin(-1, keepdim=True).to(torch.float32)
            hi[:] = x2.amax(-1, keepdim=True).to(torch.float32)
            step[:] = _step(lo, hi, top)
        noise = noise16(nb * size, gens, x.device) if self.stochastic else None
        dtype = torch.int32 if self.bits == 16 else torch.uint8
        codes = torch.empty(rows, d, dtype=dtype, device=x.device)
        for a, b, b0, b1 in spans(d, nb, size):
            c = chunk3(x2, a, b, b1 - b0, size, edge=True)  # (rows, k, width) fp32
            if nb > 1:
                lo[:, b0:b1] = c.amin(-1)  # (aminmax with dim= is not vectorised)
                hi[:, b0:b1] = c.amax(-1)
                step[:, b0:b1] = _step(lo[:, b0:b1], hi[:, b0:b1], top)
            v = torch.sub(c, lo[:, b0:b1, None])
            inv = torch.where(step[:, b0:b1] > 0, 1.0 / step[:, b0:b1], 0.0)
            v = v.mul_(inv[..., None]).view(rows, -1)  # (x - lo) / step in [0, top]
            if noise is None:
                v.round_()  # (x - lo) * inv <= top * (1 + 2^-22): no clamp needed
            else:
                rounding = stochastic_floor_ if top < 256 else stochastic_floor_exact_
                v = rounding(v, noise[:, a : a + v.shape[1]]).clamp_(0, top)
            cast_into(codes[:, a:b], v[:, : b - a])
        check_stats(torch.cat([hi - lo, step], dim=1), x, self.name)
        decoded = _dequantise(codes, lo, step, size) if with_decoded else None
        packed = pack_codes(codes, self.bits)
        lo_np, step_np = lo.cpu().numpy(), step.cpu().numpy()
        meta = np.array([self.bits], np.uint8).tobytes() + np.uint32(self.bucket_size).tobytes()
        msgs = [
            b"".join((header, meta, lo_np[i].tobytes(), step_np[i].tobytes(), packed[i].data))
            for i in range(rows)
        ]
        return msgs, self._output(decoded, x.dtype, shape)

    def decode_batch(self, msgs, device=None):
        def parse(r: wire.Reader, h: wire.Header):
            bits, bucket_size = r.u8("bits"), r.u32("bucket_size")
            if bits not in QUANT_BITS:
                raise ValueError(f"corrupt quant message: bits {bits} not in {QUANT_BITS}")
            wire.check_decode_bytes(dequantised_bytes(bits, h.numel, h.dtype), r.what)
            nb, _ = bucket_layout(h.numel, bucket_size)
            lo = r.array("f4", nb, "lo")
            step = r.array("f4", nb, "step")
            if not (np.isfinite(lo).all() and np.isfinite(step).all() and (step >= 0).all()):
                raise ValueError("corrupt quant message: non-finite lo or negative step")
            packed = r.array("u1", packed_size(h.numel, bits), "codes")
            return (bits, bucket_size), (lo, step, packed)

        fields, (h, (bits, bucket_size)) = parse_batch(msgs, self.name, self.codec_id, parse)
        d = h.numel
        _, size = bucket_layout(d, bucket_size)
        lo = torch.from_numpy(stack_rows([f[0] for f in fields]).astype(np.float32))
        step = torch.from_numpy(stack_rows([f[1] for f in fields]).astype(np.float32))
        if not bool(torch.isfinite(lo + step * ((1 << bits) - 1)).all()):
            raise ValueError("corrupt quant message: lo + step * max code overflows")
        codes = unpack_codes(stack_rows([f[2] for f in fields]), bits, d).to(device)
        out = _dequantise(codes, lo.to(codes.device), step.to(codes.device), size)
        return to_output(out, h.dtype, self.name).reshape(len(msgs), *h.shape)


def _step(lo: torch.Tensor, hi: torch.Tensor, top: int) -> torch.Tensor:
    """(hi - lo) / top; a range below 2^-100 is sent as a constant bucket (step 0), so
    its error is under 1e-28 and 1/step stays finite for every step that is kept."""
    step = (hi - lo) / top
    return torch.where(step >= _TINY_STEP, step, 0.0)


def _dequantise(codes: torch.Tensor, lo: torch.Tensor, step: torch.Tensor, size: int):
    """``lo + code * step``: codes (rows, d), lo/step (rows, nb) -> (rows, d) fp32.

    Encode (for the decoded tensor) and decode both call this, so they agree exactly.
    """
    rows, d = codes.shape
    out = torch.empty(rows, d, dtype=torch.float32, device=codes.device)
    for a, b, b0, _ in spans(d, lo.shape[1], size):
        o = out[:, a:b]
        o.copy_(codes[:, a:b])
        o.mul_(columns(step, a, b, b0, size)).add_(columns(lo, a, b, b0, size))
    return out
