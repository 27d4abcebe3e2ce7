"""QSGD: stochastic quantisation to ``levels`` levels of the bucket's L2 norm.

Alistarh et al. 2017, "QSGD: Communication-efficient SGD via gradient quantization",
eq. (1): for a bucket v with s levels,
``Q(v_i) = ||v||_2 * sign(v_i) * xi_i / s`` where ``xi_i = floor(s|v_i|/||v||) + Bernoulli(frac)``,
so E[Q(v)] = v. ``bucket_size`` consecutive values share one norm (the paper's
"bucketing", Sec. 3.1; 512 by default: smaller buckets => less variance, more norms).

Payload after the header::

    coding u8 (0 fixed, 1 elias) | levels u8 | bucket_size u32 | norm f32[nb] | data

- ``fixed``: one code a value, the signed level plus s (2s + 1 codes: the sign and the
  level in ``w = bit_length(s) + 1`` bits, the width of a sign bit + a level code;
  levels=7 => 4 bits). Payload ``6 + 4*nb + ceil(d*w/8)``.
- ``elias``: the paper's Elias coding of the levels (Sec. 3.2), per value: the gamma
  code of ``level + 1`` (1 bit for a zero level), plus a sign bit for nonzero levels.
  ``prefix_bits u64 | mantissa_bits u64 | sign_bits u64`` then the three streams of
  :mod:`fedbench.compress.elias`. Variable length; fewer bits where most levels are 0.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from fedbench.compress import elias, ids, wire
from fedbench.compress.base import check_batch
from fedbench.compress.bitpack import dequantised_bytes, pack_codes, packed_size, unpack_codes
from fedbench.compress.buckets import (
    bucket_layout,
    check_bucket_size,
    chunk3,
    columns,
    spans,
)
from fedbench.compress.finite import check_stats
from fedbench.compress.messages import BytesFirstCodec, parse_batch, stack_rows, to_output
from fedbench.compress.rounding import cast_into, noise16, stochastic_floor_

CODINGS = ("fixed", "elias")
# Peak bytes a value of elias decoding (elias.gamma_decode and _read_elias): ones, gaps,
# starts, the values and a selection, int64 each, and the narrower codes after them.
ELIAS_BYTES_PER_VALUE = 64


def encode_levels(
    x2: torch.Tensor, nb: int, size: int, levels: int, ord: float, generators
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-bucket scale, then magnitudes in units of ``scale/levels``, rounded unbiasedly.

    x2: (rows, d). ``ord`` 2 gives QSGD's L2 norm, ``inf`` TernGrad's max magnitude.
    Returns ``(codes, scale)``: uint8 codes ``signed level + levels`` in [0, 2*levels]
    (rows, d) (a zero level is always the code ``levels``) and fp32 scales (rows, nb).
    """
    rows, d = x2.shape
    scale = torch.zeros(rows, nb, device=x2.device)
    if nb == 1 and ord == math.inf:
        scale[:] = torch.linalg.vector_norm(x2, ord, dim=-1, keepdim=True).to(torch.float32)
    elif nb == 1:  # chunk norms (each reduced on one thread, in order), summed in fp64
        sq = sum(
            torch.linalg.vector_norm(chunk3(x2, a, b, 1, size, edge=False), 2, dim=-1).double() ** 2
            for a, b, _, _ in spans(d, 1, size)
        )
        scale[:] = sq.sqrt().to(torch.float32)
    noise = noise16(nb * size, generators, x2.device)
    codes = torch.empty(rows, d, dtype=torch.uint8, device=x2.device)
    for a, b, b0, b1 in spans(d, nb, size):
        c = chunk3(x2, a, b, b1 - b0, size, edge=False)  # (rows, k, width) fp32
        if nb > 1:
            scale[:, b0:b1] = torch.linalg.vector_norm(c, ord, dim=-1)
        factor = torch.where(scale[:, b0:b1] > 0, levels / scale[:, b0:b1], 0.0)
        v = c.abs().mul_(factor[..., None]).view(rows, -1)
        v = stochastic_floor_(v, noise[:, a : a + v.shape[1]]).clamp_(max=levels)
        v.copysign_(c.view(rows, -1)).add_(levels)  # -0.0 + levels == levels: canonical
        cast_into(codes[:, a:b], v[:, : b - a])
    return codes, scale


