"""CIFAR AlexNet: five convs (64-192-384-256-256) and a Linear head."""

from __future__ import annotations

import torch
import torch.nn as nn


class AlexNet(nn.Module):
    def __init__(self, num_classes: int = 10, width: float = 1.0) -> None:
        super().__init__()
        c1, c2, c3, c4, c5 = (max(1, round(c * width)) for c in (64, 192, 384, 256, 256))
        self.features = nn.Sequential(
            nn.Conv2d(3, c1, 3, stride=2, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(c1, c2, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(c2, c3, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(c3, c4, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(c4, c5, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(nn.Dropout(0.5), nn.Linear(c5 * 2 * 2, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


def alexnet(num_classes: int = 10, width: float = 1.0) -> AlexNet:
    """CIFAR AlexNet for 32x32 inputs (the head sees a 2x2 map of the last conv)."""
    return AlexNet(num_classes, width)
