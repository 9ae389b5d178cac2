"""Linear probes shared by ITI, ConVA and NeVA's leakage read-out: logistic regression, held-out accuracy.

Features are standardised for the fit (hidden states have a few huge dimensions) and the solution is
mapped back, so ``weight`` and ``bias`` act on raw activations: p = sigmoid(x . weight + bias).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import train_test_split


@dataclass(frozen=True)
class LinearProbe:
    weight: torch.Tensor  # [D]
    bias: float
    accuracy: float  # on the held-out rows

    def logit(self, x: torch.Tensor) -> torch.Tensor:
        return x.float() @ self.weight + self.bias

    def probability(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.logit(x))


def holdout_split(labels: torch.Tensor, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Stratified (train, held-out) row indices; both classes must have at least two rows."""
    y = labels.numpy()
    counts = np.bincount(y.astype(int), minlength=2)
    if len(counts) != 2 or counts.min() < 2:
        raise ValueError(f"need at least two rows of each class to fit a probe, got class counts {counts.tolist()}")
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"holdout_fraction must lie in (0, 1), got {fraction}")
    n_test = max(2, round(fraction * len(y)))
    train, test = train_test_split(np.arange(len(y)), test_size=n_test, stratify=y, random_state=seed)
    return torch.as_tensor(np.sort(train)), torch.as_tensor(np.sort(test))


def fit_probe(
    x: torch.Tensor, y: torch.Tensor, train: torch.Tensor, test: torch.Tensor, *, c: float = 1.0, seed: int = 0
) -> LinearProbe:
    """Logistic regression on rows ``train`` of x [N, D] (labels 0/1), scored on rows ``test``."""
    x = x.double()
    xt, yt = x[train], y[train]
    mean, std = xt.mean(0), xt.std(0).clamp_min(1e-6)
    clf = LogisticRegression(C=c, max_iter=2000, random_state=seed)
    clf.fit(((xt - mean) / std).numpy(), yt.numpy())
    w = torch.as_tensor(clf.coef_[0]) / std
    b = float(clf.intercept_[0]) - float((w * mean).sum())
    pred = ((x[test] @ w + b) > 0).long()
    accuracy = float((pred == y[test].long()).float().mean())
    return LinearProbe(weight=w.float(), bias=b, accuracy=accuracy)
