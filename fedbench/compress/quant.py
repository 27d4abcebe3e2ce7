"""Uniform min-max quantisation (``quant``), and the helpers the quantiser family shares.

``Quant`` maps each value to one of ``2**bits`` evenly spaced levels between the
minimum and the maximum of its bucket (a bucket is the whole tensor, or ``bucket_size``
consecutive values), i.e. ``code = round((x - lo) / step)`` with
``step = (hi - lo) / (2**bits - 1)``, and decodes ``lo + code * step``. Rounding is to
nearest (error <= step/2, biased) or stochastic (error < step, unbiased: Gupta et al.
2015, "Deep learning with limited numerical precision", eq. 2).

Payload after the header (everything decode needs)::

    bits u8 | bucket_size u32 (0 = one bucket) | lo f32[nb] | step f32[nb] | codes

``codes`` are ``bits`` bits a value, packed LSB first (the layout of
:func:`wire.pack_bits`), so a message is ``header + 5 + 8*nb + ceil(d*bits/8)`` bytes
for ``d`` values in ``nb = ceil(d / bucket_size)`` buckets.

Shared helpers (used by qsgd, terngrad, sign, natural): fast bit packing for 1/2/4/8
bits, 16-bit stochastic-rounding noise drawn from per-client generators, bucket
layout, and a row reduction whose result does not depend on the batch size.
"""

from __future__ import annotations

import abc
import math
from collections.abc import Sequence

import numpy as np
import torch

from fedbench.compress import wire
from fedbench.compress.base import Compressor, check_batch

QUANT_BITS = (1, 2, 3, 4, 5, 6, 7, 8, 16)
_TINY_STEP = 2.0**-100

# -- bit packing ----------------------------------------------------------------------------


def pack_codes(codes: torch.Tensor, bits: int) -> np.ndarray:
    """Pack codes (clients, n) in [0, 2**bits) into (clients, ceil(n*bits/8)) uint8.

    Same layout as :func:`wire.pack_bits` (LSB first, dense), with fast paths for 1, 2,
    4 and 8 bits that avoid wire's int64 intermediates.
    """
    if bits not in QUANT_BITS:
        raise ValueError(f"bits must be one of {QUANT_BITS}, got {bits}")
    c = codes.detach().cpu().numpy()
    rows, n = c.shape
    if bits == 16:
        return np.ascontiguousarray(c.astype("<u2")).view(np.uint8).reshape(rows, 2 * n)
    c = c.astype(np.uint8, copy=False)
    if bits == 8:
        return np.ascontiguousarray(c)
    if bits == 1:
        return np.packbits(c, axis=-1, bitorder="little")
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
    elif bits in QUANT_BITS:
        flat = np.unpackbits(packed, axis=-1, count=n * bits, bitorder="little")
        weights = (1 << np.arange(bits, dtype=np.uint8)).astype(np.uint8)
        out = (flat.reshape(rows, n, bits) * weights).sum(-1, dtype=np.uint8)
    else:
        raise ValueError(f"bits must be one of {QUANT_BITS}, got {bits}")
    return torch.from_numpy(np.ascontiguousarray(out))


# -- randomness -----------------------------------------------------------------------------


