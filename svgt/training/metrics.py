"""Discrimination metrics (Acc / F1 / AUROC) used for stage reports and gates."""

from __future__ import annotations

import math

import numpy as np


def discrimination_metrics(labels: np.ndarray, scores: np.ndarray) -> dict[str, float]:
    """Accuracy and F1 at s > 0, AUROC over scores; AUROC is NaN when only one class is present."""
    # imported here: sklearn adds ~0.8 s to every training process's start, and only the reports use it
    from sklearn.metrics import accuracy_score, f1_score, roc_auc_score

    labels = np.asarray(labels).astype(int)
    preds = (np.asarray(scores) > 0).astype(int)
    auroc = float(roc_auc_score(labels, scores)) if len(set(labels.tolist())) == 2 else math.nan
    return {"accuracy": float(accuracy_score(labels, preds)), "f1": float(f1_score(labels, preds, zero_division=0)),
            "auroc": auroc, "n": int(len(labels)), "positives": int(labels.sum())}