def signed_values(codes: torch.Tensor, levels: int, unit: torch.Tensor, size: int) -> torch.Tensor:
    """``(code - levels) * unit`` -> (rows, d) fp32; unit (rows, nb) is one level's value.

    codes: (rows, d) uint8. Both encode and decode call this, so the decoded tensor the
    sender sees is bit-for-bit what the receiver decodes.
    """
    rows, d = codes.shape
    out = torch.empty(rows, d, dtype=torch.float32, device=codes.device)
    for a, b, b0, _ in spans(d, unit.shape[1], size):
        o = out[:, a:b]
        o.copy_(codes[:, a:b])
        o.sub_(levels).mul_(columns(unit, a, b, b0, size))
    return out


class QSGD(BytesFirstCodec):
    """QSGD (Alistarh et al. 2017, eq. 1): unbiased, variance <= min(d/s^2, sqrt(d)/s)||v||^2.

    ``levels`` s in 1..127; ``bucket_size`` values share one fp32 norm (0 = whole
    tensor); ``coding`` fixed (``bit_length(s)+1`` bits a value) or elias (variable).
    """

    name = "qsgd"
    codec_id = ids.codec_id("qsgd")
    family = ids.family("qsgd")
    biased = False
    randomised = True

    def __init__(self, levels: int = 7, bucket_size: int = 512, coding: str = "fixed") -> None:
        if isinstance(levels, bool) or not isinstance(levels, int) or not 1 <= levels <= 127:
            raise ValueError(f"qsgd: levels must be an int in 1..127, got {levels!r}")
        check_bucket_size("qsgd", bucket_size)
        if coding not in CODINGS:
            raise ValueError(f"qsgd: coding must be one of {CODINGS}, got {coding!r}")
        self.levels = levels
        self.bucket_size = bucket_size
        self.coding = coding

    @property
    def code_bits(self) -> int:
        """Bits a value with fixed coding: the level, then the sign."""
        return self.levels.bit_length() + 1

    def payload_bytes(self, d: int) -> int:
        """Exact payload size with fixed coding for ``d`` values (elias varies)."""
        nb, _ = bucket_layout(d, self.bucket_size)
        return 6 + 4 * nb + packed_size(d, self.code_bits)

    def _compress(self, x, generators, states, with_decoded):
        gens, _ = check_batch(self, x, generators, states)
        rows, shape = x.shape[0], tuple(x.shape[1:])
        d = math.prod(shape)
        header = wire.write_header(self.codec_id, x.dtype, shape)
        nb, size = bucket_layout(d, self.bucket_size)
        codes, norms = encode_levels(x.reshape(rows, d), nb, size, self.levels, 2, gens)
        check_stats(norms, x, self.name)
        unit = norms / self.levels
        decoded = signed_values(codes, self.levels, unit, size) if with_decoded else None
        coding = CODINGS.index(self.coding)
        meta = bytes([coding, self.levels]) + np.uint32(self.bucket_size).tobytes()
        norms_np = norms.cpu().numpy()
        if self.coding == "fixed":
            packed = pack_codes(codes, self.code_bits)
            bodies = [packed[i].data for i in range(rows)]
        else:
            signed = codes.cpu().numpy().astype(np.int16) - self.levels
            bodies = [_elias_body(np.abs(signed[i]), signed[i] < 0) for i in range(rows)]
        msgs = [b"".join((header, meta, norms_np[i].tobytes(), bodies[i])) for i in range(rows)]
        return msgs, self._output(decoded, x.dtype, shape)

    def decode_batch(self, msgs, device=None):
        def parse(r: wire.Reader, h: wire.Header):
            coding, levels, bucket_size = r.u8("coding"), r.u8("levels"), r.u32("bucket_size")
            if coding >= len(CODINGS) or not 1 <= levels <= 127:
                raise ValueError(f"corrupt qsgd message: coding {coding}, levels {levels}")
            nb, _ = bucket_layout(h.numel, bucket_size)
            width = levels.bit_length() + 1
            peak = dequantised_bytes(width, h.numel, h.dtype)
            if coding == 1:  # the gamma decoder's int64 arrays, ~8 per value, and bit streams
                peak += ELIAS_BYTES_PER_VALUE * h.numel + 8 * r.remaining
            wire.check_decode_bytes(peak, r.what)
            norms = r.array("f4", nb, "norms")
            if not (np.isfinite(norms).all() and (norms >= 0).all()):
                raise ValueError("corrupt qsgd message: a norm is negative or not finite")
            if coding == 0:
                body = r.array("u1", packed_size(h.numel, width), "codes")
            else:
                body = _read_elias(r, h.numel, levels)
            return (coding, levels, bucket_size), (norms, body)

        fields, (h, (coding, levels, bucket_size)) = parse_batch(
            msgs, self.name, self.codec_id, parse
        )
        d = h.numel
        _, size = bucket_layout(d, bucket_size)
        if coding == 0:
            codes = unpack_codes(stack_rows([f[1] for f in fields]), levels.bit_length() + 1, d)
            if d and int(codes.max()) > 2 * levels:
                raise ValueError(f"corrupt qsgd message: a level exceeds {levels}")
        else:
            codes = torch.from_numpy(stack_rows([f[1] for f in fields]))
        norms = torch.from_numpy(stack_rows([f[0] for f in fields]).astype(np.float32))
        unit = (norms / levels).to(device)
        out = signed_values(codes.to(device), levels, unit, size)
        return to_output(out, h.dtype, self.name).reshape(len(msgs), *h.shape)


