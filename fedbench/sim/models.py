"""Models, written twice: batched over clients (the cohort engine) and as a plain
``nn.Module`` (the per-client reference loop). Both take dropout as an explicit
keep-mask so the two engines draw identical masks (see ``seeding.DropoutBits``).

Parameters are a list of tensors in ``nn.Module.parameters()`` order (``nn.Linear``
layout: weight (out, in), bias (out,)); the batched forms take them stacked,
(clients, *shape). No batch-norm: running statistics neither average (FedAvg) nor
batch across clients.

The MLP also has a hand-written batched backward (``forward_train`` + ``backward_into``:
three GEMMs forward, five backward, the momentum update fused in), which the cohort
engine uses instead of autograd: for matrices this small autograd's bookkeeping costs
about as much as the arithmetic. ``tests/sim/test_engine.py`` checks it against the
per-client ``nn.Module`` trained by ``torch.optim.SGD``.
"""

from __future__ import annotations

import abc
import itertools
import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

MODELS = ("mlp", "logreg", "cnn")


def _uniform(shape: Sequence[int], bound: float, gen: torch.Generator) -> torch.Tensor:
    return (torch.rand(tuple(shape), generator=gen) * 2 - 1) * bound


class ModelSpec(abc.ABC):
    """A model's parameter shapes, initialisation and two forward implementations."""

    name = "abstract"
    shapes: list[tuple[int, ...]]
    names: list[str]
    dropout: float = 0.0
    dropout_units: int = 0  # units per sample that receive a dropout mask

    def init(self, gen: torch.Generator) -> list[torch.Tensor]:
        """PyTorch's default init (uniform +-1/sqrt(fan_in)), drawn from ``gen`` only."""
        params, fan = [], 1
        for shape in self.shapes:
            if len(shape) > 1:  # a weight; the bias after it shares its fan-in
                fan = math.prod(shape[1:])
            params.append(_uniform(shape, 1 / math.sqrt(fan), gen))
        return params

    @abc.abstractmethod
    def forward(
        self, params: Sequence[torch.Tensor], x: torch.Tensor, mask: torch.Tensor | None
    ) -> torch.Tensor:
        """Logits (clients, batch, classes) from x (clients, batch, features)."""

    @abc.abstractmethod
    def module(self) -> nn.Module:
        """The same network as an ``nn.Module`` whose ``forward(x, mask)`` takes one client."""

    # A model with a hand-written backward sets this and implements the two methods
    # below; the cohort engine then skips autograd. Others train through autograd.
    hand_backward = False

    def forward_train(
        self, params: Sequence[torch.Tensor], x: torch.Tensor, mask: torch.Tensor | None
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Logits (clients, batch, classes) and what :meth:`backward_into` needs."""
        raise TypeError(f"{type(self).__name__} has no hand-written backward: train via autograd")

    def backward_into(
        self,
        params: Sequence[torch.Tensor],
        saved: list[torch.Tensor],
        mask: torch.Tensor | None,
        dlogits: torch.Tensor,
        sinks: Sequence[torch.Tensor],
        beta: float,
    ) -> None:
        """``sinks[k] = beta * sinks[k] + dL/dparams[k]`` in place, for every parameter.

        ``dlogits`` (clients, batch, classes) is dL/dlogits; it may be overwritten.
        ``beta = 0`` ignores the sinks' old values (NaN included).
        """
        raise TypeError(f"{type(self).__name__} has no hand-written backward: train via autograd")

    @property
    def num_params(self) -> int:
        return sum(math.prod(s) for s in self.shapes)


def _linear(w: torch.Tensor, b: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    # h (C, B, in) @ w^T (C, in, out) + b (C, 1, out): one batched GEMM for all clients
    return torch.baddbmm(b.unsqueeze(1), h, w.transpose(1, 2))


class MLP(ModelSpec):
    """in -> hidden... -> classes, ReLU, dropout after every hidden layer (the tutorial's
    in -> 128 -> 64 -> classes with dropout 0.2 by default)."""

    name = "mlp"

    def __init__(self, features: int, classes: int, hidden: Sequence[int], dropout: float):
        self.sizes = [features, *[int(h) for h in hidden], classes]
        self.dropout = float(dropout)
        self.dropout_units = sum(self.sizes[1:-1]) if self.dropout > 0 else 0
        self.shapes, self.names = [], []
        for i, (a, b) in enumerate(zip(self.sizes[:-1], self.sizes[1:], strict=True)):
            self.shapes += [(b, a), (b,)]
            self.names += [f"fc{i}.weight", f"fc{i}.bias"]

    def forward(self, params, x, mask):
        h, off = x, 0
        n_layers = len(self.sizes) - 1
        for i in range(n_layers):
            h = _linear(params[2 * i], params[2 * i + 1], h)
            if i < n_layers - 1:
                h = torch.relu(h)
                if mask is not None:
                    width = self.sizes[i + 1]
                    h = h * mask[..., off : off + width]
                    off += width
        return h

    hand_backward = True

    def forward_train(self, params, x, mask):
        # saved[i] is layer i's input: x, then each hidden activation after ReLU and mask
        h, off, saved = x, 0, []
        n_layers = len(self.sizes) - 1
        for i in range(n_layers):
            saved.append(h)
            h = _linear(params[2 * i], params[2 * i + 1], h)
            if i < n_layers - 1:
                h.relu_()
                if mask is not None:
                    width = self.sizes[i + 1]
                    h.mul_(mask[..., off : off + width])
                    off += width
        return h, saved

    def backward_into(self, params, saved, mask, dlogits, sinks, beta):
        # Backprop through y = h W^T + b: dW = dy^T h, db = sum_b dy, dh = dy W; through
        # h = relu(a) * m: da = dh * m where h > 0 (h > 0 iff a > 0 and the unit is kept).
        # Written into the sinks with baddbmm's beta, so the momentum update
        # buf = momentum * buf + grad costs no extra pass over the parameters.
        d = dlogits
        offs = list(itertools.accumulate(self.sizes[1:-1], initial=0))
        for i in range(len(self.sizes) - 2, -1, -1):
            h = saved[i]
            sinks[2 * i].baddbmm_(d.transpose(1, 2), h, beta=beta)
            db = d.sum(1)
            if beta:
                sinks[2 * i + 1].mul_(beta).add_(db)
            else:
                sinks[2 * i + 1].copy_(db)
            if i > 0:
                d = torch.bmm(d, params[2 * i])
                if mask is not None:
                    d.mul_(mask[..., offs[i - 1] : offs[i]])
                d = torch.ops.aten.threshold_backward(d, h, 0)

    def module(self) -> nn.Module:
        return _MLPModule(self.sizes)


class _MLPModule(nn.Module):
    def __init__(self, sizes: Sequence[int]) -> None:
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in itertools.pairwise(sizes))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        off = 0
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = torch.relu(x)
                if mask is not None:
                    x = x * mask[:, off : off + layer.out_features]
                    off += layer.out_features
        return x


class CNN(ModelSpec):
    """conv3x3(c1)-ReLU-maxpool2 -> conv3x3(c2)-ReLU-maxpool2 -> dropout -> linear.

    No normalisation layer. For digits (8x8) the head sees 2x2 maps, for MNIST 7x7.
    """

    name = "cnn"

    def __init__(
        self, image: tuple[int, int, int], classes: int, channels: Sequence[int], dropout: float
    ):
        c, h, w = image
        c1, c2 = (int(ch) for ch in channels)
        self.image = (c, h, w)
        self.flat = c2 * (h // 4) * (w // 4)
        self.dropout = float(dropout)
        self.dropout_units = self.flat if self.dropout > 0 else 0
        self.shapes = [
            (c1, c, 3, 3),
            (c1,),
            (c2, c1, 3, 3),
            (c2,),
            (classes, self.flat),
            (classes,),
        ]
        self.names = [
            "conv0.weight",
            "conv0.bias",
            "conv1.weight",
            "conv1.bias",
            "fc.weight",
            "fc.bias",
        ]

    def forward(self, params, x, mask):
        C, B = x.shape[:2]
        h = x.reshape(C, B, *self.image)
        for i in (0, 1):
            conv = torch.func.vmap(lambda w, b, xi: F.conv2d(xi, w, b, padding=1))
            h = torch.relu(conv(params[2 * i], params[2 * i + 1], h))
            h = F.max_pool2d(h.flatten(0, 1), 2)
            h = h.view(C, B, *h.shape[1:])
        h = h.reshape(C, B, -1)
        if mask is not None:
            h = h * mask
        return _linear(params[4], params[5], h)

    def module(self) -> nn.Module:
        return _CNNModule(self.image, self.shapes)


class _CNNModule(nn.Module):
    def __init__(self, image: tuple[int, int, int], shapes: Sequence[tuple[int, ...]]) -> None:
        super().__init__()
        self.image = image
        self.conv0 = nn.Conv2d(shapes[0][1], shapes[0][0], 3, padding=1)
        self.conv1 = nn.Conv2d(shapes[2][1], shapes[2][0], 3, padding=1)
        self.fc = nn.Linear(shapes[4][1], shapes[4][0])

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        h = x.reshape(x.shape[0], *self.image)
        h = F.max_pool2d(torch.relu(self.conv0(h)), 2)
        h = F.max_pool2d(torch.relu(self.conv1(h)), 2).flatten(1)
        if mask is not None:
            h = h * mask
        return self.fc(h)


def build(
    cfg: Mapping[str, Any], features: int, classes: int, image: tuple[int, int, int] | None
) -> ModelSpec:
    """The model a ``conf/model`` group describes, for this data's shape."""
    name = cfg.get("name")
    dropout = cfg.get("dropout", 0.0)
    if isinstance(dropout, bool) or not isinstance(dropout, int | float) or not 0 <= dropout < 1:
        raise ValueError(f"model.dropout={dropout!r} is invalid: must be a number in [0, 1)")
    if name == "mlp":
        hidden = cfg.get("hidden", [128, 64])
        if not isinstance(hidden, list | tuple) or not all(
            isinstance(h, int) and not isinstance(h, bool) and h >= 1 for h in hidden
        ):
            raise ValueError(f"model.hidden={hidden!r} is invalid: must be a list of integers >= 1")
        return MLP(features, classes, hidden, dropout)
    if name == "logreg":
        return MLP(features, classes, [], 0.0)
    if name == "cnn":
        if image is None:
            raise ValueError("model=cnn needs image data (digits, mnist5k, or an npz of images)")
        channels = cfg.get("channels", [16, 32])
        if (
            not isinstance(channels, list | tuple)
            or len(channels) != 2
            or not all(isinstance(c, int) and not isinstance(c, bool) and c >= 1 for c in channels)
        ):
            raise ValueError(f"model.channels={channels!r} is invalid: must be two integers >= 1")
        if image[1] < 4 or image[2] < 4:
            raise ValueError(f"model=cnn needs images of at least 4x4, got {image[1]}x{image[2]}")
        return CNN(image, classes, channels, dropout)
    raise ValueError(f"model.name={name!r} is invalid: must be one of {', '.join(MODELS)}")
