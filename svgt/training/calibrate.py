"""The guidance gate's operating points: the score thresholds above which a prompt, or an answer in
progress, is guided.

``model.gate: calibrated`` sets both on validation data to a stated over-refusal budget:

* ``gate_threshold``: the lowest threshold at which at most ``gate_budget`` of the validation split's
  benign prompts would open the gate (their stage-1 score exceeds it);
* ``gate_response_threshold``: the same for the backbone's own (unguided, greedy) answers to those benign
  prompts, judged exactly as the decode loop's refreshes judge them (the answer so far every r tokens up to
  the horizon, in its prompt's context), a row counting as opened if any refresh scores above the threshold.
  The backbone's own answers, not the dataset's: the gate judges what the backbone writes, and written
  reference answers are both fewer and in another style (on the embedded default a threshold calibrated on
  the 37 dataset answers opened the gate on 21% of held-out everyday prompts).

Refusals can only come from guided prompts, so this bounds the gate's share of over-refusal on data like
the validation set; the test split and the held-out sources show how it transfers. Never calibrated on an
evaluation set.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
import pandas as pd
import torch

from svgt.extract.store import HiddenStateStore
from svgt.model import ValueModule
from svgt.model.config import GatePoint
from svgt.training.data import SequenceExample, load_stage_examples
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


def answer_scores(module: ValueModule, store: HiddenStateStore, frame: pd.DataFrame, split: str, max_tokens: int,
                  horizon: int) -> np.ndarray:
    """Per benign-prompt answer in ``split``: the highest score over its prefixes of r, 2r, ... tokens (up to
    ``horizon``), judged in its prompt's context as the decode loop's refreshes judge it."""
    benign_ids = set(frame.loc[(frame["split"] == split) & (frame["prompt_harmful"] == 0), "id"])
    answers = [e for e in load_stage_examples(store, frame, "stage2", split, max_tokens) if e.id in benign_ids]
    if not answers:
        return np.zeros(0)
    every = module.config.refresh_interval
    best = np.full(len(answers), -np.inf)
    for t in range(every, max(every, horizon) + 1, every):
        prefixes = [SequenceExample(e.id, e.states[:t], e.label, e.prompt_states) for e in answers]
        best = np.maximum(best, score_examples(module, prefixes))
    return best


def decoded_answer_scores(module: ValueModule, model: Any, tokenizer: Any, prompts: list[str], horizon: int,
                          batch_size: int = 32) -> np.ndarray:
    """Per prompt: the highest score the gate's refreshes give the backbone's own greedy answer (prefixes of
    r, 2r, ... tokens while the answer lasts), from the decode loop itself with a gate that never opens."""
    from svgt.decoding.guidance import ValueGuidance
    from svgt.decoding.loop import guided_generate

    cfg = module.config
    best = []
    for start in range(0, len(prompts), batch_size):
        guidance = ValueGuidance(module, threshold=None)

        def closed(response: torch.Tensor, guidance: ValueGuidance = guidance) -> torch.Tensor:
            guidance.gate_fn(response)  # records the score the real gate would compare
            return torch.zeros(response.shape[0], dtype=torch.bool, device=response.device)

        out = guided_generate(model, tokenizer, prompts[start:start + batch_size], guidance.bridge_fn,
                              prompt_fn=guidance.observe_prompt, gate_fn=closed, layer=cfg.layer,
                              num_bridge_tokens=cfg.num_bridge_tokens, refresh_interval=cfg.refresh_interval,
                              momentum=cfg.momentum, max_new_tokens=horizon)
        refreshes = guidance.gate_scores[1:]  # the first call judged the prompt
        for i, tokens in enumerate(out.token_ids):
            seen = [float(s[i]) for k, s in enumerate(refreshes) if (k + 1) * cfg.refresh_interval <= len(tokens)]
            best.append(max(seen) if seen else -math.inf)
    return np.array(best)


def calibrate_gate(module: ValueModule, store: HiddenStateStore, frame: pd.DataFrame, max_tokens: int,
                   horizon: int, backbone: tuple[Any, Any] | None = None) -> dict[str, Any]:
    """Set the gate's thresholds from the validation split (``gate: calibrated``; other gates are left as
    configured) and return them with the gate's open rates on validation and test prompts and answers.

    ``backbone`` (model, tokenizer): judge the backbone's own answers (the default in stage 3); without it
    the dataset's answers to benign prompts stand in (unit tests, no backbone at hand)."""
    cfg = module.config
    module.eval()
    answer_source = "backbone" if backbone is not None else "dataset"

    def answers_of(split: str) -> np.ndarray:
        if backbone is None:
            return answer_scores(module, store, frame, split, max_tokens, horizon)
        rows = frame[(frame["split"] == split) & (frame["prompt_harmful"] == 0)]
        prompts = rows["prompt"].drop_duplicates().tolist()
        return decoded_answer_scores(module, backbone[0], backbone[1], prompts, horizon)

    val_answers = answers_of("val")
    if cfg.gate == "calibrated":
        examples = load_stage_examples(store, frame, "stage1", "val", max_tokens)
        benign = score_examples(module, [e for e in examples if e.label == 0])
        finite = val_answers[np.isfinite(val_answers)]
        points = [GatePoint(b, budget_threshold(benign, b), budget_threshold(finite, b) if finite.size else None)
                  for b in sorted({cfg.gate_budget, *cfg.gate_budgets})]
        main = next(p for p in points if p.budget == cfg.gate_budget)
        module.config = dataclasses.replace(cfg, gate_threshold=main.threshold,
                                            gate_response_threshold=main.response_threshold, gate_points=points)
    threshold = module.config.threshold
    if threshold is None:
        return {"gate": "off"}
    response_threshold = module.config.response_threshold
    out: dict[str, Any] = {"gate": module.config.gate, "gate_threshold": threshold,
                           "gate_response_threshold": response_threshold, "gate_budget": cfg.gate_budget,
                           "gate_answers": answer_source}
    for point in module.config.gate_points:  # flat keys: DVC metrics
        out[f"budget_{point.budget:g}_threshold"] = point.threshold
        out[f"budget_{point.budget:g}_response_threshold"] = point.response_threshold
    for split in ("val", "test"):
        out |= open_rates(module, store, frame, split, max_tokens, threshold)
        answers = val_answers if split == "val" else answers_of(split)
        out[f"{split}_benign_answers_n"] = int(answers.size)
        out[f"{split}_benign_answers_gate_open_rate"] = (float((answers > response_threshold).mean())
                                                         if answers.size else math.nan)
    return out
