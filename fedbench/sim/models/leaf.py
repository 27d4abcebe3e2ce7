"""The LEAF benchmark's models (Caldas et al. 2018, "LEAF: A Benchmark for Federated
Settings"): the FEMNIST CNN and the Shakespeare next-character LSTM.

The LSTM is written with batched matrix products (one input projection for every time
step, then one ``h @ W_hh^T`` per step) instead of ``nn.LSTM``: ``torch.func.vmap`` has
no batching rule for ``aten::lstm``, and this form lets a whole cohort train as one
batch. Same gate equations and order as ``nn.LSTM`` (i, f, g, o).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from fedbench.sim.models.nets import Net, _uniform, check_dropout, check_int, check_ints, take_mask


class FemnistCNN(Net):
    """LEAF's FEMNIST CNN: conv5x5(32)-ReLU-maxpool2 -> conv5x5(64)-ReLU-maxpool2 ->
    FC(2048)-ReLU -> [dropout] -> classes. 6,603,710 parameters on 28x28x1 with 62
    classes. ``dropout`` (0 in LEAF) masks the 2048 hidden units."""

    def __init__(
        self,
        image_shape: tuple[int, int, int],
        num_classes: int,
        channels: Sequence[int] = (32, 64),
        hidden: int = 2048,  # the FC layer; most of the parameters (and the bytes) are here
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        c1, c2 = check_ints("channels", channels, length=2)
        hidden = check_int("hidden", hidden)
        c, h, w = (int(v) for v in image_shape)
        if h < 4 or w < 4:
            raise ValueError(f"model=femnist_cnn needs images of at least 4x4, got {h}x{w}")
        self.image = (c, h, w)
        self.in_features = c * h * w
        self.dropout = check_dropout(dropout)
        self.dropout_units = hidden if self.dropout > 0 else 0
        self.conv0 = nn.Conv2d(c, c1, 5, padding=2)
        self.conv1 = nn.Conv2d(c1, c2, 5, padding=2)
        self.fc = nn.Linear(c2 * (h // 4) * (w // 4), hidden)
        self.head = nn.Linear(hidden, int(num_classes))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        h = x.reshape(x.shape[0], *self.image)
        h = F.max_pool2d(torch.relu(self.conv0(h)), 2)
        h = F.max_pool2d(torch.relu(self.conv1(h)), 2).flatten(1)
        h, _ = take_mask(torch.relu(self.fc(h)), mask, 0)
        return self.head(h)


class CharLSTM(Net):
    """LEAF's Shakespeare model: embedding(8) -> LSTM(256) -> LSTM(256) -> linear to the
    vocabulary, predicting the character after a window of ``seq_len``.

    Rows of ``x`` (batch, seq_len) hold character ids (as floats, like every feature
    row). ``dropout`` (0 in LEAF) masks the last hidden state before the head.
    """

    def __init__(
        self,
        vocab_size: int,
        seq_len: int,
        embedding: int = 8,  # larger => more parameters per character
        hidden: int = 256,  # LSTM width; parameters grow with its square
        layers: int = 2,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        vocab, self.seq_len = check_int("vocab_size", vocab_size), check_int("seq_len", seq_len)
        embedding, hidden = check_int("embedding", embedding), check_int("hidden", hidden)
        layers = check_int("layers", layers)
        self.in_features = self.seq_len
        self.hidden = hidden
        self.dropout = check_dropout(dropout)
        self.dropout_units = hidden if self.dropout > 0 else 0
        self.embed = nn.Embedding(vocab, embedding)
        self.cells = nn.ModuleList(
            _LSTMLayer(embedding if i == 0 else hidden, hidden) for i in range(layers)
        )
        self.head = nn.Linear(hidden, vocab)

    def init(self, gen: torch.Generator) -> list[torch.Tensor]:
        """PyTorch's defaults: embedding N(0, 1), LSTM uniform +-1/sqrt(hidden), the head
        uniform +-1/sqrt(hidden); all drawn from ``gen`` in ``parameters()`` order."""
        out = []
        for name, p in self.named_parameters():
            if name.startswith("embed."):
                out.append(torch.randn(p.shape, generator=gen))
            else:
                out.append(_uniform(p.shape, 1 / math.sqrt(self.hidden), gen))
        return out

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        h = self.embed(x.long())  # (batch, seq, embedding)
        for cell in self.cells:
            h = cell(h)
        last, _ = take_mask(h[:, -1], mask, 0)
        return self.head(last)


class _LSTMLayer(nn.Module):
    """One LSTM layer over a whole sequence, ``nn.LSTM``'s equations with one bias."""

    def __init__(self, inputs: int, hidden: int) -> None:
        super().__init__()
        self.weight_ih = nn.Parameter(torch.empty(4 * hidden, inputs))
        self.weight_hh = nn.Parameter(torch.empty(4 * hidden, hidden))
        self.bias = nn.Parameter(torch.empty(4 * hidden))
        bound = 1 / math.sqrt(hidden)
        for p in self.parameters():
            nn.init.uniform_(p, -bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (batch, seq, inputs) -> hidden states (batch, seq, hidden)."""
        gates_x = F.linear(x, self.weight_ih, self.bias)  # every step's input part at once
        hidden = self.weight_hh.shape[1]
        h = c = x.new_zeros(x.shape[0], hidden)
        out = []
        # unbind, not gates_x[:, t]: the backward of T selects fills T zero tensors of
        # gates_x's size (O(T^2) memory traffic, 3/4 of a training step); unbind's stacks once
        for gx in gates_x.unbind(1):
            g = gx + h @ self.weight_hh.T
            i, f, z, o = g.chunk(4, dim=-1)
            c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(z)
            h = torch.sigmoid(o) * torch.tanh(c)
            out.append(h)
        return torch.stack(out, 1)
