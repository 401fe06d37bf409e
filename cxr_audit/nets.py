"""Small networks the tool trains itself: the demo's "deployed" classifier and concept checkers.

Kept small on purpose: they must train in minutes on 2 CPU cores. The classifier has dropout before its
head so that MC-dropout uncertainty is meaningful, like the DenseNets it stands in for.
"""

from __future__ import annotations

import torch
from torch import nn


def _block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
        nn.Conv2d(c_out, c_out, 3, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
    )


class SmallCXRNet(nn.Module):
    """A compact CNN: 1-channel image in, one logit per concept out."""

    def __init__(self, n_outputs: int, width: int = 16, dropout: float = 0.2):
        super().__init__()
        self.features = nn.Sequential(
            _block(1, width), _block(width, width * 2), _block(width * 2, width * 4), _block(width * 4, width * 8),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(width * 8, n_outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.features(x)).flatten(1)
        return self.head(self.dropout(x))
