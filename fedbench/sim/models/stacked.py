"""Batched forwards written by hand for the built-in conv nets and the LSTM, registered
as fast paths (``models.fast``); autograd gives their backward.

``torch.func.vmap`` trains any module, but on a CPU its batching rules leave
max-pooling, GroupNorm and elementwise ops on permuted, non-contiguous tensors, and
those dominate: the small CNN trained 2x slower batched than client by client. Here
the cohort stays in one contiguous layout instead:

* conv nets: (batch, clients * channels, H, W): a conv with per-client weights is one
  grouped conv (``groups=clients``), GroupNorm with G groups is GroupNorm with
  ``clients * G`` groups (a client's channels are contiguous, so each group stays inside
  one client), ReLU and pooling do not care; the head is a batched GEMM.
* the LSTM: (clients, batch, ...): the embedding is one lookup into the stacked tables,
  each step's recurrence one ``bmm``.

Each must equal the module it stands for, client by client: ``ModelSpec.check``
compares the two on its dry run and refuses the model otherwise.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from fedbench.sim.models.fast import register
from fedbench.sim.models.leaf import CharLSTM, FemnistCNN
from fedbench.sim.models.nets import CNN
from fedbench.sim.models.resnet import ResNet


class _StackedLinear(torch.autograd.Function):
    """y = h @ w^T + b per client: h (C, B, in), w (C, out, in), b (C, out) or None.

    Autograd's own backward of ``baddbmm(b, h, w^T)`` yields dL/dw as a transposed view,
    and the optimiser's adds over it are strided: for FEMNIST's 3136x2048 layer that was
    4x the GEMM itself. Here dL/dw = dy^T h comes out in w's own layout.
    """

    @staticmethod
    def forward(ctx, h, w, b):
        ctx.save_for_backward(h, w)
        ctx.has_bias = b is not None
        if b is None:
            return torch.bmm(h, w.transpose(1, 2))
        return torch.baddbmm(b.unsqueeze(1), h, w.transpose(1, 2))

    @staticmethod
    def backward(ctx, dy):
        h, w = ctx.saved_tensors
        dh = torch.bmm(dy, w) if ctx.needs_input_grad[0] else None
        dw = torch.bmm(dy.transpose(1, 2), h)
        db = dy.sum(1) if ctx.has_bias else None
        return dh, dw, db


def _linear(w: torch.Tensor, b: torch.Tensor | None, h: torch.Tensor) -> torch.Tensor:
    """Per-client linear layer, (C, B, in) -> (C, B, out)."""
    return _StackedLinear.apply(h, w, b)


class _Stacked:
    """Base: the module's parameter names and shapes, and the params by name."""

    def __init__(self, module: nn.Module) -> None:
        named = list(module.named_parameters())
        self.names = [n for n, _ in named]
        self.shapes = [tuple(p.shape) for _, p in named]

    def by_name(self, params: Sequence[torch.Tensor]) -> dict[str, torch.Tensor]:
        return dict(zip(self.names, params, strict=True))


def _fold(x: torch.Tensor, image: tuple[int, int, int]) -> torch.Tensor:
    """(C, B, features) rows -> (B, C * channels, H, W) images."""
    C, B = x.shape[:2]
    return x.reshape(C, B, *image).transpose(0, 1).reshape(B, C * image[0], *image[1:])


def _conv(h: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None, **kw) -> torch.Tensor:
    """Per-client conv: h (B, C*I, H, W), w (C, O, I, k, k), b (C, O) -> (B, C*O, H', W')."""
    C = w.shape[0]
    return F.conv2d(h, w.flatten(0, 1), None if b is None else b.flatten(), groups=C, **kw)


def _norm(h: torch.Tensor, w: torch.Tensor, b: torch.Tensor, groups: int) -> torch.Tensor:
    """Per-client GroupNorm: ``groups`` per client, affine (C, O)."""
    return F.group_norm(h, w.shape[0] * groups, w.flatten(), b.flatten(), eps=1e-5)


def _unfold(h: torch.Tensor, C: int) -> torch.Tensor:
    """(B, C*O, ...) -> (C, B, O * ...) per-client flat features."""
    B = h.shape[0]
    return h.reshape(B, C, -1).transpose(0, 1)


def _head(
    h: torch.Tensor, w: torch.Tensor, b: torch.Tensor, mask: torch.Tensor | None
) -> torch.Tensor:
    if mask is not None:
        h = h * mask
    return _linear(w, b, h)


