import numpy as np
import pytest

from fedbench.compress.elias import MAX_Z, gamma_bits, gamma_decode, gamma_encode


def round_trip(values):
    pb, prefix, mb, mantissa = gamma_encode(np.asarray(values))
    return gamma_decode(
        len(values), pb, np.frombuffer(prefix, np.uint8), mb, np.frombuffer(mantissa, np.uint8)
    )


def test_code_lengths_are_elias_gamma():
    # gamma(1)=1, gamma(2)=010, gamma(3)=011, gamma(4)=00100, gamma(5)=00101
    assert gamma_bits(np.array([1, 2, 3, 4, 5])) == 1 + 3 + 3 + 5 + 5
    pb, prefix, mb, mantissa = gamma_encode(np.array([5]))
    assert (pb, prefix, mb, mantissa) == (3, bytes([0b100]), 2, bytes([0b01]))


@pytest.mark.parametrize("n", [0, 1, 2, 9, 1000])
def test_round_trip(n):
    rng = np.random.default_rng(n)
    values = np.concatenate([rng.geometric(0.4, n), [1, 2**31 - 1, 2**MAX_Z]])[: max(n, 0) + 3]
    np.testing.assert_array_equal(round_trip(values), values)


def test_empty():
    assert gamma_encode(np.zeros(0, np.int64)) == (0, b"", 0, b"")
    assert round_trip(np.zeros(0, np.int64)).shape == (0,)


@pytest.mark.parametrize("bad", [0, -3, 2 ** (MAX_Z + 1)])
def test_out_of_range_values_raise(bad):
    with pytest.raises(ValueError):
        gamma_encode(np.array([1, bad]))


def test_streams_that_disagree_raise():
    pb, prefix, mb, mantissa = gamma_encode(np.array([1, 6, 3]))
    p, m = np.frombuffer(prefix, np.uint8), np.frombuffer(mantissa, np.uint8)
    for args in [
        (4, pb, p, mb, m),  # one value more than coded
        (3, pb, p, mb + 1, m),  # mantissa longer than the prefixes say
        (3, pb + 8, p, mb, m),  # stream shorter than its count
        (3, pb, np.zeros_like(p), mb, m),  # no terminating ones
    ]:
        with pytest.raises(ValueError):
            gamma_decode(*args)
    long_prefix = np.zeros(5, np.uint8)
    long_prefix[-1] = 0x80  # one code with 39 leading zeros
    with pytest.raises(ValueError, match="longer"):
        gamma_decode(1, 40, long_prefix, 39, np.zeros(5, np.uint8))
