"""A CIFAR ResNet (He et al. 2016, section 4.2: depth 6n+2, three stages of n basic
blocks at widths w, 2w, 4w) with GroupNorm in place of batch-norm (Hsieh et al. 2020,
"The Non-IID Data Quagmire": batch statistics neither average under FedAvg nor batch
across clients). ``depth=20, width=16``: ResNet-20, 272,474 parameters for 10 classes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from fedbench.sim.models.nets import Net, check_dropout, check_groups, check_int, take_mask


class ResNet(Net):
    """ResNet-(6n+2) for small images; ``dropout`` masks the pooled features (0: off)."""

    def __init__(
        self,
        image_shape: tuple[int, int, int],
        num_classes: int,
        depth: int = 20,  # 6n+2: 8, 14, 20, 32, 44, 56, 110; deeper => more compute
        width: int = 16,  # channels of the first stage; parameters grow with its square
        norm_groups: int = 2,  # GroupNorm groups; must divide width
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        depth, width = check_int("depth", depth, 8), check_int("width", width)
        if (depth - 2) % 6:
            raise ValueError(f"model.depth={depth} is invalid: must be 6n+2 (8, 14, 20, 32, ...)")
        groups = check_groups(norm_groups, (width, 2 * width, 4 * width))
        c, h, w = (int(v) for v in image_shape)
        self.image = (c, h, w)
        self.in_features = c * h * w
        self.dropout = check_dropout(dropout)
        self.dropout_units = 4 * width if self.dropout > 0 else 0
        self.stem = nn.Conv2d(c, width, 3, padding=1, bias=False)
        self.norm = nn.GroupNorm(groups, width)
        blocks, inputs = [], width
        for stage in range(3):
            for b in range((depth - 2) // 6):
                stride = 2 if stage > 0 and b == 0 else 1
                blocks.append(_Block(inputs, width << stage, stride, groups))
                inputs = width << stage
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(inputs, int(num_classes))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        h = torch.relu(self.norm(self.stem(x.reshape(x.shape[0], *self.image))))
        h = self.blocks(h).mean((2, 3))  # global average pool
        h, _ = take_mask(h, mask, 0)
        return self.fc(h)


class _Block(nn.Module):
    """conv3x3-GN-ReLU-conv3x3-GN + shortcut (1x1 conv + GN where the shape changes)."""

    def __init__(self, inputs: int, outputs: int, stride: int, groups: int) -> None:
        super().__init__()
        self.conv0 = nn.Conv2d(inputs, outputs, 3, stride=stride, padding=1, bias=False)
        self.norm0 = nn.GroupNorm(groups, outputs)
        self.conv1 = nn.Conv2d(outputs, outputs, 3, padding=1, bias=False)
        self.norm1 = nn.GroupNorm(groups, outputs)
        self.short = None
        if stride != 1 or inputs != outputs:
            self.short = nn.Sequential(
                nn.Conv2d(inputs, outputs, 1, stride=stride, bias=False),
                nn.GroupNorm(groups, outputs),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.norm0(self.conv0(x)))
        h = self.norm1(self.conv1(h))
        return F.relu(h + (x if self.short is None else self.short(x)))
