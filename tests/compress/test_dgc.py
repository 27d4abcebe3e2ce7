"""Deep Gradient Compression: accumulation invariant, masking, warm-up, clipping, sizes."""

from __future__ import annotations

import math

import pytest
import torch

from fedbench.compress import build, positions, wire
from fedbench.compress.dgc import DGC


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def randn(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=gen(seed))


def test_sent_plus_held_equals_the_sum_of_momentum_corrected_inputs():
    """sum_t sent_t + v_T == sum_t u_t, u_t = m u_{t-1} (masked) + x_t (Lin et al. eq. 5-6)."""
    c = DGC(ratio=0.05, momentum=0.7, warmup_rounds=2)
    shape = (3, 40)
    states = [c.init_state(shape) for _ in range(4)]
    sent_sum = torch.zeros(4, *shape)
    u_sum = torch.zeros(4, *shape)
    for t in range(6):
        x = randn(4, *shape, seed=t) * (t + 1)
        u_prev = torch.stack([s.u for s in states])
        v_prev = torch.stack([s.v for s in states])
        _, decoded = c.compress_batch(x, [gen(10 * t + i) for i in range(4)], states)
        u_t = 0.7 * u_prev + x
        u_sum += u_t
        sent_sum += decoded
        v = torch.stack([s.v for s in states])
        torch.testing.assert_close(decoded + v, v_prev + u_t)  # one step
        torch.testing.assert_close(sent_sum + v, u_sum)  # all steps
    assert torch.count_nonzero(sent_sum) > 0


def test_momentum_factor_masking_zeroes_u_and_v_where_sent():
    c = DGC(ratio=0.1, momentum=0.9, warmup_rounds=0)
    state = c.init_state((200,))
    c.compress(randn(200, seed=1), gen(0), state)
    u_prev, v_prev = state.u.clone(), state.v.clone()
    x = randn(200, seed=2)
    _, decoded = c.compress(x, gen(1), state)
    sent = decoded != 0
    assert 0 < int(sent.sum()) <= 20
    assert not state.u[sent].any() and not state.v[sent].any()
    u_t = 0.9 * u_prev + x
    torch.testing.assert_close(state.u[~sent], u_t[~sent])
    torch.testing.assert_close(state.v[~sent], (v_prev + u_t)[~sent])
    # what was sent is the accumulated v there
    torch.testing.assert_close(decoded[sent], (v_prev + u_t)[sent])


def test_warm_up_sparsity_is_the_papers_schedule():
    """75%, 93.75%, 98.4375%, 99.6%, then 1 - ratio (Lin et al. sec. 3.3)."""
    n = 10_000
    c = DGC(ratio=0.001, momentum=0.0, warmup_rounds=4, sample_ratio=1.0)  # exact top-k
    state = c.init_state((n,))
    kept = []
    for t in range(6):
        _, decoded = c.compress(randn(n, seed=t), gen(t), state)
        kept.append(int(torch.count_nonzero(decoded)))
    assert kept == [2500, 625, 156, 39, 10, 10]
    assert [c.kept_at(t, n) for t in range(6)] == kept
    assert state.calls == 6
    sparsity = [1 - k / n for k in kept[:4]]
    assert sparsity == pytest.approx([0.75, 0.9375, 0.984375, 0.9961], abs=1e-4)


def test_warm_up_is_counted_per_client_in_a_batch():
    """Clients at different points of warm-up in one batched call == one call each."""
    c = DGC(ratio=0.01, warmup_rounds=3, sample_ratio=1.0)
    a, b = c.init_state((500,)), c.init_state((500,))
    for t in range(2):
        c.compress(randn(500, seed=t), gen(t), a)
    x = torch.stack([randn(500, seed=7), randn(500, seed=8)])
    a2, b2 = DGC.init_state(c, (500,)), DGC.init_state(c, (500,))
    a2.u, a2.v, a2.calls = a.u.clone(), a.v.clone(), a.calls
    msgs, decoded = c.compress_batch(x, [gen(1), gen(2)], [a, b])
    assert msgs == [c.encode(x[0], gen(1), a2), c.encode(x[1], gen(2), b2)]
    assert torch.count_nonzero(decoded, dim=1).tolist() == [c.kept_at(2, 500), c.kept_at(0, 500)]
    assert (a.calls, b.calls) == (3, 1)


