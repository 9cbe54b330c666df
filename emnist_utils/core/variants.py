"""Architectures beyond the report's two (notebooks 05 and 06).

They take the same four shape fields as the report's models (c1, c2, hidden, dropout), so model specs, cache
keys, trained-model files and every command work for them unchanged; each class says what the fields mean.

- `ConvStack` and its subclasses: Architecture 2 with one thing changed (number of conv blocks, activation,
  BatchNorm), for the comparisons the report promised (notebook 06).
- `CompactNet`: small VGG-style stages and global average pooling in place of the report's large fully
  connected layer (notebook 05).
- `LeanNet`: the compact idea with the cost moved off the full-resolution maps, so a 2-core CPU can train it
  (notebook 05's accuracy per CPU-second).
"""

from __future__ import annotations

import torch
from torch import nn

from .models import IMAGE_SIZE

ACTIVATIONS = {
    "relu": nn.ReLU,
    "leakyrelu": lambda: nn.LeakyReLU(0.1),
    "gelu": nn.GELU,
    "silu": nn.SiLU,
}


class ConvStack(nn.Module):
    """Architecture 2 generalised: `blocks` x (conv, [BatchNorm], activation, 2x2 max-pool), then
    FC(hidden) + dropout + FC(classes). Block 1 has c1 channels and a 3x3 kernel, later blocks c2 channels and
    5x5 kernels, so blocks=2 with ReLU and BatchNorm is exactly Architecture 2 (same layers, same count
    of parameters). Subclasses fix the changed property as class attributes so each has its own name,
    cache key and code fingerprint."""

    blocks = 2
    activation = "relu"
    batchnorm = True

    def __init__(self, num_classes: int, c1: int = 8, c2: int = 32, hidden: int = 600, dropout: float = 0.5):
        super().__init__()
        layers, channels, size = [], 1, IMAGE_SIZE
        for i in range(self.blocks):
            out, kernel = (c1, 3) if i == 0 else (c2, 5)
            layers.append(nn.Conv2d(channels, out, kernel_size=kernel, padding=kernel // 2))
            if self.batchnorm:
                layers.append(nn.BatchNorm2d(out))
            layers += [ACTIVATIONS[self.activation](), nn.MaxPool2d(2, 2)]
            channels, size = out, size // 2
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(channels * size * size, hidden),
            ACTIVATIONS[self.activation](),
            nn.Dropout(dropout),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class Depth1(ConvStack):
    """One conv block (3x3, c1 channels): the FC layer sees 14x14 maps."""

    blocks = 1


class Depth3(ConvStack):
    """Three conv blocks: the FC layer sees 3x3 maps."""

    blocks = 3


class Depth4(ConvStack):
    """Four conv blocks: the FC layer sees 1x1 maps (the most a 28x28 image allows with 2x2 pooling)."""

    blocks = 4


class LeakyReLUStack(ConvStack):
    activation = "leakyrelu"


class GELUStack(ConvStack):
    activation = "gelu"


class SiLUStack(ConvStack):
    activation = "silu"


class NoBatchNormStack(ConvStack):
    """Architecture 2 without its BatchNorm layers."""

    batchnorm = False


def conv_bn_relu(c_in: int, c_out: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]


class StagedNet(nn.Module):
    """Three stages of 3x3 conv + BatchNorm + ReLU (widths c1, c2, hidden; `convs_per_stage` convolutions each),
    2x2 max-pooling after the first two stages, global average pooling, dropout and one linear layer.
    `hidden` is the width of the last stage here, not a fully connected size."""

    convs_per_stage = (2, 2, 2)

    def __init__(self, num_classes: int, c1: int, c2: int, hidden: int, dropout: float):
        super().__init__()
        layers, channels = [], 1
        for stage, (width, convs) in enumerate(zip((c1, c2, hidden), self.convs_per_stage)):
            for _ in range(convs):
                layers += conv_bn_relu(channels, width)
                channels = width
            if stage < 2:
                layers.append(nn.MaxPool2d(2))
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dropout(self.features(x)))


class CompactNet(StagedNet):
    """Two convolutions in each of the three stages (six in all).

    Why: the report's model spends 94% of its 976k parameters on one fully connected layer over 7x7 maps;
    spending them on convolutions (more depth, small kernels) and pooling globally gives a network that
    generalises better with fewer parameters.
    """

    convs_per_stage = (2, 2, 2)

    def __init__(self, num_classes: int, c1: int = 48, c2: int = 96, hidden: int = 192, dropout: float = 0.3):
        super().__init__(num_classes, c1, c2, hidden, dropout)


class LeanNet(StagedNet):
    """CompactNet with one convolution instead of two at full resolution (five in all).

    Why: in CompactNet the second 28x28 convolution alone is about a third of the multiply-adds, and on a
    CPU the cost follows the multiply-adds of plain 3x3 convolutions closely (depthwise convolutions, fewer
    multiply-adds on paper, train three times slower there). Dropping it keeps the depth where the maps are
    small and cheap.
    """

    convs_per_stage = (1, 2, 2)

    def __init__(self, num_classes: int, c1: int = 32, c2: int = 64, hidden: int = 128, dropout: float = 0.2):
        super().__init__(num_classes, c1, c2, hidden, dropout)
