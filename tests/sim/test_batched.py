"""The cohort engine over any nn.Module (torch.func) against the per-client loop."""

from __future__ import annotations

import logging
import sys
import textwrap

import pytest
import torch
from torch import nn

from fedbench.sim import cohort as cohort_engine
from fedbench.sim import loop as loop_engine
from fedbench.sim import models, seeding

# Every built-in model at test size, with dropout on where it has a dropout site.
TINY = {
    "mlp": ({"name": "mlp", "hidden": [8, 6], "dropout": 0.3}, 12, 5, None),
    "logreg": ({"name": "logreg"}, 12, 5, None),
    "cnn": ({"name": "cnn", "channels": [4, 8], "norm_groups": 2, "dropout": 0.3}, 64, 5, (1, 8, 8)),
    "femnist_cnn": (
        {"name": "femnist_cnn", "channels": [2, 4], "hidden": 16, "dropout": 0.3},
        784, 5, (1, 28, 28),
    ),
    "char_lstm": (
        {"name": "char_lstm", "embedding": 4, "hidden": 16, "dropout": 0.3}, 10, 12, None,
    ),
    "resnet": (
        {"name": "resnet", "depth": 8, "width": 4, "norm_groups": 2, "dropout": 0.3},
        3 * 8 * 8, 5, (3, 8, 8),
    ),
}  # fmt: skip
OPT = cohort_engine.LocalSGD(
    lr=0.05, momentum=0.9, weight_decay=0.01, batch_size=4, local_epochs=2, local_steps=None
)


def _spec(name: str) -> models.ModelSpec:
    cfg, features, classes, image = TINY[name]
    return models.build(cfg, features, classes, image)


def _data(name: str, sizes: list[int], seed: int = 0):
    """X, y and a cohort of clients with ``sizes`` samples (in that order)."""
    _, features, classes, _ = TINY[name]
    gen = torch.Generator().manual_seed(seed)
    n = sum(sizes)
    if name == "char_lstm":  # rows of character ids
        X = torch.randint(0, classes, (n, features), generator=gen).float()
    else:
        X = torch.randn(n, features, generator=gen)
    y = torch.randint(0, classes, (n,), generator=gen)
    index = torch.zeros(len(sizes), max(sizes), dtype=torch.long)
    lo = 0
    for i, k in enumerate(sizes):
        index[i, :k] = torch.arange(lo, lo + k)
        lo += k
    ids = torch.arange(len(sizes)) * 5 + 1
    cohort = cohort_engine.Cohort(
        clients=ids,
        index=index,
        n=torch.tensor(sizes),
        shuffle_keys=seeding.client_keys(ids, seed, 1, seeding.SHUFFLE),
        dropout_keys=seeding.client_keys(ids, seed, 1, seeding.DROPOUT),
    )
    return X, y, cohort


def _sub(cohort: cohort_engine.Cohort, lo: int, hi: int) -> cohort_engine.Cohort:
    n = cohort.n[lo:hi]
    return cohort_engine.Cohort(
        clients=cohort.clients[lo:hi],
        index=cohort.index[lo:hi, : int(n.max())],
        n=n,
        shuffle_keys=cohort.shuffle_keys[lo:hi],
        dropout_keys=cohort.dropout_keys[lo:hi],
    )


