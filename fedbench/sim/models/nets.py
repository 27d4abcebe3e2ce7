"""fedbench's own small models: the tutorial's MLP, logistic regression, a small CNN.

Every built-in model is a :class:`Net`: an ``nn.Module`` whose ``forward(x, mask=None)``
takes one client's rows ``x`` (batch, in_features) (images flattened: the module
reshapes them with ``image_shape``) and, when ``dropout > 0``, an explicit scaled
keep-mask ``mask`` (batch, dropout_units) that the engine draws from
``seeding.DropoutBits`` keyed by (seed, round, client, local step). The module never
draws randomness itself, so a client's numbers do not depend on which chunk, engine or
launcher trains it. Sites consume the mask left to right (:func:`take_mask`).

No batch-norm anywhere: running statistics neither average under FedAvg nor batch
across clients; the convolutional models use GroupNorm (per-sample statistics).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def _uniform(shape: Sequence[int], bound: float, gen: torch.Generator) -> torch.Tensor:
    return (torch.rand(tuple(shape), generator=gen) * 2 - 1) * bound


def check_dropout(p: object) -> float:
    """``model.dropout`` as a float in [0, 1), else ValueError."""
    if isinstance(p, bool) or not isinstance(p, int | float) or not 0 <= p < 1:
        raise ValueError(f"model.dropout={p!r} is invalid: must be a number in [0, 1)")
    return float(p)


def check_ints(key: str, value: object, *, length: int | None = None) -> list[int]:
    """``model.<key>`` as a list of integers >= 1 (of ``length`` when given)."""
    ok = isinstance(value, list | tuple) and all(
        isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in value
    )
    if not ok or (length is not None and len(value) != length):
        what = f"{length} integers" if length is not None else "a list of integers"
        raise ValueError(f"model.{key}={value!r} is invalid: must be {what} >= 1")
    return [int(v) for v in value]


def check_int(key: str, value: object, lo: int = 1) -> int:
    """``model.<key>`` as an integer >= ``lo``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < lo:
        raise ValueError(f"model.{key}={value!r} is invalid: must be an integer >= {lo}")
    return int(value)


def check_groups(groups: int, channels: Sequence[int]) -> int:
    """GroupNorm's group count: it must divide every normalised channel count."""
    groups = check_int("norm_groups", groups)
    bad = [c for c in channels if c % groups]
    if bad:
        raise ValueError(
            f"model.norm_groups={groups} is invalid: must divide every channel count "
            f"{list(channels)} (not {bad[0]})"
        )
    return groups


def take_mask(h: torch.Tensor, mask: torch.Tensor | None, off: int) -> tuple[torch.Tensor, int]:
    """Apply the next ``h.shape[-1]`` units of the keep-mask to ``h`` (batch, units).

    Returns (masked h, the offset after them); no mask: h unchanged.
    """
    if mask is None:
        return h, off
    width = h.shape[-1]
    return h * mask[..., off : off + width], off + width


class Net(nn.Module):
    """Base of the built-in models: their initialisation, drawn from a given generator.

    ``dropout`` is the drop probability of the keep-mask sites and ``dropout_units``
    the mask's width per sample (0: no mask). ``in_features`` is the row width the
    module reads (for the engine's pre-training checks).
    """

    dropout: float = 0.0
    dropout_units: int = 0
    in_features: int

    def init(self, gen: torch.Generator) -> list[torch.Tensor]:
        """Initial parameters in ``parameters()`` order, drawn from ``gen`` only.

        PyTorch's default for linear and conv layers (uniform +-1/sqrt(fan_in); a bias
        shares the fan-in of the weight before it), ones and zeros for GroupNorm.
        """
        out, fan = [], 1
        for name, p in self.named_parameters():
            owner = self.get_submodule(name.rpartition(".")[0])
            if isinstance(owner, nn.GroupNorm):
                out.append(torch.ones(p.shape) if name.endswith("weight") else torch.zeros(p.shape))
                continue
            if p.dim() > 1:  # a weight; the bias after it shares its fan-in
                fan = math.prod(p.shape[1:])
            out.append(_uniform(p.shape, 1 / math.sqrt(fan), gen))
        return out


class MLP(Net):
    """in -> hidden... -> classes, ReLU, dropout after every hidden layer (the tutorial's
    in -> 128 -> 64 -> classes with dropout 0.2 by default).

    Trained by a hand-written batched backward in the cohort engine
    (``models.fast``), registered against this class.
    """

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        hidden: Sequence[int] = (128, 64),
        dropout: float = 0.2,
    ) -> None:
        super().__init__()
        hidden = check_ints("hidden", hidden)
        self.dropout = check_dropout(dropout)
        self.in_features = int(in_features)
        self.sizes = [self.in_features, *hidden, int(num_classes)]
        self.dropout_units = sum(hidden) if self.dropout > 0 else 0
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in itertools.pairwise(self.sizes))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        off = 0
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x, off = take_mask(torch.relu(x), mask, off)
        return x


class LogReg(MLP):
    """Multinomial logistic regression: one linear layer (an MLP without hidden layers)."""

    def __init__(self, in_features: int, num_classes: int) -> None:
        super().__init__(in_features, num_classes, [], 0.0)


class CNN(Net):
    """conv3x3(c1)-GroupNorm-ReLU-maxpool2 -> conv3x3(c2)-GroupNorm-ReLU-maxpool2 ->
    dropout -> linear. For digits (8x8) the head sees 2x2 maps, for MNIST 7x7."""

    def __init__(
        self,
        image_shape: tuple[int, int, int],
        num_classes: int,
        channels: Sequence[int] = (16, 32),
        dropout: float = 0.2,
        norm_groups: int = 4,
    ) -> None:
        super().__init__()
        c1, c2 = check_ints("channels", channels, length=2)
        groups = check_groups(norm_groups, (c1, c2))
        c, h, w = (int(v) for v in image_shape)
        if h < 4 or w < 4:
            raise ValueError(f"model=cnn needs images of at least 4x4, got {h}x{w}")
        self.image = (c, h, w)
        self.in_features = c * h * w
        self.dropout = check_dropout(dropout)
        flat = c2 * (h // 4) * (w // 4)
        self.dropout_units = flat if self.dropout > 0 else 0
        self.conv0 = nn.Conv2d(c, c1, 3, padding=1)
        self.norm0 = nn.GroupNorm(groups, c1)
        self.conv1 = nn.Conv2d(c1, c2, 3, padding=1)
        self.norm1 = nn.GroupNorm(groups, c2)
        self.fc = nn.Linear(flat, int(num_classes))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        h = x.reshape(x.shape[0], *self.image)
        h = F.max_pool2d(torch.relu(self.norm0(self.conv0(h))), 2)
        h = F.max_pool2d(torch.relu(self.norm1(self.conv1(h))), 2).flatten(1)
        h, _ = take_mask(h, mask, 0)
        return self.fc(h)
