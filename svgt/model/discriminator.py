"""The discriminator D: value state z -> harm score s (s > 0 means harmful; train with BCEWithLogits)."""

from __future__ import annotations

import torch
from torch import nn


class Discriminator(nn.Module):
    """MLP d_v -> d_v/2 -> 1 with GELU.

    Kept smooth (GELU, no dropout) because its input gradient is the correction direction: a ReLU MLP
    would give piecewise-constant directions and dropout would make the correction random.
    """

    def __init__(self, d_v: int):
        super().__init__()
        if d_v < 2:
            raise ValueError(f"d_v must be >= 2, got {d_v}")
        self.net = nn.Sequential(nn.Linear(d_v, d_v // 2), nn.GELU(), nn.Linear(d_v // 2, 1))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """Logits s [B] for z [B, d_v]."""
        return self.net(z).squeeze(-1)