def _elias_body(lvl: np.ndarray, sign: np.ndarray) -> bytes:
    """Elias payload of one row: gamma(level + 1) streams, then the nonzero levels' signs."""
    prefix_bits, prefix, mantissa_bits, mantissa = elias.gamma_encode(lvl.astype(np.int64) + 1)
    signs = sign[lvl > 0]
    counts = np.array([prefix_bits, mantissa_bits, len(signs)], dtype="<u8").tobytes()
    return b"".join((counts, prefix, mantissa, np.packbits(signs, bitorder="little").tobytes()))


def _read_elias(r: wire.Reader, n: int, levels: int) -> np.ndarray:
    """Parse and decode one elias payload -> codes uint8 (n,): signed level + levels."""
    prefix_bits, mantissa_bits, sign_bits = (r.u64(f) for f in ("prefix", "mantissa", "signs"))
    prefix = r.array("u1", (prefix_bits + 7) // 8, "prefix stream")
    mantissa = r.array("u1", (mantissa_bits + 7) // 8, "mantissa stream")
    signs = r.array("u1", (sign_bits + 7) // 8, "sign stream")
    values = elias.gamma_decode(n, prefix_bits, prefix, mantissa_bits, mantissa)
    if n and int(values.max()) > levels + 1:
        raise ValueError(f"corrupt qsgd message: a level exceeds {levels}")
    lvl = (values - 1).astype(np.uint8)
    nonzero = lvl > 0
    if int(nonzero.sum()) != sign_bits:
        raise ValueError("corrupt qsgd message: sign count disagrees with the nonzero levels")
    signed = lvl.astype(np.int16)
    signed[nonzero] *= 1 - 2 * np.unpackbits(signs, count=sign_bits, bitorder="little").astype(
        np.int16
    )
    return (signed + levels).astype(np.uint8)
