"""EF21 (Richtárik et al. 2021) around any codec: the client sends C(x - g) and moves g by
what it sent; the server keeps sum_i w_i g_i without a copy per client (EF21-PP)."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from fedbench.compress import ErrorFeedback, build
from fedbench.compress.ef21 import EF21, EF21Mean, EF21State


def topk(ratio: float = 0.01):
    return build("topk", ratio=ratio, error_feedback=False)


def _x(shape, seed):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def test_identity_inner_sends_the_change_of_the_estimate():
    c = EF21(build("none"))
    st = c.init_state((5,))
    x1, x2 = _x(5, 1), _x(5, 2)
    _, d1 = c.compress(x1, None, st)
    torch.testing.assert_close(d1, x1)  # g starts at 0: the first message is x itself
    torch.testing.assert_close(st.g, x1)
    _, d2 = c.compress(x2, None, st)
    torch.testing.assert_close(d2, x2 - x1)  # then only the change
    torch.testing.assert_close(st.g, x2)


def test_estimate_is_the_sum_of_decoded_messages_and_converges_to_a_fixed_update():
    """g_i == sum of D(c_i) (what the server can rebuild), and with x fixed EF21's
    contractive compressor drives g_i to x (EF21 Lemma: ||x - g|| shrinks each call)."""
    c = EF21(topk(0.1))
    st = c.init_state((200,))
    x = _x(200, 0)
    rebuilt = torch.zeros(200)
    errors = []
    for _ in range(30):
        msg, decoded = c.compress(x, None, st)
        rebuilt += c.decode(msg)
        torch.testing.assert_close(decoded, c.decode(msg), rtol=0, atol=0)
        errors.append(float((x - st.g).norm()))
    torch.testing.assert_close(st.g, rebuilt)
    assert all(b <= a + 1e-6 for a, b in itertools.pairwise(errors))
    assert errors[-1] < 1e-3 * float(x.norm())


def test_wire_format_is_the_inner_codecs():
    inner = topk(0.1)
    c = EF21(inner)
    x = _x((3, 40), 3)
    assert c.encode(x, None, c.init_state((3, 40))) == inner.encode(x)  # g = 0
    assert (c.codec_id, c.family, c.biased) == (inner.codec_id, inner.family, inner.biased)
    assert c.name == "ef21-topk"


def test_batch_agrees_with_single_and_updates_every_state():
    c = EF21(topk(0.2))
    x = torch.stack([_x(50, i) for i in range(3)])
    sts = [c.init_state((50,)) for _ in range(3)]
    msgs, decoded = c.compress_batch(x, None, sts)
    for i in range(3):
        one = c.init_state((50,))
        msg, d = c.compress(x[i], None, one)
        assert msg == msgs[i]
        torch.testing.assert_close(one.g, sts[i].g, rtol=0, atol=0)
        torch.testing.assert_close(d, decoded[i], rtol=0, atol=0)


def test_inner_config_mapping_builds_the_inner_codec():
    c = EF21({"_target_": "fedbench.compress.sparse.TopK", "ratio": 0.1, "error_feedback": False})
    assert c.inner.name == "topk" and c.inner.ratio == 0.1


@pytest.mark.parametrize(
    "inner, match",
    [
        (lambda: ErrorFeedback(topk()), "already applied"),
        (lambda: EF21(topk()), "already applied"),
        (lambda: build("dgc", error_feedback=False), "own residual"),
        (lambda: build("sketch", error_feedback=False), "own residual|merges"),
        (lambda: build("majority_vote"), "aggregates on the server"),
        (lambda: {"_target_": "fedbench.compress.sparse.TopK", "error_feedback": True}, "EF21"),
        (lambda: 3, "Compressor"),
    ],
)
def test_combinations_that_cannot_work_are_refused(inner, match):
    with pytest.raises(ValueError, match=match):
        EF21(inner())


def test_missing_state_is_refused():
    with pytest.raises(ValueError, match="state per client"):
        EF21(topk()).compress(_x(10, 0))


def test_server_sum_by_hand():
    """Weights 1 and 3; identity messages. The step is S / (weight of clients seen)."""
    agg = EF21Mean([torch.zeros(1)], num_clients=3)
    agg.add(0, torch.tensor([[2.0]]), torch.tensor([1.0]), np.array([0]))
    torch.testing.assert_close(agg.result(1.0)[0], torch.tensor([2.0]))  # 2*1 / 1
    agg.add(0, torch.tensor([[4.0]]), torch.tensor([3.0]), np.array([1]))
    torch.testing.assert_close(agg.result(3.0)[0], torch.tensor([3.5]))  # (2 + 12) / 4
    # client 0 dropped (weight 0): its message is not applied, its weight unchanged;
    # client 1 sends a correction of -4: g_1 = 0
    agg.add(0, torch.tensor([[100.0], [-4.0]]), torch.tensor([0.0, 3.0]), np.array([0, 1]))
    torch.testing.assert_close(agg.result(3.0)[0], torch.tensor([0.5]))  # (2 + 0) / 4
    assert agg.weight.tolist() == [1.0, 3.0, 0.0]  # client 2 never seen: not counted


def test_server_refuses_a_changed_weight_and_unknown_clients():
    agg = EF21Mean([torch.zeros(2)], num_clients=2)
    agg.add(0, torch.ones(1, 2), torch.tensor([5.0]), np.array([1]))
    with pytest.raises(ValueError, match="weight changed"):
        agg.add(0, torch.ones(1, 2), torch.tensor([6.0]), np.array([1]))
    with pytest.raises(ValueError, match="client id"):
        agg.add(0, torch.ones(1, 2), torch.tensor([1.0]), np.array([2]))


def test_server_holds_the_weighted_sum_of_client_estimates_under_partial_participation():
    """The invariant S == sum_i w_i g_i, with clients sampled and one dropped (its state
    restored, weight 0), round after round, for a biased codec."""
    c = EF21(topk(0.1))
    n, shape = 6, (4, 25)
    weights = torch.tensor([10.0, 20, 30, 40, 50, 60])
    states = [c.init_state(shape) for _ in range(n)]
    agg = c.server_aggregator([torch.zeros(shape)], n)
    gen = torch.Generator().manual_seed(0)
    for r in range(8):
        ids = np.sort(torch.randperm(n, generator=gen)[:3].numpy())
        x = torch.stack([_x(shape, 100 * r + int(i)) for i in ids])
        sts = [states[i] for i in ids]
        before = EF21State(g=sts[0].g.clone(), inner=sts[0].inner)
        msgs, _ = c.compress_batch(x, None, sts)
        w = weights[ids].clone()
        if r % 3 == 0:  # the first sampled client misses the deadline
            states[ids[0]].g = before.g
            w[0] = 0
        agg.add(0, c.decode_batch(msgs), w, ids)
        step = agg.result(float(w.sum()))[0]
        seen = agg.weight > 0
        expect = sum(float(weights[i]) * states[i].g.double() for i in range(n))
        torch.testing.assert_close(agg.sums[0], expect)
        torch.testing.assert_close(step, (expect / weights.double()[seen].sum()).float())


def test_error_feedback_ef21_key_wraps_any_codec() -> None:
    from fedbench.compress import build
    from fedbench.compress.ef21 import EF21

    c = build("topk10", error_feedback="ef21")
    assert isinstance(c, EF21) and c.inner.ratio == 0.1
    with pytest.raises(ValueError, match="error_feedback='ef22' is invalid"):
        build("topk10", error_feedback="ef22")
