"""Natural compression: each magnitude stochastically rounded to a power of two.

Horvath et al. 2019, "Natural compression for distributed deep learning", eq. (3):
for ``2^e <= |x| < 2^(e+1)``, ``C(x) = sign(x) * 2^(e+1)`` with probability
``(|x| - 2^e) / 2^e`` and ``sign(x) * 2^e`` otherwise, so E[C(x)] = x. What is left of
an fp32 is its sign and 8-bit exponent field: 9 bits a value. The exponent field 0
stands for 0 (the lower neighbour of the smallest normal, so |x| < 2^-126 rounds
unbiasedly between 0 and 2^-126).

Rounding adds uniform noise to the 23 mantissa bits and keeps the carry into the
exponent, which is exactly the rule above (at 2^-16 resolution, see rounding.noise16).

Payload after the header: ``exponent u8[d] | sign bits`` (1 = negative, LSB first),
i.e. ``d + ceil(d/8)`` bytes. Inputs need ``|x| < 2^127`` (``2^15`` for fp16), so that
rounding up stays representable.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from fedbench.compress import ids, wire
from fedbench.compress.base import check_batch
from fedbench.compress.bitpack import pack_codes, packed_size, unpack_codes
from fedbench.compress.finite import require_finite
from fedbench.compress.messages import BytesFirstCodec, parse_batch, stack_rows, to_output
from fedbench.compress.rounding import noise16

# Largest exponent field per dtype: 2^(field - 127) must be finite there
# (fp32/fp64/bf16: 2^127; fp16: 2^15). Default 254.
_MAX_FIELD = {torch.float16: 127 + 15}


def _values(field: torch.Tensor, negative: torch.Tensor) -> torch.Tensor:
    """fp32 ``(-1)^negative * 2^(field - 127)`` (0 for field 0), (rows, d). Shared path."""
    bits = field.to(torch.int32).bitwise_left_shift_(23)
    bits.bitwise_or_(negative.to(torch.int32).bitwise_left_shift_(31))
    return bits.view(torch.float32)


class Natural(BytesFirstCodec):
    """Natural compression (Horvath et al. 2019, eq. 3): unbiased, 9 bits a value."""

    name = "natural"
    codec_id = ids.codec_id("natural")
    family = ids.family("natural")
    biased = False
    randomised = True

    def payload_bytes(self, d: int) -> int:
        """Exact payload size (after the header) for ``d`` values."""
        return d + packed_size(d, 1)

    def _compress(self, x, generators, states, with_decoded):
        gens, _ = check_batch(self, x, generators, states)
        rows, shape = x.shape[0], tuple(x.shape[1:])
        d = math.prod(shape)
        header = wire.write_header(self.codec_id, x.dtype, shape)
        x32 = x.reshape(rows, d).to(torch.float32)
        magnitude = x32.view(torch.int32).bitwise_and(0x7FFFFFFF)  # (rows, d) |x| bits
        max_field = _MAX_FIELD.get(x.dtype, 254)
        if d and int(magnitude.max()) > max_field << 23:
            require_finite(x, f"{self.name} input")
            raise ValueError(
                f"{self.name}: |x| must be <= 2^{max_field - 127} for {x.dtype} input, so that "
                "rounding up to the next power of two stays finite"
            )
        noise = noise16(d, gens, x.device)  # int16 r; u16 = r + 32768
        # carry = 1 w.p. mantissa / 2^23 (up to 2^-17): (mantissa + 128*u16 + 64) >> 23
        magnitude.add_(noise, alpha=128).add_(128 * 32768 + 64).bitwise_right_shift_(23)
        field = magnitude.to(torch.uint8)
        negative = torch.signbit(x32)
        decoded = _values(field, negative) if with_decoded else None
        field_np = field.cpu().numpy()
        signs = pack_codes(negative, 1)
        msgs = [b"".join((header, field_np[i].data, signs[i].data)) for i in range(rows)]
        return msgs, self._output(decoded, x.dtype, shape)

    def decode_batch(self, msgs, device=None):
        def parse(r: wire.Reader, h: wire.Header):
            # exponents and signs (stacked, unpacked), two int32 words, the cast
            wire.check_decode_bytes(h.numel * (12 + h.dtype.itemsize), r.what)
            field = r.array("u1", h.numel, "exponents")
            signs = r.array("u1", packed_size(h.numel, 1), "sign bits")
            return None, (field, signs)

        fields, (h, _) = parse_batch(msgs, self.name, self.codec_id, parse)
        d = h.numel
        field = torch.from_numpy(np.array(stack_rows([f[0] for f in fields])))
        if d and int(field.max()) > _MAX_FIELD.get(h.dtype, 254):
            raise ValueError(
                f"corrupt natural message: exponent field {int(field.max())} too large"
            )
        signs = unpack_codes(stack_rows([f[1] for f in fields]), 1, d)
        out = _values(field.to(device), signs.to(device))
        return to_output(out, h.dtype, self.name).reshape(len(msgs), *h.shape)
