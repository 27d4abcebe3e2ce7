from __future__ import annotations

import torch

from fedbench.sim import seeding


def _lowbias32_reference(x: int) -> int:
    m = 0xFFFFFFFF
    x ^= x >> 16
    x = (x * 0x7FEB352D) & m
    x ^= x >> 15
    x = (x * 0x846CA68B) & m
    return x ^ (x >> 16)


def test_hash32_matches_unsigned_reference() -> None:
    # Values that exercise the sign bit, wrap-around and the vectorised and tail paths.
    vals = [0, 1, 2**31 - 1, 2**31, 2**32 - 1, 2654435769, 12345, *list(range(1000, 1037))]
    signed = torch.tensor([v - 2**32 if v >= 2**31 else v for v in vals], dtype=torch.int32)
    got = seeding.hash32(signed).to(torch.int64) & 0xFFFFFFFF
    assert got.tolist() == [_lowbias32_reference(v) for v in vals]


def test_mix_is_order_sensitive_and_stable() -> None:
    assert seeding.mix(1, 2, 3) == seeding.mix(1, 2, 3)
    assert seeding.mix(1, 2, 3) != seeding.mix(1, 3, 2)
    assert 0 <= seeding.mix(0) < 2**63


def test_client_keys_do_not_depend_on_the_cohort() -> None:
    a = seeding.client_keys(torch.tensor([3, 7, 9]), 0, 1, seeding.SHUFFLE)
    b = seeding.client_keys(torch.tensor([9, 3]), 0, 1, seeding.SHUFFLE)
    assert a[0] == b[1] and a[2] == b[0]
    assert seeding.client_keys(torch.tensor([3]), 0, 2, seeding.SHUFFLE)[0] != a[0]


def test_epoch_permutation_is_a_permutation_independent_of_padding() -> None:
    keys = seeding.client_keys(torch.arange(3), 0, 1, seeding.SHUFFLE)
    n = torch.tensor([5, 17, 1])
    epoch = torch.tensor([0, 2, 1])
    wide = seeding.epoch_permutation(keys, epoch, n, 40)
    for i in range(3):
        k = int(n[i])
        assert sorted(wide[i, :k].tolist()) == list(range(k))
        alone = seeding.epoch_permutation(keys[i : i + 1], epoch[i : i + 1], n[i : i + 1], k)
        assert torch.equal(alone[0], wide[i, :k])
    other_epoch = seeding.epoch_permutation(keys, epoch + 1, n, 40)
    assert not torch.equal(other_epoch[1, :17], wide[1, :17])


def test_dropout_masks_rate_scale_and_independence() -> None:
    bits = seeding.DropoutBits(0.2, 32, 192, "cpu")
    keys = seeding.client_keys(torch.arange(64), 0, 1, seeding.DROPOUT)
    m = bits.masks(keys, torch.zeros(64, dtype=torch.long))
    assert m.shape == (64, 32, 192)
    dropped = (m == 0).double().mean().item()
    assert abs(dropped - 0.2) < 0.01
    torch.testing.assert_close(m[m > 0], torch.full_like(m[m > 0], 1 / (1 - bits.p_eff)))
    # A client's mask is the same in any cohort; steps and clients differ.
    alone = bits.masks(keys[5:6], torch.zeros(1, dtype=torch.long))
    assert torch.equal(alone[0], m[5])
    assert not torch.equal(m[5], m[6])
    assert not torch.equal(bits.masks(keys[5:6], torch.ones(1, dtype=torch.long))[0], m[5])


def test_dropout_bits_are_lowbias32_bytes_in_any_block_of_steps() -> None:
    bits = seeding.DropoutBits(0.2, 4, 10, "cpu")  # 10 units: 3 words, last one cut short
    assert bits.threshold == 51 and bits.p_eff == 51 / 256
    keys = seeding.client_keys(torch.arange(5), 0, 1, seeding.DROPOUT)
    steps = torch.arange(6, dtype=torch.int32)
    step_keys = seeding.derive(keys.unsqueeze(1), steps.unsqueeze(0))  # (5, 6)
    block = bits.bytes_for(step_keys)  # (5, 6, 4, 10): all steps at once
    assert block.shape == (5, 6, 4, 10) and block.dtype == torch.uint8
    for t in (0, 5):
        ref = seeding.hash32(step_keys[:, t, None, None] ^ bits._counter_hash)
        assert torch.equal(block[:, t], ref.view(torch.uint8)[..., :10])
        per_step = bits.masks(keys, torch.full((5,), t))
        assert torch.equal(bits.masks_from_bytes(block[:, t]), per_step)
        torch.testing.assert_close(
            per_step, (block[:, t] >= 51).float() * (256 / 205), rtol=0, atol=0
        )


def test_dropout_rate_holds_in_every_byte_lane() -> None:
    """Four masks per hash word: each of the word's bytes must drop at the same rate."""
    bits = seeding.DropoutBits(0.5, 32, 256, "cpu")
    keys = seeding.client_keys(torch.arange(200), 3, 2, seeding.DROPOUT)
    m = bits.masks(keys, torch.zeros(200, dtype=torch.long))
    lanes = (m == 0).double().view(200, 32, 64, 4).mean((0, 1, 2))
    assert torch.all((lanes - 0.5).abs() < 0.01), lanes
    # neighbouring units (same word) are not correlated
    a, b = (m == 0).double().view(-1, 4)[:, 0], (m == 0).double().view(-1, 4)[:, 1]
    assert abs(float(((a - 0.5) * (b - 0.5)).mean())) < 0.005
