import math
import struct

import numpy as np
import pytest
import torch

from fedbench.compress import wire


def test_header_round_trip():
    for dtype in wire.DTYPES:
        for shape in [(), (0,), (7,), (2, 3, 4)]:
            msg = wire.write_header(9, dtype, shape)
            assert len(msg) == wire.header_size(len(shape))
            h = wire.Reader(msg).header(9)
            assert (h.codec, h.dtype, h.shape, h.numel) == (9, dtype, shape, math.prod(shape))


def test_write_header_rejects_what_it_cannot_describe():
    with pytest.raises(ValueError, match="dimensions"):
        wire.write_header(1, torch.float32, (1,) * 9)
    with pytest.raises(ValueError, match="values"):
        wire.write_header(1, torch.float32, (2**16, 2**16))
    with pytest.raises(ValueError, match="dtype"):
        wire.write_header(1, torch.int32, (3,))


@pytest.mark.parametrize(
    "msg, match",
    [
        (b"FB", "truncated"),
        (b"XY\x01\x01\x00\x00", "magic"),
        (b"FB\x02\x01\x00\x00", "version"),
        (b"FB\x01\x02\x00\x00", "codec"),
        (b"FB\x01\x01\x09\x00", "dtype"),
        (b"FB\x01\x01\x00\x09", "ndim"),
        (b"FB\x01\x01\x00\x02\x01\x00\x00\x00", "truncated"),
        (b"FB\x01\x01\x00\x02" + struct.pack("<2I", 2**20, 2**20), "claims"),
    ],
)
def test_reader_header_rejects_bad_headers(msg, match):
    with pytest.raises(ValueError, match=match):
        wire.Reader(msg).header(1)


def test_reader_bounds():
    r = wire.Reader(b"\x01\x02\x03\x04\x05")
    assert r.u8("a") == 1 and r.remaining == 4
    with pytest.raises(ValueError, match="truncated"):
        r.u64("b")
    with pytest.raises(ValueError, match="truncated"):
        r.take(-1, "c")
    with pytest.raises(ValueError, match="negative"):
        r.array("u1", -1, "d")
    with pytest.raises(ValueError, match="truncated"):
        r.array("f4", 2**40, "e")
    np.testing.assert_array_equal(r.array("u1", 2, "f"), [2, 3])
    with pytest.raises(ValueError, match="trailing"):
        r.expect_end()
    r.take(2, "g")
    r.expect_end()
    with pytest.raises(ValueError, match="bytes"):
        wire.Reader("not bytes")  # type: ignore[arg-type]


def test_reader_f32_rejects_non_finite():
    with pytest.raises(ValueError, match="nan"):
        wire.Reader(struct.pack("<f", float("nan"))).f32("scale")
    assert math.isinf(wire.Reader(struct.pack("<f", float("inf"))).f32("s", finite=False))


def test_tensor_bytes():
    assert wire.tensor_bytes(torch.tensor([1.0], dtype=torch.bfloat16)) == b"\x80\x3f"
