"""The built-in networks: sizes, initialisation, the LSTM's equations, batched forward."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fedbench.sim import models, seeding
from fedbench.sim.models.leaf import _LSTMLayer

# Parameter counts at the field's standard shapes (quoted in the README).
COUNTS = [
    ({"name": "mlp"}, 64, 10, None, 17_226),  # digits
    ({"name": "logreg"}, 64, 10, None, 650),
    ({"name": "cnn"}, 784, 10, (1, 28, 28), 20_586),  # mnist5k
    ({"name": "femnist_cnn"}, 784, 62, (1, 28, 28), 6_603_710),  # LEAF FEMNIST
    ({"name": "char_lstm"}, 80, 80, None, 817_872),  # LEAF Shakespeare: 80 chars, vocab 80
    ({"name": "resnet"}, 3072, 10, (3, 32, 32), 272_474),  # ResNet-20, CIFAR-10
    ({"name": "resnet", "depth": 32, "width": 32}, 3072, 10, (3, 32, 32), 1_860_522),
]


@pytest.mark.parametrize(("cfg", "features", "classes", "image", "count"), COUNTS)
def test_parameter_counts(cfg, features, classes, image, count: int) -> None:
    module = models.locate(f"fedbench.sim.models.{_CLASS[cfg['name']]}")
    kwargs = {k: v for k, v in cfg.items() if k != "name"}
    net = _construct(module, kwargs, features, classes, image)
    assert sum(p.numel() for p in net.parameters()) == count


_CLASS = {"mlp": "MLP", "logreg": "LogReg", "cnn": "CNN", "femnist_cnn": "FemnistCNN",
          "char_lstm": "CharLSTM", "resnet": "ResNet"}  # fmt: skip


def _construct(cls, kwargs, features, classes, image):
    """The module as ``build`` makes it, without the dry run (fast for 6.6M params)."""
    data = {"in_features": features, "num_classes": classes, "image_shape": image,
            "vocab_size": classes, "seq_len": features}  # fmt: skip
    import inspect

    own = inspect.signature(cls.__init__).parameters
    return cls(**kwargs, **{k: v for k, v in data.items() if k in own})


def test_femnist_cnn_at_full_size_trains_one_step_on_two_samples() -> None:
    spec = models.build({"name": "femnist_cnn"}, 784, 62, (1, 28, 28))
    assert spec.num_params == 6_603_710 and spec.batchable
    assert spec.names[:2] == ["conv0.weight", "conv0.bias"] and spec.shapes[4] == (2048, 3136)
    x = torch.randn(1, 2, 784)
    params = [p.unsqueeze(0) for p in spec.init(seeding.generator("cpu", 0, seeding.INIT))]
    assert spec.forward(params, x, None).shape == (1, 2, 62)


def test_init_is_drawn_from_the_generator_only() -> None:
    for cfg, features, classes, image in [
        ({"name": "cnn", "channels": [4, 8]}, 64, 10, (1, 8, 8)),
        ({"name": "resnet", "depth": 8, "width": 4}, 48, 3, (3, 4, 4)),
        ({"name": "char_lstm", "hidden": 8, "embedding": 3}, 6, 7, None),
    ]:
        spec = models.build(cfg, features, classes, image)
        a = spec.init(seeding.generator("cpu", 3, seeding.INIT))
        torch.manual_seed(123)  # the global generator plays no part
        b = spec.init(seeding.generator("cpu", 3, seeding.INIT))
        c = spec.init(seeding.generator("cpu", 4, seeding.INIT))
        assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
        assert not all(torch.equal(x, y) for x, y in zip(a, c, strict=True))
        for name, p in zip(spec.names, a, strict=True):
            if ".norm" in name or name.startswith("norm") or ".short.1." in name:  # GroupNorm
                assert torch.equal(p, torch.ones_like(p) if name.endswith("weight") else 0 * p)


def test_the_cnn_has_the_groupnorm_its_docs_claim() -> None:
    net = models.CNN((1, 8, 8), 10, [4, 8], 0.2)
    norms = [m for m in net.modules() if isinstance(m, nn.GroupNorm)]
    assert [m.num_channels for m in norms] == [4, 8]
    assert "GroupNorm" in (models.CNN.__doc__ or "")


def test_lstm_layer_equals_nn_lstm() -> None:
    gen = torch.Generator().manual_seed(0)
    ours, ref = _LSTMLayer(5, 7), nn.LSTM(5, 7, batch_first=True)
    with torch.no_grad():
        ours.weight_ih.copy_(ref.weight_ih_l0)
        ours.weight_hh.copy_(ref.weight_hh_l0)
        ours.bias.copy_(ref.bias_ih_l0 + ref.bias_hh_l0)
    x = torch.randn(3, 11, 5, generator=gen)
    torch.testing.assert_close(ours(x), ref(x)[0], rtol=1e-5, atol=1e-6)


TINY = [
    ({"name": "mlp", "hidden": [8, 6], "dropout": 0.3}, 12, 5, None),
    ({"name": "cnn", "channels": [4, 8], "norm_groups": 2, "dropout": 0.3}, 64, 5, (1, 8, 8)),
    ({"name": "femnist_cnn", "channels": [2, 4], "hidden": 16, "dropout": 0.3}, 64, 5, (1, 8, 8)),
    ({"name": "char_lstm", "embedding": 4, "hidden": 16, "dropout": 0.3}, 10, 12, None),
    ({"name": "resnet", "depth": 8, "width": 4, "dropout": 0.3}, 3 * 8 * 8, 5, (3, 8, 8)),
]


@pytest.mark.parametrize(("cfg", "features", "classes", "image"), TINY, ids=lambda v: str(v)[:20])
def test_batched_forward_equals_one_module_per_client(cfg, features, classes, image) -> None:
    spec = models.build(cfg, features, classes, image)
    gen = torch.Generator().manual_seed(0)
    C, B = 3, 5
    stacked = [torch.stack([p + 0.01 * i for i in range(C)]) for p in spec.init(gen)]
    if cfg["name"] == "char_lstm":
        x = torch.randint(0, classes, (C, B, features), generator=gen).float()
    else:
        x = torch.randn(C, B, features, generator=gen)
    bits = seeding.DropoutBits(spec.dropout, B, spec.dropout_units, "cpu")
    mask = bits.masks(torch.arange(C, dtype=torch.int32), torch.zeros(C, dtype=torch.long))
    out = spec.forward(stacked, x, mask)
    assert out.shape == (C, B, classes)
    module = spec.module()
    for i in range(C):
        with torch.no_grad():
            for p, v in zip(module.parameters(), stacked, strict=True):
                p.copy_(v[i])
        torch.testing.assert_close(out[i], module(x[i], mask[i]), rtol=1e-5, atol=1e-5)
        assert not torch.allclose(out[i], module(x[i]), rtol=1e-3, atol=1e-3)  # mask applied
