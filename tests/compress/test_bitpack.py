"""The one bit packer (fedbench/compress/bitpack.py): layout, round trip, widths."""

import numpy as np
import pytest
import torch

from fedbench.compress.bitpack import (
    PACK_BITS,
    pack_codes,
    packed_size,
    unpack_codes,
    unpack_mask,
)


def reference_pack(row: list[int], bits: int) -> bytes:
    """The layout worked out by hand: code j at bits [j*bits, (j+1)*bits), LSB first."""
    word = sum(int(c) << (bits * j) for j, c in enumerate(row))
    return word.to_bytes(packed_size(len(row), bits), "little")


@pytest.mark.parametrize("bits", PACK_BITS)
@pytest.mark.parametrize("n", [0, 1, 7, 8, 9, 13, 1001])
def test_pack_matches_the_reference_layout_and_inverts(bits, n):
    codes = torch.randint(0, 2**bits, (3, n), generator=torch.Generator().manual_seed(n))
    packed = pack_codes(codes, bits)
    assert packed.dtype == np.uint8 and packed.shape == (3, packed_size(n, bits))
    for i in range(3):
        assert packed[i].tobytes() == reference_pack(codes[i].tolist(), bits)
    torch.testing.assert_close(unpack_codes(packed, bits, n).long(), codes, rtol=0, atol=0)


def test_pack_layout_examples():
    # three-bit codes 1..7,0: bit stream 100 010 110 001 101 011 111 000 (LSB of each first)
    packed = pack_codes(torch.tensor([[1, 2, 3, 4, 5, 6, 7, 0]]), 3)
    word = sum(c << (3 * i) for i, c in enumerate([1, 2, 3, 4, 5, 6, 7, 0]))
    assert packed[0].tobytes() == word.to_bytes(3, "little")
    assert pack_codes(torch.tensor([[0x1234, 0xFFFF]]), 16)[0].tobytes() == bytes(
        [0x34, 0x12, 0xFF, 0xFF]
    )
    assert pack_codes(torch.tensor([[1, 0, 1, 1, 0, 0, 0, 0, 1]]), 1)[0].tobytes() == bytes(
        [0b1101, 1]
    )


def test_bool_masks_pack_as_one_bit_codes():
    mask = torch.rand(2, 77, generator=torch.Generator().manual_seed(0)) < 0.5
    packed = pack_codes(mask, 1)
    np.testing.assert_array_equal(packed, pack_codes(mask.to(torch.uint8), 1))
    torch.testing.assert_close(unpack_mask(packed, 77), mask, rtol=0, atol=0)


@pytest.mark.parametrize("bits", [0, 9, 15, 32])
def test_unsupported_widths_raise(bits):
    with pytest.raises(ValueError, match="bits must be one of"):
        pack_codes(torch.zeros(1, 8, dtype=torch.int64), bits)
    with pytest.raises(ValueError, match="bits must be one of"):
        unpack_codes(np.zeros((1, 8), dtype=np.uint8), bits, 8)


def test_packed_size():
    assert [packed_size(n, 3) for n in (0, 1, 8, 9)] == [0, 1, 3, 4]
    assert packed_size(5, 16) == 10
