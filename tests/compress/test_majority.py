"""signSGD with majority vote (Bernstein et al. 2019): the scaled-sign uplink message, the
server's vote worked out by hand, and a step the 1-bit broadcast carries exactly."""

from __future__ import annotations

import math

import pytest
import torch

from fedbench.compress import build, wire
from fedbench.compress.majority import MajorityVote, MajorityVoteAggregator, short_mantissa
from fedbench.compress.sign import Sign


def test_message_is_the_scaled_sign_one_bit_a_value():
    x = torch.randn(3, 1001, generator=torch.Generator().manual_seed(0))
    c = build("majority_vote")
    msgs, decoded = c.compress_batch(x)
    head = wire.header_size(1)
    assert all(len(m) == head + 4 + math.ceil(1001 / 8) for m in msgs)
    sign_msgs, sign_decoded = Sign().compress_batch(x)
    assert [m[head:] for m in msgs] == [m[head:] for m in sign_msgs]  # same payload
    torch.testing.assert_close(decoded, sign_decoded, rtol=0, atol=0)
    torch.testing.assert_close(c.decode_batch(msgs), decoded, rtol=0, atol=0)


def _agg(weighted=False, step_size=None, shape=(4,)):
    return MajorityVoteAggregator([torch.zeros(shape)], weighted=weighted, step_size=step_size)


# three clients, scales 1, 2, 4; client 0 disagrees with clients 1 and 2 on coords 0, 1
PAYLOAD = torch.tensor([[1.0, 1.0, -1.0, 1.0], [-2.0, -2.0, -2.0, 2.0], [-4.0, -4.0, -4.0, 4.0]])
WEIGHTS = torch.tensor([100.0, 1.0, 1.0])


def test_unweighted_vote_by_hand():
    agg = _agg()
    agg.add(0, PAYLOAD, WEIGHTS, None)
    step = agg.result(102.0)[0]
    s = float(short_mantissa(torch.tensor(7 / 3)))  # the voters' mean scale
    torch.testing.assert_close(step, torch.tensor([-s, -s, -s, s]))
    assert abs(s - 7 / 3) < 7 / 3 * 2**-8


def test_weighted_vote_by_hand():
    agg = _agg(weighted=True)
    agg.add(0, PAYLOAD, WEIGHTS, None)
    step = agg.result(102.0)[0]
    s = float(short_mantissa(torch.tensor((100 * 1 + 2 + 4) / 102)))
    torch.testing.assert_close(step, torch.tensor([s, s, -s, s]))


def test_dropped_and_zero_clients_do_not_vote_and_ties_go_positive():
    agg = _agg(step_size=0.5)
    payload = torch.tensor([[1.0, -1.0, 1.0, 1.0], [-3.0, -3.0, -3.0, 3.0], [0.0, 0, 0, 0]])
    # client 1 is dropped (weight 0), client 2 sent an all-zero update (scale 0)
    agg.add(0, payload[:2], torch.tensor([1.0, 0.0]), None)
    agg.add(0, payload[2:], torch.tensor([1.0]), None)
    torch.testing.assert_close(agg.result(2.0)[0], torch.tensor([0.5, -0.5, 0.5, 0.5]))
    agg.add(0, torch.tensor([[1.0, -1, 1, -1], [-1.0, 1, 1, -1]]), torch.ones(2), None)
    # votes 0, 0, 2, -2: a tie steps + (one bit has no room for 0)
    torch.testing.assert_close(agg.result(2.0)[0], torch.tensor([0.5, 0.5, 0.5, -0.5]))


def test_result_clears_the_round_and_no_voter_gives_no_step():
    agg = _agg()
    agg.add(0, PAYLOAD, WEIGHTS, None)
    agg.result(102.0)
    agg.add(0, PAYLOAD, torch.zeros(3), None)  # everyone dropped
    torch.testing.assert_close(agg.result(0.0)[0], torch.zeros(4))


@pytest.mark.parametrize("d", [13, 4096, 70_001])
@pytest.mark.parametrize("scale", [0.1, 1.234567e-3, 3.3e-5])
def test_the_sign_codec_carries_the_servers_step_bit_for_bit(d, scale):
    """What downlink=sign sends of the step: the same vector, exactly. (A full-precision
    fp32 magnitude would come back a few ulps off: the codec's mean of d equal values.)"""
    gen = torch.Generator().manual_seed(d)
    agg = _agg(step_size=scale, shape=(d,))
    agg.add(0, torch.randn(5, d, generator=gen), torch.ones(5), None)
    step = agg.result(5.0)[0]
    assert step.abs().unique().numel() == 1
    out = Sign().decode(Sign().encode(step))
    torch.testing.assert_close(out, step, rtol=0, atol=0)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"weighted": 1}, "weighted"),
        ({"step_size": 0}, "step_size"),
        ({"step_size": True}, "step_size"),
    ],
)
def test_bad_knobs_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MajorityVote(**kwargs)


def test_server_aggregator_follows_the_knobs():
    agg = MajorityVote(weighted=True, step_size=0.25).server_aggregator([torch.zeros(3)], 5)
    assert isinstance(agg, MajorityVoteAggregator)
    assert agg.weighted and agg.step_size == 0.25 and agg.decodes
