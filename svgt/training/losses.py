"""The curriculum's losses (NOTES section 1)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def discrimination_loss(scores: torch.Tensor, labels: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """Stages 1-2: BCE on the discriminator score (s > 0 means harmful)."""
    return F.binary_cross_entropy_with_logits(scores, labels.to(scores.dtype), reduction=reduction)


def safety_penalties(scores: torch.Tensor) -> torch.Tensor:
    """Stage 3, per score: push scores of the guided states below the boundary; positive scores cost 3x."""
    return F.softplus(scores) + 2.0 * F.relu(scores)


def safety_loss(scores: torch.Tensor) -> torch.Tensor:
    return safety_penalties(scores).mean()


def weighted_mean(values: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """sum(w * v) / sum(w): the per-token behaviour losses averaged with the lead-token weights."""
    weights = weights.float()
    return (values * weights).sum() / weights.sum().clamp(min=1e-12)


def response_ce(logits: torch.Tensor, targets: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Weighted mean token cross-entropy; ``weights`` is a bool mask of real targets or per-token weights."""
    flat = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="none")
    weights = weights.reshape(-1).float()
    return (flat * weights).sum() / weights.sum().clamp(min=1.0)