def _close(a: cohort_engine.LocalResult, b: cohort_engine.LocalResult) -> None:
    for pa, pb in zip(a.params, b.params, strict=True):
        torch.testing.assert_close(pa, pb, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(a.loss, b.loss, rtol=1e-5, atol=1e-6)
    assert torch.equal(a.samples, b.samples)


@pytest.mark.parametrize("name", list(TINY))
def test_cohort_equals_loop_for_every_builtin(name: str) -> None:
    spec = _spec(name)
    assert spec.dropout > 0 or name == "logreg"
    X, y, cohort = _data(name, [6, 9, 3])  # partial batches, a client that stops early
    start = spec.init(seeding.generator("cpu", 0, seeding.INIT))
    a = cohort_engine.train(spec, start, X, y, cohort, OPT)
    b = loop_engine.train(spec, start, X, y, cohort, OPT)
    _close(a, b)
    assert all(not torch.equal(p, s.expand_as(p)) for p, s in zip(a.params, start, strict=True))


@pytest.mark.parametrize("name", list(TINY))
def test_chunks_do_not_change_results_for_every_builtin(name: str) -> None:
    spec = _spec(name)
    X, y, cohort = _data(name, [7, 7, 5, 3], seed=1)
    start = spec.init(seeding.generator("cpu", 1, seeding.INIT))
    whole = cohort_engine.train(spec, start, X, y, cohort, OPT)
    parts = [cohort_engine.train(spec, start, X, y, _sub(cohort, i, i + 2), OPT) for i in (0, 2)]
    for k, p in enumerate(whole.params):
        torch.testing.assert_close(p, torch.cat([r.params[k] for r in parts]), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["cnn", "char_lstm", "resnet"])
def test_torch_func_batched_per_client_and_fast_paths_agree(name: str) -> None:
    """The three ways the cohort engine trains a built-in model: its registered batched
    forward (``models.stacked``), torch.func's vmap, and client by client."""
    spec = _spec(name)
    assert spec.fast is not None and spec.batchable and not spec.hand_backward
    X, y, cohort = _data(name, [6, 4], seed=2)
    start = spec.init(seeding.generator("cpu", 2, seeding.INIT))
    results, outputs = [], []
    params = [p.unsqueeze(0).expand(2, *p.shape) * torch.tensor([1.0, 0.9]).view(2, *[1] * p.dim())
              for p in start]  # fmt: skip
    xb = X[:10].view(2, 5, -1)
    for fast, batchable in ((spec.fast, True), (None, True), (None, False)):
        spec.fast, spec.batchable, spec.eval_batchable = fast, batchable, batchable
        results.append(cohort_engine.train(spec, start, X, y, cohort, OPT))
        outputs.append(spec.forward(params, xb, None))  # evaluation forward
    for other in results[1:]:
        _close(results[0], other)
    for other in outputs[1:]:
        torch.testing.assert_close(outputs[0], other, rtol=1e-5, atol=1e-6)


USER_PKG = '''
import torch
from torch import nn


class TinyNet(nn.Module):
    """A user's model: declares in_features and num_classes, plus its own knob."""

    def __init__(self, in_features, num_classes, width=8):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(in_features, width), nn.Tanh())
        self.head = nn.Linear(width, num_classes)

    def forward(self, x):
        return self.head(self.body(x))


class WithLSTM(nn.Module):
    """nn.LSTM inside: vmap has no batching rule for aten::lstm (evaluation), and
    training goes through torch's own per-sample fallback, whose gradients differ."""

    def __init__(self, in_features, num_classes):
        super().__init__()
        self.lstm = nn.LSTM(1, 6, batch_first=True)
        self.head = nn.Linear(6, num_classes)

    def forward(self, x):
        out, _ = self.lstm(x.unsqueeze(-1))
        return self.head(out[:, -1])


class ItemScaled(nn.Module):
    """Reads a Python number off a tensor (.item()): vmap cannot batch it at all."""

    def __init__(self, in_features, num_classes):
        super().__init__()
        self.fc = nn.Linear(in_features, 8)
        self.head = nn.Linear(8, num_classes)

    def forward(self, x):
        h = self.fc(x)
        scale = h.detach().abs().max().item()
        return self.head(torch.tanh(h / (1.0 + scale)))


class OwnDropout(nn.Module):
    def __init__(self, in_features, num_classes):
        super().__init__()
        self.fc = nn.Linear(in_features, 16)
        self.drop = nn.Dropout(0.5)
        self.head = nn.Linear(16, num_classes)

    def forward(self, x):
        return self.head(self.drop(torch.relu(self.fc(x))))


def not_a_module(**kwargs):
    raise RuntimeError("called")
'''


@pytest.fixture
def user_pkg(tmp_path, monkeypatch):
    pkg = tmp_path / "mypkg_models13"
    pkg.mkdir()
    (pkg / "__init__.py").write_text(textwrap.dedent(USER_PKG))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "mypkg_models13"
    sys.modules.pop("mypkg_models13", None)


def test_a_user_module_from_its_own_package_trains_as_a_cohort(user_pkg) -> None:
    spec = models.build({"_target_": f"{user_pkg}.TinyNet", "width": 5}, 12, 5, None)
    assert spec.batchable and spec.fast is None and spec.names[0] == "body.0.weight"
    assert spec.num_params == 12 * 5 + 5 + 5 * 5 + 5
    start = spec.init(seeding.generator("cpu", 0, seeding.INIT))
    again = spec.init(seeding.generator("cpu", 0, seeding.INIT))  # its own init, seeded
    assert all(torch.equal(a, b) for a, b in zip(start, again, strict=True))
    X, y, cohort = _data("mlp", [6, 9, 3])
    a = cohort_engine.train(spec, start, X, y, cohort, OPT)
    _close(a, loop_engine.train(spec, start, X, y, cohort, OPT))
    with pytest.raises(
        ValueError, match=r"model.widht is not a parameter of .*TinyNet; allowed: width"
    ):
        models.build({"_target_": f"{user_pkg}.TinyNet", "widht": 5}, 12, 5, None)


@pytest.mark.parametrize(
    ("cls", "train_ok", "eval_ok", "says"),
    [("ItemScaled", False, False, "item"), ("WithLSTM", False, False, "lstm")],
)
def test_an_unbatchable_module_says_so_and_trains_per_client(
    user_pkg, caplog, cls, train_ok, eval_ok, says
) -> None:
    with caplog.at_level(logging.INFO, logger="fedbench.sim.models.batched"):
        spec = models.build({"_target_": f"{user_pkg}.{cls}"}, 12, 5, None)
    assert (spec.batchable, spec.eval_batchable) == (train_ok, eval_ok)
    lines = [r.getMessage() for r in caplog.records if "cannot be" in r.getMessage()]
    assert len(lines) == (not train_ok) + (not eval_ok)
    assert all(says in line.lower() for line in lines)
    assert spec.forward([p.unsqueeze(0) for p in spec.init(torch.Generator())],
                        torch.randn(1, 3, 12), None).shape == (1, 3, 5)  # fmt: skip
    X, y, cohort = _data("mlp", [5, 3])
    start = spec.init(seeding.generator("cpu", 0, seeding.INIT))
    a = cohort_engine.train(spec, start, X, y, cohort, OPT)
    _close(a, loop_engine.train(spec, start, X, y, cohort, OPT))
    assert all(not torch.equal(p, s.expand_as(p)) for p, s in zip(a.params, start, strict=True))


def test_a_module_with_its_own_dropout_is_reproducible(user_pkg) -> None:
    spec = models.build({"_target_": f"{user_pkg}.OwnDropout"}, 12, 5, None)
    assert spec.dropout == 0 and not spec.takes_mask  # the engine draws no mask for it
    X, y, cohort = _data("mlp", [6, 5])
    start = spec.init(seeding.generator("cpu", 0, seeding.INIT))
    state = torch.random.get_rng_state()
    runs = [cohort_engine.train(spec, start, X, y, cohort, OPT) for _ in range(2)]
    assert torch.equal(torch.random.get_rng_state(), state)  # the caller's generator untouched
    for a, b in zip(runs[0].params, runs[1].params, strict=True):
        assert torch.equal(a, b)
    spec.template.eval()  # evaluation: dropout off, deterministic
    out = spec.forward([p[:1] for p in runs[0].params], X[:4].unsqueeze(0), None)
    torch.testing.assert_close(
        out, spec.forward([p[:1] for p in runs[0].params], X[:4].unsqueeze(0), None)
    )


def test_a_target_that_is_not_a_module_is_refused_before_it_is_called(user_pkg) -> None:
    with pytest.raises(ValueError, match=r"must name an nn.Module subclass, got function"):
        models.build({"_target_": f"{user_pkg}.not_a_module"}, 12, 5, None)
    with pytest.raises(ValueError, match=r"cannot import Nope"):
        models.build({"_target_": f"{user_pkg}.Nope"}, 12, 5, None)


class _Mismatched(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(12, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x)


def test_a_start_model_that_does_not_match_the_module_is_refused() -> None:
    spec = models.ModelSpec(_Mismatched(), in_features=12, num_classes=5)
    spec.check()
    X, y, cohort = _data("mlp", [4, 4])
    bad = [torch.zeros(5, 11), torch.zeros(5)]
    with pytest.raises(ValueError, match=r"gives fc.weight the shape \(5, 11\).*\(5, 12\)"):
        cohort_engine.train(spec, bad, X, y, cohort, OPT)
    with pytest.raises(ValueError, match=r"has 1 tensors but the module has 2"):
        loop_engine.train(spec, bad[:1], X, y, cohort, OPT)