def noise16(
    n: int, generators: Sequence[torch.Generator | None], device: torch.device | str | None
) -> torch.Tensor:
    """Uniform int16 noise (clients, n) in [-32768, 32767]; row i from ``generators[i]``.

    One 64-bit draw gives four values, which makes this ~5x faster than ``torch.rand``.
    Row i depends only on ``generators[i]`` and ``n``, so batched and single calls agree.
    Used for stochastic rounding at 2^-16 resolution (see :func:`stochastic_floor_`).
    """
    devices = {g.device for g in generators if g is not None}
    if len(devices) > 1:
        raise ValueError(f"generators live on different devices: {sorted(map(str, devices))}")
    gen_device = devices.pop() if devices else torch.device("cpu")
    words = torch.empty(len(generators), (n + 3) // 4, dtype=torch.int64, device=gen_device)
    for i, g in enumerate(generators):
        words[i].random_(-(2**63), None, generator=g)  # full 64-bit range
    return words.view(torch.int16)[:, :n].to(device)


def stochastic_floor_(v: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """Unbiased stochastic rounding of v >= 0: floor(v) + Bernoulli(frac(v)), in place, fp32.

    v: (clients, n) fp32 chunk. noise: (clients, n) int16 from :func:`noise16`.
    Computes ``floor(v + u)`` with ``u = (noise + 32768.5) / 2^16`` in (0, 1), so
    P(round up) = frac(v) up to 2^-17 plus the fp32 rounding of ``v + u``
    (2^-17 for v < 128, 2^-16 for v < 256): unbiased to ~2^-15 of a step for v < 256.
    Above 256 (16-bit codes) use :func:`stochastic_floor_exact_`.
    """
    return v.add_(noise.to(torch.float32), alpha=2.0**-16).add_(0.5 + 2.0**-17).floor_()


def stochastic_floor_exact_(v: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """As :func:`stochastic_floor_` for any v >= 0: the fraction is taken exactly first.

    Rounds up iff ``65536*frac + noise >= 32767.5``: |P(up) - frac(v)| <= 2^-17.
    """
    lvl = torch.floor(v)
    v.sub_(lvl).mul_(65536.0).add_(noise)
    return lvl.add_(v >= 32767.5)


def cast_into(dst: torch.Tensor, src: torch.Tensor) -> None:
    """``dst[...] = src`` with a dtype cast; numpy's float->uint8 cast is ~6x torch's."""
    if dst.device.type == "cpu" and src.device.type == "cpu" and dst.dtype == torch.uint8:
        with np.errstate(invalid="ignore"):  # NaN input: caught by check_stats after
            np.copyto(dst.numpy(), src.numpy(), casting="unsafe")
    else:
        dst.copy_(src)


# -- layout and reductions ------------------------------------------------------------------


def check_bucket_size(name: str, bucket_size: object) -> None:
    """ValueError naming ``name`` unless ``bucket_size`` is an int in 0..wire.MAX_NUMEL."""
    if isinstance(bucket_size, bool) or not isinstance(bucket_size, int) or bucket_size < 0:
        raise ValueError(
            f"{name}: bucket_size must be an int >= 0 (0 = per tensor), got {bucket_size!r}"
        )
    if bucket_size > wire.MAX_NUMEL:
        raise ValueError(f"{name}: bucket_size must be <= {wire.MAX_NUMEL}")


def bucket_layout(d: int, bucket_size: int) -> tuple[int, int]:
    """``(nb, size)``: how many buckets ``d`` values fill, and their size (0 = one)."""
    if d == 0:
        return 0, 1
    size = d if bucket_size == 0 else min(bucket_size, d)
    return -(-d // size), size


# Values a chunk: the hot loops work chunk by chunk so that temporaries stay in cache
# and no full-size scratch tensor is allocated (fresh 40 MB buffers cost page faults).
CHUNK = 1 << 20


def spans(d: int, nb: int, size: int):
    """Yield ``(a, b, b0, b1)``: value columns [a, b) covering whole buckets [b0, b1).

    With one bucket the chunks split it; with many, each chunk holds whole buckets.
    """
    if nb == 1:
        for a in range(0, d, CHUNK):
            yield a, min(a + CHUNK, d), 0, 1
        return
    per = max(1, CHUNK // size)
    for b0 in range(0, nb, per):
        b1 = min(b0 + per, nb)
        yield b0 * size, min(b1 * size, d), b0, b1


def chunk3(x2: torch.Tensor, a: int, b: int, k: int, size: int, *, edge: bool) -> torch.Tensor:
    """Columns [a, b) of x2 (rows, d) as fp32 (rows, k, width / k).

    ``k`` is the number of buckets the chunk holds (1: part of a single bucket). The
    last bucket is padded to ``size`` with its last value (``edge``) or zeros.
    """
    rows = x2.shape[0]
    c = x2[:, a:b].to(torch.float32)
    width = k * size if k > 1 else b - a
    if width > b - a:
        pad = c[:, -1:] if edge else c.new_zeros(rows, 1)
        c = torch.cat([c, pad.expand(rows, width - (b - a))], dim=1)
    return c.reshape(rows, k, -1)


def columns(per_bucket: torch.Tensor, a: int, b: int, b0: int, size: int) -> torch.Tensor:
    """Per-bucket values (rows, nb) spread over value columns [a, b): (rows, b - a)."""
    if per_bucket.shape[1] == 1:
        return per_bucket
    b1 = -(-(b - b0 * size) // size) + b0
    return per_bucket[:, b0:b1].repeat_interleave(size, dim=1)[:, a - b0 * size : b - b0 * size]


def check_stats(stats: torch.Tensor, x: torch.Tensor, name: str) -> None:
    """NaN/inf in x propagate into its bucket statistics: check those, not every value."""
    if not bool(torch.isfinite(stats).all()):
        wire.require_finite(x, f"{name} input")
        raise ValueError(f"{name}: input magnitudes overflow fp32 arithmetic (|x| too large)")


def row_abs_sum(v: torch.Tensor) -> torch.Tensor:
    """sum(|v|) of each row of v (rows, d) as fp64 (rows,), independent of ``rows``.

    A plain ``sum`` over one long row splits the work across threads (a different
    order, so different rounding, than the same row inside a batch); summing fixed-size
    chunks first keeps every partial sum on one thread in the same order.
    """
    rows, d = v.shape
    if d == 0:
        return torch.zeros(rows, dtype=torch.float64, device=v.device)
    chunk = max(4096, -(-d // 16384))
    k = d // chunk
    parts = [torch.linalg.vector_norm(v[:, : k * chunk].reshape(rows, k, chunk), 1, dim=-1)]
    if d > k * chunk:
        parts.append(torch.linalg.vector_norm(v[:, k * chunk :], 1, dim=-1, keepdim=True))
    return torch.cat(parts, dim=1).double().sum(-1)


def parse_batch(msgs: Sequence[bytes], name: str, codec_id: int, parse) -> tuple[list, object]:
    """Parse every message with ``parse(reader, header) -> (meta, fields)``.

    All messages of one batch must share header and meta (shape, dtype, settings).
    Returns the per-message fields and the shared ``(header, meta)``.
    """
    if len(msgs) == 0:
        raise ValueError(f"{name}: decode_batch needs at least one message")
    fields, shared = [], None
    for msg in msgs:
        r = wire.Reader(msg, f"{name} message")
        h = r.header(codec_id)
        meta, f = parse(r, h)
        r.expect_end()
        if shared is not None and shared != (h, meta):
            raise ValueError(f"{name}: messages in one batch differ in shape, dtype or settings")
        shared = (h, meta)
        fields.append(f)
    return fields, shared


def stack_rows(arrays: list[np.ndarray]) -> np.ndarray:
    return arrays[0][None] if len(arrays) == 1 else np.stack(arrays)


def to_output(values: torch.Tensor, dtype: torch.dtype, name: str) -> torch.Tensor:
    """Cast decoded fp32 values to the message dtype; fp16/bf16 overflow is corruption."""
    if dtype == torch.float32:
        return values
    out = values.to(dtype)
    if dtype == torch.float16 and not bool(torch.isfinite(out).all()):
        raise ValueError(f"corrupt {name} message: values overflow float16")
    return out


# -- the codec ------------------------------------------------------------------------------


class QuantisedCodec(Compressor):
    """Shared plumbing: ``encode`` builds the bytes without the decoded tensor.

    Subclasses implement ``_compress(x, generators, states, with_decoded)``; the
    decoded tensor (a full-size output) is computed only for :meth:`compress_batch`.
    """

    @abc.abstractmethod
    def _compress(self, x, generators, states, with_decoded: bool):
        """(messages, decoded (rows, *shape) or None when ``with_decoded`` is false)."""

    def compress_batch(self, x, generators=None, states=None):
        return self._compress(x, generators, states, True)

    def encode_batch(self, x, generators=None, states=None):
        return self._compress(x, generators, states, False)[0]

    def encode(self, x, generator=None, state=None):
        if not isinstance(x, torch.Tensor):
            raise ValueError(f"{self.name}: expected a torch.Tensor, got {type(x).__name__}")
        return self.encode_batch(x.unsqueeze(0), [generator], [state])[0]

    def _output(self, decoded, dtype: torch.dtype, shape: tuple[int, ...]):
        """(rows, d) fp32 -> (rows, *shape) in ``dtype``; None when not asked for."""
        if decoded is None:
            return None
        return to_output(decoded, dtype, self.name).reshape(decoded.shape[0], *shape)


class Quant(QuantisedCodec):
    """Uniform min-max quantisation to ``bits`` bits a value, per tensor or per bucket.

    Deterministic: ``code = round((x - lo) / step)``, error <= step/2 (biased).
    Stochastic: ``code = floor((x - lo)/step + u)``, u ~ U[0,1) (Gupta et al. 2015,
    eq. 2), error < step and E[decode] = x (to ~2^-15 of a step, see
    :func:`stochastic_floor_`). A constant bucket has step 0 and decodes exactly; a
    range below 2^-100 is sent as constant too (error < 1e-28).
    Payload: ``5 + 8*nb + ceil(d*bits/8)`` bytes.
    """

    name = "quant"
    codec_id = 4

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
        return 5 + 8 * nb + wire.packed_size(d, self.bits)

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
            nb, _ = bucket_layout(h.numel, bucket_size)
            lo = r.array("f4", nb, "lo")
            step = r.array("f4", nb, "step")
            if not (np.isfinite(lo).all() and np.isfinite(step).all() and (step >= 0).all()):
                raise ValueError("corrupt quant message: non-finite lo or negative step")
            packed = r.array("u1", wire.packed_size(h.numel, bits), "codes")
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