class CNNStacked(_Stacked):
    def __init__(self, module: CNN) -> None:
        super().__init__(module)
        self.image, self.groups = module.image, module.norm0.num_groups

    def forward(self, params, x, mask):
        p, C = self.by_name(params), x.shape[0]
        h = _fold(x, self.image)
        for i in (0, 1):
            h = _conv(h, p[f"conv{i}.weight"], p[f"conv{i}.bias"], padding=1)
            h = _norm(h, p[f"norm{i}.weight"], p[f"norm{i}.bias"], self.groups)
            h = F.max_pool2d(torch.relu(h), 2)
        return _head(_unfold(h, C), p["fc.weight"], p["fc.bias"], mask)


class FemnistStacked(_Stacked):
    def __init__(self, module: FemnistCNN) -> None:
        super().__init__(module)
        self.image = module.image

    def forward(self, params, x, mask):
        p, C = self.by_name(params), x.shape[0]
        h = _fold(x, self.image)
        for i in (0, 1):
            h = F.max_pool2d(
                torch.relu(_conv(h, p[f"conv{i}.weight"], p[f"conv{i}.bias"], padding=2)), 2
            )
        h = torch.relu(_linear(p["fc.weight"], p["fc.bias"], _unfold(h, C)))
        return _head(h, p["head.weight"], p["head.bias"], mask)


class ResNetStacked(_Stacked):
    def __init__(self, module: ResNet) -> None:
        super().__init__(module)
        self.image, self.groups = module.image, module.norm.num_groups
        self.blocks = [(f"blocks.{i}.", blk.conv0.stride[0], blk.short is not None)
                       for i, blk in enumerate(module.blocks)]  # fmt: skip

    def forward(self, params, x, mask):
        p, C, g = self.by_name(params), x.shape[0], self.groups
        h = torch.relu(_norm(_conv(_fold(x, self.image), p["stem.weight"], None, padding=1),
                             p["norm.weight"], p["norm.bias"], g))  # fmt: skip
        for pre, stride, short in self.blocks:
            y = _conv(h, p[pre + "conv0.weight"], None, stride=stride, padding=1)
            y = torch.relu(_norm(y, p[pre + "norm0.weight"], p[pre + "norm0.bias"], g))
            y = _norm(_conv(y, p[pre + "conv1.weight"], None, padding=1),
                      p[pre + "norm1.weight"], p[pre + "norm1.bias"], g)  # fmt: skip
            if short:
                h = _norm(_conv(h, p[pre + "short.0.weight"], None, stride=stride),
                          p[pre + "short.1.weight"], p[pre + "short.1.bias"], g)  # fmt: skip
            h = F.relu(y + h)
        return _head(_unfold(h.mean((2, 3)), C), p["fc.weight"], p["fc.bias"], mask)


class CharLSTMStacked(_Stacked):
    def __init__(self, module: CharLSTM) -> None:
        super().__init__(module)
        self.layers = len(module.cells)

    def forward(self, params, x, mask):
        p = self.by_name(params)
        table = p["embed.weight"]  # (C, V, E)
        C, V = table.shape[:2]
        ids = x.long() + V * torch.arange(C, device=x.device).view(C, 1, 1)
        h = F.embedding(ids, table.flatten(0, 1))  # (C, B, T, E)
        for i in range(self.layers):
            h = self._layer(h, p[f"cells.{i}.weight_ih"], p[f"cells.{i}.weight_hh"],
                            p[f"cells.{i}.bias"])  # fmt: skip
        return _head(h[:, :, -1], p["head.weight"], p["head.bias"], mask)

    @staticmethod
    def _layer(x, w_ih, w_hh, bias):
        """x (C, B, T, in) -> (C, B, T, H); ``_LSTMLayer``'s equations per client."""
        C, B, T = x.shape[:3]
        gates_x = _linear(w_ih, bias, x.reshape(C, B * T, -1)).view(C, B, T, -1)
        h = c = x.new_zeros(C, B, w_hh.shape[2])
        out = []
        for t in range(T):
            g = gates_x[:, :, t] + _linear(w_hh, None, h)
            i, f, z, o = g.chunk(4, dim=-1)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(z)
            h = torch.sigmoid(o) * torch.tanh(c)
            out.append(h)
        return torch.stack(out, 2)


for _cls, _fast in ((CNN, CNNStacked), (FemnistCNN, FemnistStacked), (ResNet, ResNetStacked),
                    (CharLSTM, CharLSTMStacked)):  # fmt: skip
    register(_cls)(_fast)
