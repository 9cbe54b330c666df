"""The report's two CNN architectures, as the report printed them (notebooks 02-04).

Layer names follow the report's printed models (conv1, batchnorm1, maxpool1, ...), so the torchsummary tables
line up with the report's Table 1.4. The number of classes comes from the data.
"""

from __future__ import annotations

import torch
from torch import nn

IMAGE_SIZE = 28


class Architecture1(nn.Module):
    """Report section 1.5.1: two 3x3 convs with max-pooling, no BatchNorm, one hidden FC layer."""

    def __init__(self, num_classes: int, c1: int = 16, c2: int = 32, hidden: int = 32, dropout: float = 0.5):
        super().__init__()
        self.conv1 = nn.Conv2d(1, c1, kernel_size=3, stride=1, padding=1)
        self.conv2 = nn.Conv2d(c1, c2, kernel_size=3, stride=1, padding=1)
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool2d(kernel_size=2, stride=2)
        self.fc1 = nn.Linear(c2 * 7 * 7, hidden)
        self.dropout = nn.Dropout(dropout)
        self.fc2 = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.conv1(x)))
        x = self.maxpool(self.relu(self.conv2(x)))
        x = torch.flatten(x, 1)
        return self.fc2(self.dropout(self.relu(self.fc1(x))))


class Architecture2(nn.Module):
    """Report sections 1.5.2 and 1.6: conv3x3 + BatchNorm, conv5x5 + BatchNorm, then FC(hidden) with dropout."""

    def __init__(self, num_classes: int, c1: int = 8, c2: int = 32, hidden: int = 600, dropout: float = 0.5):
        super().__init__()
        self.conv1 = nn.Conv2d(1, c1, kernel_size=3, stride=1, padding=1)
        self.batchnorm1 = nn.BatchNorm2d(c1)
        self.relu = nn.ReLU()
        self.maxpool1 = nn.MaxPool2d(kernel_size=2, stride=2)
        self.conv2 = nn.Conv2d(c1, c2, kernel_size=5, stride=1, padding=2)
        self.batchnorm2 = nn.BatchNorm2d(c2)
        self.maxpool2 = nn.MaxPool2d(kernel_size=2, stride=2)
        self.fc1 = nn.Linear(c2 * 7 * 7, hidden)
        self.dropout = nn.Dropout(dropout)
        self.fc2 = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool1(self.relu(self.batchnorm1(self.conv1(x))))
        x = self.maxpool2(self.relu(self.batchnorm2(self.conv2(x))))
        x = torch.flatten(x, 1)
        return self.fc2(self.dropout(self.relu(self.fc1(x))))
