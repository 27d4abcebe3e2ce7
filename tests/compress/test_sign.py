import math
import struct

import pytest
import torch

from fedbench.compress import ErrorFeedback, build, wire
from fedbench.compress.sign import Sign


def test_hand_worked_message():
    x = torch.tensor([1.0, -2.0, 3.0, -4.0, 0.0])
    msg = Sign().encode(x)
    header = wire.write_header(7, torch.float32, (5,))
    assert msg == header + struct.pack("<f", 2.0) + bytes([0b10101])
    torch.testing.assert_close(Sign().decode(msg), torch.tensor([2.0, -2.0, 2.0, -2.0, 2.0]))


def test_scale_is_mean_magnitude_and_signs_survive():
    x = torch.randn(3, 1001, generator=torch.Generator().manual_seed(0))
    _, out = Sign().compress_batch(x)
    torch.testing.assert_close(out.abs(), x.abs().mean(-1, keepdim=True).expand(3, 1001))
    assert bool((torch.sign(out) == torch.sign(x)).all())
    assert Sign.biased and not Sign.randomised


@pytest.mark.parametrize("shape", [(), (0,), (7,), (13,), (3, 5, 7)], ids=str)
def test_length_is_header_plus_documented_payload(shape):
    d = math.prod(shape)
    assert Sign().payload_bytes(d) == 4 + math.ceil(d / 8)
    assert len(Sign().encode(torch.randn(shape))) == wire.header_size(len(shape)) + 4 + (d + 7) // 8


def test_error_feedback_sends_what_the_signs_drop():
    """With EF, the running mean of what is sent converges to x (Karimireddy et al. 2019)."""
    x = torch.randn(200, generator=torch.Generator().manual_seed(0))
    ef = ErrorFeedback(Sign())
    state = ef.init_state((200,))
    sent = torch.zeros(200)
    rounds = 200
    for _ in range(rounds):
        sent += ef.compress(x, None, state)[1]
    # sum(sent) = rounds * x - residual
    torch.testing.assert_close(sent, rounds * x - state.residual, atol=1e-3, rtol=1e-4)
    plain = Sign().decode(Sign().encode(x))
    ef_error = float((sent / rounds - x).abs().mean())
    assert ef_error < 0.05 * float((plain - x).abs().mean())


def test_yaml_builds_the_codec():
    assert isinstance(build("sign"), Sign)
    assert isinstance(build("sign", error_feedback=True), ErrorFeedback)


def test_negative_scale_is_corrupt():
    msg = bytearray(Sign().encode(torch.randn(9)))
    msg[wire.header_size(1) : wire.header_size(1) + 4] = struct.pack("<f", -1.0)
    with pytest.raises(ValueError, match="negative"):
        Sign().decode(bytes(msg))
