"""Hostile but well-formed messages, for every codec under conf/compressor/ (issue 11).

A decoder must never give back NaN or inf (a dtype byte changed to fp16 under large
values, a scale of 3e38, PowerSGD factors of 1e20), never allocate past the decode cap
(``wire.MAX_DECODE_BYTES``) for a small message whose header claims a huge tensor, and
never fail with anything but ValueError on a zero-size shape with huge other
dimensions. ``from_config`` builds only Compressor subclasses.
"""

from __future__ import annotations

import math
import struct

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedbench.compress import available, build, from_config, wire
from fedbench.compress.lowrank import factors_decode_bytes

NAMES = available()
FUZZ = settings(
    max_examples=12, deadline=4000, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
F16, BF16, F64 = (wire.DTYPES.index(d) for d in (torch.float16, torch.bfloat16, torch.float64))
HUGE_F32 = (3e38, -3e38, math.inf, -math.inf, math.nan)


def raw(name: str):
    """The codec itself, without the error-feedback wrapper its YAML may ask for."""
    return build(name, error_feedback=False)


def sample(shape, seed: int = 0) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def encode(c, x: torch.Tensor) -> bytes:
    return c.encode(x, torch.Generator().manual_seed(0), c.init_state(tuple(x.shape)))


def with_dtype(msg: bytes, code: int) -> bytes:
    """The message with its header's dtype byte replaced (offset 4)."""
    return msg[:4] + bytes([code]) + msg[5:]


def with_shape(msg: bytes, shape: tuple[int, ...]) -> bytes:
    """The message with its header's shape replaced (same ndim), payload untouched."""
    ndim = msg[5]
    assert len(shape) == ndim
    return msg[:6] + struct.pack(f"<{ndim}I", *shape) + msg[wire.header_size(ndim) :]


def with_f32(msg: bytes, offset: int, value: float) -> bytes:
    return msg[:offset] + struct.pack("<f", value) + msg[offset + 4 :]


def value_error_or_finite(c, msg: bytes) -> torch.Tensor | None:
    """Decode: a ValueError is fine, anything else must be a finite tensor."""
    try:
        out = c.decode(msg)
    except ValueError:
        return None
    assert isinstance(out, torch.Tensor)
    assert bool(torch.isfinite(out).all()), f"{c.name} decoded non-finite values"
    return out


# -- item 4: never inf or NaN -----------------------------------------------------------


def large_message(c) -> tuple[bytes, torch.Tensor]:
    """A message of values ~1e5 (above fp16's range) and its fp32 decode; codecs whose
    wire values are fp16 get ~6e4 instead, the most they can carry."""
    x = sample((16, 64))
    for scale in (1e5, 6e4):
        try:
            msg = encode(c, x / x.abs().max() * scale)
        except ValueError:
            continue
        return msg, c.decode(msg)
    raise AssertionError(f"{c.name} encodes neither 1e5 nor 6e4")


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("code", [F16, BF16], ids=["fp16", "bf16"])
def test_dtype_byte_changed_raises_instead_of_inf(name, code):
    c = raw(name)
    msg, ref = large_message(c)
    target = wire.DTYPES[code]
    tampered = with_dtype(msg, code)
    if not bool(torch.isfinite(ref.to(target)).all()):
        with pytest.raises(ValueError):
            c.decode(tampered)
    else:  # the values fit the new dtype: they decode, finite
        out = value_error_or_finite(c, tampered)
        assert out is None or out.dtype == target


def test_bf16_rounding_past_its_max_raises():
    """3.4e38 is a finite fp32 that rounds to inf in bf16 (max 3.3895e38)."""
    c = raw("none")
    msg = encode(c, torch.full((8,), 3.4e38))
    assert bool(torch.isfinite(c.decode(msg)).all())
    with pytest.raises(ValueError, match="non-finite"):
        c.decode(with_dtype(msg, BF16))


@pytest.mark.parametrize("name", NAMES)
def test_any_field_set_to_huge_or_non_finite_never_decodes_to_inf(name):
    """Every f32 slot near the start of the payload (scales, norms, lo/step, mu, the first
    values) and at its end (the last values), set to +-3e38, +-inf or NaN, under the
    message's dtype and under fp16: a ValueError or a finite tensor."""
    c = raw(name)
    msg = encode(c, sample((32, 32)))
    start = wire.header_size(2)
    offsets = [*range(start, min(start + 40, len(msg) - 3)), *range(len(msg) - 8, len(msg) - 3)]
    for base in (msg, with_dtype(msg, F16)):
        for off in sorted(set(offsets)):
            for v in HUGE_F32:
                value_error_or_finite(c, with_f32(base, off, v))


def _sign_scale(msg, h):
    return [h]


def _quant_lo_step(msg, h):  # bits u8 | bucket u32 | lo f32[nb] | step f32[nb]
    nb = _buckets(msg, struct.unpack_from("<I", msg, h + 1)[0])
    return [h + 5, h + 5 + 4 * nb]


def _qsgd_norm(msg, h):  # coding u8 | levels u8 | bucket u32 | norms f32[nb]
    return [h + 6]


def _terngrad_max(msg, h):  # bucket u32 | scale f32[nb]
    return [h + 4]


def _stc_mean(msg, h):  # k u32 | b u8 | mu f32
    return [h + 5]


def _sketch_table(msg, h):  # rows u8 | cols u32 | seed u64 | table f32[rows*cols]
    assert msg[h] > 0, "expected a sketch, not a dense message"
    return range(h + 13, len(msg), 4)  # all of it: the median shrugs off a few entries


def _buckets(msg, bucket_size):
    n = math.prod(struct.unpack_from("<2I", msg, 6))
    return 1 if bucket_size == 0 else -(-n // min(bucket_size, n))


SCALE_FIELDS = {
    "sign": _sign_scale,
    "quant": _quant_lo_step,
    "quant1": _quant_lo_step,
    "qsgd": _qsgd_norm,
    "qsgd_elias": _qsgd_norm,
    "terngrad": _terngrad_max,
    "stc": _stc_mean,
    "sketch": _sketch_table,
}


@pytest.mark.parametrize("name", sorted(SCALE_FIELDS))
@pytest.mark.parametrize("value", [3e38, math.inf, math.nan], ids=["3e38", "inf", "nan"])
def test_named_scale_fields_huge_raise(name, value):
    """The issue's cases: a scale of 3e38 overflows fp16 output (or, for sign, the
    decoder's own 2s - s); inf and NaN are corrupt whatever the dtype."""
    c = raw(name)
    msg = encode(c, sample((32, 32)))
    h = wire.header_size(2)
    offsets = list(SCALE_FIELDS[name](msg, h))
    if name == "sketch":  # one message with every table entry set
        offsets = [offsets]
    for off in offsets:
        bad = msg
        for o in off if isinstance(off, list) else [off]:
            bad = with_f32(bad, o, value)
        if value == 3e38 and name != "sign":
            bad = with_dtype(bad, F16)
        with pytest.raises(ValueError):
            c.decode(bad)


def test_sketch_server_refuses_sketches_whose_sum_overflows():
    c = raw("sketch")
    msg = encode(c, sample((32, 32)))
    h = wire.header_size(2)
    table = np.full((len(msg) - h - 13) // 4, 3e38, dtype="<f4").tobytes()
    bad = msg[: h + 13] + table
    state = c.init_server_state((32, 32))
    before = state.e.clone()
    with pytest.raises(ValueError, match="overflows"):
        c.aggregate([bad, bad], torch.ones(2), state)
    torch.testing.assert_close(state.e, before, rtol=0, atol=0)  # untouched


LOWRANK = [n for n in NAMES if n.startswith("powersgd") or n == "svd"]


@pytest.mark.parametrize("name", LOWRANK)
def test_lowrank_factors_of_1e20_raise(name):
    """P and Q entries of 1e20 are finite fp32, their product (1e40) is not."""
    c = raw(name)
    msg = encode(c, sample((64, 64)))
    h = wire.header_size(2)
    assert msg[h] == 1, "expected factors, not a dense message"
    r = struct.unpack_from("<I", msg, h + 2)[0]
    vals = np.full((64 + 64) * r, 1e20, dtype="<f4").tobytes()
    bad = msg[: h + 6] + vals
    assert len(bad) == len(msg)
    with pytest.raises(ValueError, match="non-finite"):
        c.decode(bad)


# -- item 6: allocations capped, in bytes, before allocating -----------------------------


@pytest.fixture
def cap_16mib(monkeypatch):
    monkeypatch.setattr(wire, "MAX_DECODE_BYTES", 16 * 2**20)
    return 16 * 2**20


@pytest.mark.parametrize("name", NAMES)
def test_output_at_the_cap_is_refused_and_small_ones_decode(name, monkeypatch):
    """An fp64 output of exactly the cap (1 MiB) leaves no room for any temporaries:
    refused, naming the cap. One of 4 KiB decodes exactly as under the default cap."""
    c = raw(name)
    big = encode(c, sample((2**17,)).double())  # 1 MiB as fp64
    big32 = encode(c, sample((2**18,)))  # 1 MiB as fp32
    small = encode(c, sample((2**9,)).double())  # 4 KiB
    want = c.decode(small)
    monkeypatch.setattr(wire, "MAX_DECODE_BYTES", 2**20)
    for msg in (big, big32):
        with pytest.raises(ValueError, match="decode cap"):
            c.decode(msg)
    torch.testing.assert_close(c.decode(small), want, rtol=0, atol=0)


def test_dense_half_mib_decodes_under_a_1mib_cap(monkeypatch):
    """none: 0.5 MiB of fp32 output plus the 0.5 MiB of wire values fits 1 MiB exactly."""
    c = raw("none")
    x = sample((2**17,))
    msg = encode(c, x)
    monkeypatch.setattr(wire, "MAX_DECODE_BYTES", 2**20)
    torch.testing.assert_close(c.decode(msg), x, rtol=0, atol=0)
    with pytest.raises(ValueError, match="decode cap"):
        c.decode(encode(c, sample((2**17 + 1,))))


def header(codec: int, dtype_code: int, shape: tuple[int, ...]) -> bytes:
    return struct.pack("<2sBBBB", b"FB", 1, codec, dtype_code, len(shape)) + struct.pack(
        f"<{len(shape)}I", *shape
    )


def _codec_id(name: str) -> int:
    return raw(name).codec_id


# Tiny messages whose headers claim 2^21 fp64 values: 16 MiB of output, exactly the cap
# of the fixture, so only the temporaries push them over. Each is otherwise valid.
N_FORGED = 2**21


def _forged_sparse(name):  # flags 0 | k 1 | index32 tag, position 0 | one f32 value
    body = struct.pack("<BIBIf", 0, 1, 0, 0, 1.0)
    return header(_codec_id(name), F64, (N_FORGED,)) + body


def _forged_stc(name):  # k 1 | b 0 | mu 1 | sign byte | no remainders | unary "1": pos 0
    body = struct.pack("<IBf", 1, 0, 1.0) + bytes([0, 1])
    return header(_codec_id(name), F64, (N_FORGED,)) + body


def _forged_sketch(name):  # 1 x 16 sketch of 2^21 values: 87 bytes
    table = np.zeros(16, dtype="<f4").tobytes()
    return header(_codec_id(name), F64, (N_FORGED,)) + struct.pack("<BIQ", 1, 16, 0) + table


def _forged_powersgd(name):  # rank-1 fp16 factors of a 1024 x 2048 matrix: 6 KB
    factors = np.zeros(1024 + 2048, dtype="<f2").tobytes()
    return (
        header(_codec_id(name), F64, (1024, 2048)) + bytes([1, 1]) + struct.pack("<I", 1) + factors
    )


FORGED = {
    "topk": _forged_sparse,
    "randk": _forged_sparse,
    "dgc": _forged_sparse,
    "stc": _forged_stc,
    "sketch": _forged_sketch,
    "powersgd": _forged_powersgd,
}


@pytest.mark.parametrize("name", sorted(FORGED))
def test_tiny_message_claiming_a_huge_tensor_is_refused_before_allocating(name, cap_16mib):
    msg = FORGED[name](name)
    assert len(msg) < 8192
    c = raw(name)
    # the header alone passes: the output is exactly the cap
    assert wire.Reader(msg).header(c.codec_id).nbytes == cap_16mib
    with pytest.raises(ValueError, match="decode cap"):
        c.decode(msg)
    # otherwise valid: with room for the temporaries it decodes (one value set, or none)
    wire.MAX_DECODE_BYTES = 8 * cap_16mib  # restored by the fixture's monkeypatch
    out = c.decode(msg)
    assert out.dtype == torch.float64 and int(torch.count_nonzero(out)) <= 1


def test_powersgd_estimate_counts_the_product_and_its_cast():
    # 1024 x 2048 fp64 output (16 MiB) from an fp32 product (8 MiB), the factors besides
    assert factors_decode_bytes(1024, 2048, 1, 2, torch.float64) > 24 * 2**20


def test_quant1_message_needs_more_than_its_output(cap_16mib, monkeypatch):
    """quant1 of 2^21 values is a 256 KB message; unpacked codes, fp32 values and the fp64
    cast need ~28 MiB: refused under a 16 MiB cap, decoded under 32 MiB."""
    c = raw("quant1")
    msg = with_dtype(encode(c, sample((N_FORGED,))), F64)
    assert len(msg) < 300_000
    with pytest.raises(ValueError, match="decode cap"):
        c.decode(msg)
    monkeypatch.setattr(wire, "MAX_DECODE_BYTES", 32 * 2**20)
    assert c.decode(msg).dtype == torch.float64


def test_sketch_encoder_refuses_what_decoders_would(cap_16mib):
    c = build("sketch", rows=5)
    with pytest.raises(ValueError, match="cap"):
        c.encode(sample((2**20,)))


@pytest.mark.parametrize(
    "env, want",
    [
        ({}, 2**30),
        ({"FEDBENCH_MAX_DECODE_BYTES": "1048576"}, 2**20),
        ({"FEDBENCH_MAX_DECODE_NUMEL": str(2**28)}, 2**32),  # the older knob still raises it
        ({"FEDBENCH_MAX_DECODE_BYTES": str(2**34), "FEDBENCH_MAX_DECODE_NUMEL": "10"}, 2**34),
    ],
)
def test_decode_cap_from_the_environment(env, want, monkeypatch):
    monkeypatch.delenv("FEDBENCH_MAX_DECODE_BYTES", raising=False)
    monkeypatch.delenv("FEDBENCH_MAX_DECODE_NUMEL", raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    assert wire._decode_cap_from_env() == want


@pytest.mark.parametrize("bad", ["1GiB", "0", "-5"])
def test_decode_cap_environment_must_be_a_positive_integer(bad, monkeypatch):
    monkeypatch.setenv("FEDBENCH_MAX_DECODE_BYTES", bad)
    with pytest.raises(ValueError, match="FEDBENCH_MAX_DECODE_BYTES"):
        wire._decode_cap_from_env()


ZERO_SIZE_HUGE = [(0, 2**32 - 1), (2**31, 0), (0, 2**31), (2**16, 0, 2**16, 2**16)]


@pytest.mark.parametrize("name", NAMES)
def test_zero_size_shape_with_huge_dims_raises_value_error(name):
    c = raw(name)
    for shape in ZERO_SIZE_HUGE:
        zero = encode(c, torch.zeros([0 if s == 0 else 1 for s in shape]))
        with pytest.raises(ValueError, match="claims"):
            c.decode(with_shape(zero, shape))
    # small other dimensions: the empty tensor, or a ValueError, never a RuntimeError
    out = value_error_or_finite(c, with_shape(encode(c, torch.zeros(0, 3)), (0, 2**20)))
    assert out is None or tuple(out.shape) == (0, 2**20)


@pytest.mark.parametrize("name", NAMES)
def test_encoding_a_zero_size_tensor_with_a_dim_past_u32_raises_value_error(name):
    c = raw(name)
    x = torch.zeros((0, 2**33))
    with pytest.raises(ValueError, match="dimension"):
        c.encode(x, torch.Generator().manual_seed(0), c.init_state(tuple(x.shape)))


@pytest.mark.parametrize("name", NAMES)
@FUZZ
@given(data=st.data())
def test_fuzz_dtype_scale_and_zero_size_tampering(name, data):
    """Random dtype bytes, f32 slots overwritten with huge or non-finite values, and
    zero-size shapes: a ValueError or a finite tensor, nothing else."""
    c = raw(name)
    shape = data.draw(st.sampled_from([(13,), (16, 16), (3, 5, 7)]))
    x = sample(shape) * data.draw(st.sampled_from([1.0, 1e4, 6e4]))
    try:
        msg = encode(c, x)
    except ValueError:  # fp16 on the wire cannot carry 6e4 * randn
        msg = encode(c, sample(shape))
    ndim = len(shape)
    bad = bytearray(msg)
    if data.draw(st.booleans()):
        bad[4] = data.draw(st.integers(0, len(wire.DTYPES) - 1))
    for _ in range(data.draw(st.integers(0, 3))):
        off = data.draw(
            st.integers(wire.header_size(ndim), max(wire.header_size(ndim), len(msg) - 4))
        )
        v = data.draw(st.sampled_from([*HUGE_F32, 1e20, 7e4, -1e30]))
        bad[off : off + 4] = struct.pack("<f", v)[: len(bad) - off]
    if data.draw(st.booleans()):  # a zero-size shape, the other dims anything
        dims = data.draw(st.lists(st.integers(0, 2**32 - 1), min_size=ndim, max_size=ndim))
        dims[data.draw(st.integers(0, ndim - 1))] = 0
        bad[6 : wire.header_size(ndim)] = struct.pack(f"<{ndim}I", *dims)
    value_error_or_finite(c, bytes(bad))


# -- item 8: _target_ builds only Compressor subclasses --------------------------------


@pytest.fixture
def trap_module(tmp_path, monkeypatch):
    """A module whose function and class would write a file if they were ever called."""
    flag = tmp_path / "ran"
    (tmp_path / "fb_trap.py").write_text(
        "from pathlib import Path\n"
        f"FLAG = Path({str(flag)!r})\n"
        "def run(command=None):\n"
        "    FLAG.write_text(str(command))\n"
        "class NotACodec:\n"
        "    def __init__(self, command=None):\n"
        "        FLAG.write_text(str(command))\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    return flag


@pytest.mark.parametrize("target", ["fb_trap.run", "fb_trap.NotACodec"])
def test_from_config_refuses_a_target_that_is_not_a_compressor(target, trap_module):
    with pytest.raises(ValueError, match=r"must name a fedbench\.compress\.Compressor subclass"):
        from_config({"_target_": target, "command": "echo hi"})
    assert not trap_module.exists(), "the target was called"


@pytest.mark.parametrize("target", ["os.system", "builtins.print", "collections.OrderedDict"])
def test_from_config_refuses_builtins_and_other_classes(target, capsys):
    with pytest.raises(ValueError, match=r"compressor\._target_=.*must name a fedbench"):
        from_config({"_target_": target, "command": "echo hi"})
    assert capsys.readouterr().out == ""


def test_from_config_still_builds_a_compressor():
    c = from_config({"_target_": "fedbench.compress.dense.Dense"})
    x = sample((5,))
    torch.testing.assert_close(c.decode(c.encode(x)), x, rtol=0, atol=0)
