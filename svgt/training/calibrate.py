"""The guidance gate's operating point: the score threshold above which a prompt is guided.

``model.gate: calibrated`` sets it on validation data to a stated over-refusal budget: the lowest threshold
at which at most ``gate_budget`` of the validation split's benign prompts would open the gate (their
stage-1 score s exceeds it). Refusals can only come from guided prompts, so this bounds the gate's share of
over-refusal on data like the validation set; the test split and held-out sources show how it transfers.
Never calibrated on an evaluation set.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
import pandas as pd

from svgt.hidden_states import HiddenStateStore
from svgt.model import ValueModule
from svgt.training.data import load_stage_examples
from svgt.training.stages import score_examples


def budget_threshold(benign_scores: np.ndarray, budget: float) -> float:
    """The lowest threshold t with at most ``floor(budget * n)`` benign scores strictly above t."""
    if benign_scores.size == 0:
        raise ValueError("cannot calibrate the gate: the validation split has no benign prompts")
    allowed = math.floor(budget * benign_scores.size + 1e-9)
    ranked = np.sort(benign_scores)[::-1]
    return float(ranked[allowed]) if allowed < ranked.size else float(ranked[-1]) - 1e-6


def open_rates(module: ValueModule, store: HiddenStateStore, frame: pd.DataFrame, split: str, max_tokens: int,
               threshold: float) -> dict[str, Any]:
    examples = load_stage_examples(store, frame, "stage1", split, max_tokens)
    labels = np.array([e.label for e in examples])
    scores = score_examples(module, examples)
    out: dict[str, Any] = {}
    for name, label in (("benign", 0), ("harmful", 1)):
        picked = scores[labels == label]
        out[f"{split}_{name}_n"] = int(picked.size)
        out[f"{split}_{name}_gate_open_rate"] = float((picked > threshold).mean()) if picked.size else math.nan
    return out


def calibrate_gate(module: ValueModule, store: HiddenStateStore, frame: pd.DataFrame, max_tokens: int
                   ) -> dict[str, Any]:
    """Set ``module.config.gate_threshold`` from the validation split (``gate: calibrated``; other gates are
    left as configured) and return the threshold with the gate's open rates on validation and test prompts."""
    cfg = module.config
    if cfg.gate == "calibrated":
        examples = load_stage_examples(store, frame, "stage1", "val", max_tokens)
        benign = score_examples(module, [e for e in examples if e.label == 0])
        module.config = dataclasses.replace(cfg, gate_threshold=budget_threshold(benign, cfg.gate_budget))
    threshold = module.config.threshold
    if threshold is None:
        return {"gate": "off"}
    out: dict[str, Any] = {"gate": module.config.gate, "gate_threshold": threshold, "gate_budget": cfg.gate_budget}
    for split in ("val", "test"):
        out |= open_rates(module, store, frame, split, max_tokens, threshold)
    return out
