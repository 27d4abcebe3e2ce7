from __future__ import annotations

import pytest
import torch

from fedbench.sim import models, seeding


@pytest.mark.parametrize(
    "spec",
    [
        models.MLP(64, 10, [128, 64], 0.2),
        models.MLP(64, 10, [], 0.0),
        models.CNN((1, 8, 8), 10, [4, 8], 0.2),
    ],
    ids=["mlp", "logreg", "cnn"],
)
def test_batched_forward_equals_one_module_per_client(spec: models.ModelSpec) -> None:
    gen = torch.Generator().manual_seed(0)
    C, B = 3, 5
    stacked = [torch.stack([spec.init(gen)[k] for _ in range(C)]) for k in range(len(spec.shapes))]
    stacked = [p + 0.01 * torch.randn(p.shape, generator=gen) for p in stacked]  # clients differ
    x = torch.randn(C, B, 64, generator=gen)
    mask = None
    if spec.dropout > 0:
        bits = seeding.DropoutBits(spec.dropout, B, spec.dropout_units, "cpu")
        mask = bits.masks(torch.arange(C, dtype=torch.int32), torch.zeros(C, dtype=torch.long))
    out = spec.forward(stacked, x, mask)
    assert out.shape == (C, B, 10)
    module = spec.module()
    for i in range(C):
        with torch.no_grad():
            for p, v in zip(module.parameters(), stacked, strict=True):
                p.copy_(v[i])
        ref = module(x[i], None if mask is None else mask[i])
        torch.testing.assert_close(out[i], ref, rtol=1e-5, atol=1e-5)


def test_build_validates_and_counts_parameters() -> None:
    spec = models.build({"name": "mlp", "hidden": [128, 64], "dropout": 0.2}, 64, 10, None)
    assert spec.num_params == 64 * 128 + 128 + 128 * 64 + 64 + 64 * 10 + 10
    with pytest.raises(ValueError, match=r"model=cnn needs image data"):
        models.build({"name": "cnn"}, 60, 10, None)
    with pytest.raises(ValueError, match=r"model.dropout=1.5"):
        models.build({"name": "mlp", "dropout": 1.5}, 64, 10, None)
    with pytest.raises(ValueError, match=r"model.name='resnet'"):
        models.build({"name": "resnet"}, 64, 10, None)


@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_mlp_hand_backward_equals_autograd(dropout: float) -> None:
    spec = models.MLP(64, 10, [32, 16], dropout)
    gen = torch.Generator().manual_seed(0)
    C, B = 3, 6
    params = [torch.stack([p + 0.01 * i for i in range(C)]) for p in spec.init(gen)]
    x = torch.randn(C, B, 64, generator=gen)
    dlogits = torch.randn(C, B, 10, generator=gen)
    mask = None
    if dropout:
        bits = seeding.DropoutBits(dropout, B, spec.dropout_units, "cpu")
        mask = bits.masks(torch.arange(C, dtype=torch.int32), torch.zeros(C, dtype=torch.long))
    leaves = [p.clone().requires_grad_() for p in params]
    want = torch.autograd.grad(spec.forward(leaves, x, mask), leaves, dlogits)
    logits, saved = spec.forward_train(params, x, mask)
    torch.testing.assert_close(logits, spec.forward(params, x, mask))
    old = [torch.randn(p.shape, generator=gen) for p in params]
    sinks = [o.clone() for o in old]
    spec.backward_into(params, saved, mask, dlogits.clone(), sinks, 0.9)
    for s, o, w in zip(sinks, old, want, strict=True):
        torch.testing.assert_close(s, 0.9 * o + w, rtol=1e-5, atol=1e-6)
    nan_sinks = [torch.full_like(p, float("nan")) for p in params]  # beta=0 ignores them
    spec.backward_into(params, saved, mask, dlogits.clone(), nan_sinks, 0.0)
    for s, w in zip(nan_sinks, want, strict=True):
        torch.testing.assert_close(s, w, rtol=1e-5, atol=1e-6)
