"""Scaled sign compression: one bit a value and one scale, the mean magnitude.

Karimireddy et al. 2019, "Error feedback fixes SignSGD and other gradient compression
schemes", Alg. 1 and eq. (EF-signSGD): ``C(x) = (||x||_1 / d) * sign(x)``. Biased (it
keeps only the signs), so it is meant to run with ``error_feedback: true``. A zero
(and -0.0 aside) is sent as +scale: one bit has no room for 0.

Payload after the header: ``scale f32 | sign bits`` (1 = +scale, 0 = -scale, LSB first),
i.e. ``4 + ceil(d/8)`` bytes.
"""

from __future__ import annotations

import math

import torch

from fedbench.compress import ids, wire
from fedbench.compress.base import check_batch
from fedbench.compress.bitpack import pack_codes, packed_size, unpack_mask
from fedbench.compress.buckets import (
    row_abs_sum,
)
from fedbench.compress.finite import check_stats
from fedbench.compress.messages import BytesFirstCodec, parse_batch, stack_rows, to_output


def _signed_scale(positive: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """+scale where positive else -scale: (rows, d) fp32. Shared by encode and decode."""
    s = scale[:, None]
    return positive.to(torch.float32).mul_(2 * s).sub_(s)  # exact: 2s - s == s


class Sign(BytesFirstCodec):
    """EF-signSGD's compressor (Karimireddy et al. 2019): 1 bit a value, scale mean|x|."""

    name = "sign"
    codec_id = ids.codec_id("sign")
    family = ids.family("sign")
    biased = True
    randomised = False

    def payload_bytes(self, d: int) -> int:
        """Exact payload size (after the header) for ``d`` values."""
        return 4 + packed_size(d, 1)

    def _compress(self, x, generators, states, with_decoded):
        check_batch(self, x, generators, states)
        rows, shape = x.shape[0], tuple(x.shape[1:])
        d = math.prod(shape)
        header = wire.write_header(self.codec_id, x.dtype, shape)
        x2 = x.reshape(rows, d)
        scale = (row_abs_sum(x2) / max(d, 1)).to(torch.float32)  # (rows,)
        check_stats(scale, x, self.name)
        positive = ~torch.signbit(x2)  # (rows, d) bool
        decoded = _signed_scale(positive, scale) if with_decoded else None
        packed = pack_codes(positive, 1)
        scale_np = scale.cpu().numpy()
        msgs = [b"".join((header, scale_np[i].tobytes(), packed[i].data)) for i in range(rows)]
        return msgs, self._output(decoded, x.dtype, shape)

    def decode_batch(self, msgs, device=None):
        def parse(r: wire.Reader, h: wire.Header):
            # unpacked bits, the fp32 values, the cast to the message dtype
            wire.check_decode_bytes(h.numel * (6 + h.dtype.itemsize), r.what)
            scale = r.f32("scale")
            if scale < 0:
                raise ValueError(f"corrupt sign message: negative scale {scale}")
            return None, (scale, r.array("u1", packed_size(h.numel, 1), "sign bits"))

        fields, (h, _) = parse_batch(msgs, self.name, self.codec_id, parse)
        positive = unpack_mask(stack_rows([f[1] for f in fields]), h.numel).to(device)
        scale = torch.tensor([f[0] for f in fields], dtype=torch.float32, device=positive.device)
        out = _signed_scale(positive, scale)
        return to_output(out, h.dtype, self.name).reshape(len(msgs), *h.shape)