def test_sampled_threshold_never_sends_more_than_k_and_draws_from_the_generator():
    n = 200_000
    c = DGC(ratio=0.01, momentum=0.0, warmup_rounds=0, sample_ratio=0.01)
    x = randn(n, seed=3)
    counts, supports = [], []
    for seed in range(3):
        _, decoded = c.compress(x, gen(seed), c.init_state((n,)))
        counts.append(int(torch.count_nonzero(decoded)))
        supports.append(decoded != 0)
    assert all(0.7 * 2000 < k <= 2000 for k in counts), counts
    _, again = c.compress(x, gen(0), c.init_state((n,)))
    assert torch.equal(again != 0, supports[0])  # same generator state, same selection
    # what is kept is the largest magnitudes: everything sent beats everything held
    assert x.abs()[supports[0]].min() >= x.abs()[~supports[0]].max()


@pytest.mark.parametrize(("norm", "clip"), [(10.0, 1.0), (0.5, 1.0), (3.0, None)])
def test_local_clipping_bounds_the_update_norm(norm, clip):
    c = DGC(ratio=1.0, momentum=0.0, warmup_rounds=0, clip_norm=clip)
    x = randn(4, 25, seed=5)
    x = x / torch.linalg.vector_norm(x) * norm
    _, decoded = c.compress(x, gen(0), c.init_state((4, 25)))
    want = x if clip is None or norm <= clip else x * (clip / norm)
    torch.testing.assert_close(decoded, want)
    assert float(torch.linalg.vector_norm(decoded)) == pytest.approx(
        norm if clip is None else min(norm, clip), rel=1e-5
    )


def test_clipping_is_per_client():
    c = DGC(ratio=1.0, momentum=0.0, warmup_rounds=0, clip_norm=1.0)
    x = torch.stack([torch.full((9,), 1.0), torch.full((9,), 0.1)])  # norms 3 and 0.3
    _, decoded = c.compress_batch(x, [gen(0), gen(1)], [c.init_state((9,)) for _ in range(2)])
    torch.testing.assert_close(torch.linalg.vector_norm(decoded, dim=1), torch.tensor([1.0, 0.3]))


def test_message_is_top_k_layout_with_its_own_codec_id():
    n = 5000
    c = DGC(ratio=0.01, warmup_rounds=0, sample_ratio=1.0)
    msg, decoded = c.compress(randn(50, 100, seed=9), gen(0), c.init_state((50, 100)))
    k = int(torch.count_nonzero(decoded))
    assert k == 50
    assert len(msg) == wire.header_size(2) + 5 + positions.positions_size(n, k) + 4 * k
    assert msg[3] == DGC.codec_id == 15
    with pytest.raises(ValueError, match="codec"):
        build("topk", error_feedback=False).decode(msg)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"momentum": 1.0},
        {"momentum": -0.1},
        {"clip_norm": 0.0},
        {"clip_norm": math.inf},
        {"warmup_rounds": -1},
        {"warmup_rounds": 1.5},
        {"sample_ratio": 0.0},
        {"ratio": 0.0},
        {"ratio": 0.1, "k": 3},
        {"value_dtype": "int8"},
    ],
)
def test_bad_settings_raise_value_error(kwargs):
    with pytest.raises(ValueError):
        DGC(**kwargs)


def test_a_state_of_another_shape_is_refused():
    c = DGC()
    with pytest.raises(ValueError, match="init_state"):
        c.compress(randn(10), gen(0), c.init_state((11,)))


@pytest.mark.parametrize("seed", range(6))
def test_an_over_full_sampled_threshold_falls_back_to_the_exact_top_k(seed):
    """A sample from ~1% of the values under-estimates the threshold about half the time;
    then the message holds the exact top-k of |v|, ties broken by the lowest position."""
    n, k = 20_000, 200
    x = randn(3, n, seed=seed)
    x[1, :5000] = 2.5  # thousands of ties straddle the k-th largest value of row 1
    c = DGC(ratio=k / n, momentum=0.0, warmup_rounds=0, sample_ratio=0.01)
    states = [c.init_state((n,)) for _ in range(3)]
    _, decoded = c.compress_batch(x, [gen(seed * 10 + i) for i in range(3)], states)
    for i in range(3):
        kept = decoded[i].nonzero().squeeze(1)
        assert len(kept) <= k
        if len(kept) < k:
            continue  # the sample over-estimated the threshold: fewer, all above it
        a = x[i].abs()
        kth = a.topk(k).values[-1]
        # every position above the k-th value, then the lowest tied ones up to k
        want = torch.cat(((a > kth).nonzero().squeeze(1), (a == kth).nonzero().squeeze(1)))
        want = want[:k].sort().values
        assert torch.equal(kept, want), f"row {i}"
