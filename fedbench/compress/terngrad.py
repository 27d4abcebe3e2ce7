"""TernGrad: stochastic ternary {-1, 0, +1} x the bucket's max magnitude.

Wen et al. 2017, "TernGrad: Ternary gradients to reduce communication in distributed
deep learning", eq. (2): ``ternarize(v) = s * sign(v) * b`` with ``s = max|v|`` and
``b_i ~ Bernoulli(|v_i| / s)``, so E[ternarize(v)] = v. We scale per tensor (the paper's
per-layer scale, ``bucket_size: 0``) or per bucket; the paper's gradient clipping is an
optimiser choice and is left out.

Payload after the header: ``bucket_size u32 | scale f32[nb] | codes`` with 2-bit codes
``ternary + 1`` (0 = -s, 1 = 0, 2 = +s; 3 is never written), i.e. ``4 + 4*nb + ceil(d/4)``
bytes.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from fedbench.compress import ids, wire
from fedbench.compress.base import check_batch
from fedbench.compress.bitpack import dequantised_bytes, pack_codes, packed_size, unpack_codes
from fedbench.compress.buckets import (
    bucket_layout,
    check_bucket_size,
)
from fedbench.compress.finite import check_stats
from fedbench.compress.messages import BytesFirstCodec, parse_batch, stack_rows, to_output
from fedbench.compress.qsgd import encode_levels, signed_values


class TernGrad(BytesFirstCodec):
    """TernGrad (Wen et al. 2017, eq. 2): unbiased, 2 bits a value + 4 bytes a bucket."""

    name = "terngrad"
    codec_id = ids.codec_id("terngrad")
    family = ids.family("terngrad")
    biased = False
    randomised = True

    def __init__(self, bucket_size: int = 0) -> None:
        check_bucket_size("terngrad", bucket_size)
        self.bucket_size = bucket_size

    def payload_bytes(self, d: int) -> int:
        """Exact payload size (after the header) for ``d`` values."""
        nb, _ = bucket_layout(d, self.bucket_size)
        return 4 + 4 * nb + packed_size(d, 2)

    def _compress(self, x, generators, states, with_decoded):
        gens, _ = check_batch(self, x, generators, states)
        rows, shape = x.shape[0], tuple(x.shape[1:])
        d = math.prod(shape)
        header = wire.write_header(self.codec_id, x.dtype, shape)
        nb, size = bucket_layout(d, self.bucket_size)
        codes, scale = encode_levels(x.reshape(rows, d), nb, size, 1, math.inf, gens)
        check_stats(scale, x, self.name)
        decoded = signed_values(codes, 1, scale, size) if with_decoded else None
        packed = pack_codes(codes, 2)
        meta = np.uint32(self.bucket_size).tobytes()
        scale_np = scale.cpu().numpy()
        msgs = [
            b"".join((header, meta, scale_np[i].tobytes(), packed[i].data)) for i in range(rows)
        ]
        return msgs, self._output(decoded, x.dtype, shape)

    def decode_batch(self, msgs, device=None):
        def parse(r: wire.Reader, h: wire.Header):
            bucket_size = r.u32("bucket_size")
            wire.check_decode_bytes(dequantised_bytes(2, h.numel, h.dtype), r.what)
            nb, _ = bucket_layout(h.numel, bucket_size)
            scale = r.array("f4", nb, "scales")
            if not (np.isfinite(scale).all() and (scale >= 0).all()):
                raise ValueError("corrupt terngrad message: a scale is negative or not finite")
            return bucket_size, (scale, r.array("u1", packed_size(h.numel, 2), "codes"))

        fields, (h, bucket_size) = parse_batch(msgs, self.name, self.codec_id, parse)
        d = h.numel
        _, size = bucket_layout(d, bucket_size)
        codes = unpack_codes(stack_rows([f[1] for f in fields]), 2, d)
        if d and int(codes.max()) == 3:
            raise ValueError("corrupt terngrad message: code 3 is not a ternary value")
        scale = torch.from_numpy(stack_rows([f[0] for f in fields]).astype(np.float32))
        out = signed_values(codes.to(device), 1, scale.to(device), size)
        return to_output(out, h.dtype, self.name).reshape(len(msgs), *h.shape)
