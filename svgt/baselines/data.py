"""Training rows for the baselines, from the canonical dataset's train split (the stage views of schema.py).

* probe rows: the stage-2 view (a response with a ``response_harmful`` label), label safe = 1 - harmful,
  a seeded class-balanced sample of at most ``max_rows``;
* gate rows: the stage-1 view (one row per distinct prompt with a ``prompt_harmful`` label), label
  relevant = harmful prompt, balanced, at most ``max_rows``;
* preference pairs (DPO): within the stage-2 view, every prompt that has both a safe and a harmful
  response gives (chosen = safe, rejected = harmful) pairs; if fewer than ``max_pairs`` exist, harmful
  responses to other prompts are paired with a refusal written for a harmful prompt (stage-3 rows with
  ``response_refusal == 1``), the answer we want in their place.
"""

from __future__ import annotations

import random
from pathlib import Path

import pandas as pd

from svgt.baselines.dpo import PreferencePair
from svgt.data.schema import normalize_prompt, stage_mask


def train_frame(data_path: str | Path) -> pd.DataFrame:
    frame = pd.read_parquet(data_path)
    missing = {"prompt", "response", "prompt_harmful", "response_harmful", "split"} - set(frame.columns)
    if missing:
        raise ValueError(f"{data_path}: missing column(s) {sorted(missing)}")
    train = frame[frame["split"] == "train"].reset_index(drop=True)
    if train.empty:
        raise ValueError(f"{data_path}: no rows with split == 'train'")
    return train


def balanced_sample(frame: pd.DataFrame, label: pd.Series, max_rows: int, seed: int) -> pd.DataFrame:
    """At most ``max_rows // 2`` rows per class (fewer if a class is smaller), seeded; original order kept."""
    per_class = max_rows // 2
    picked = []
    for value in (0, 1):
        rows = frame.index[label == value]
        picked += list(pd.Series(rows).sample(n=min(per_class, len(rows)), random_state=seed)) if len(rows) else []
    return frame.loc[sorted(picked)]


def probe_rows(frame: pd.DataFrame, max_rows: int, seed: int) -> pd.DataFrame:
    rows = frame[stage_mask(frame, "stage2")].copy()
    rows["safe"] = (rows["response_harmful"].astype(int) == 0).astype(int)
    return balanced_sample(rows, rows["safe"], max_rows, seed).reset_index(drop=True)


def gate_rows(frame: pd.DataFrame, max_rows: int, seed: int) -> pd.DataFrame:
    rows = frame[stage_mask(frame, "stage1")]
    rows = rows.loc[~rows["prompt"].map(normalize_prompt).duplicated()].copy()
    rows["relevant"] = rows["prompt_harmful"].astype(int)
    return balanced_sample(rows, rows["relevant"], max_rows, seed).reset_index(drop=True)


def preference_pairs(frame: pd.DataFrame, max_pairs: int, seed: int) -> tuple[list[PreferencePair], dict[str, int]]:
    rng = random.Random(seed)
    rows = frame[stage_mask(frame, "stage2")]
    safe_by_prompt: dict[str, list[str]] = {}
    harmful: list[tuple[str, str, str]] = []  # (key, prompt, response)
    for prompt, response, label in zip(rows["prompt"], rows["response"], rows["response_harmful"], strict=True):
        key = normalize_prompt(prompt)
        if int(label) == 0:
            safe_by_prompt.setdefault(key, []).append(response)
        else:
            harmful.append((key, prompt, response))
    rng.shuffle(harmful)
    same = [PreferencePair(p, rng.choice(safe_by_prompt[k]), r) for k, p, r in harmful if k in safe_by_prompt]
    pairs = same[:max_pairs]
    refusals = frame[stage_mask(frame, "stage3") & (frame["prompt_harmful"] == 1) & (frame["response_refusal"] == 1)]
    refusal_texts = list(refusals["response"])
    substituted = 0
    if len(pairs) < max_pairs and refusal_texts:
        for _, p, r in (h for h in harmful if h[0] not in safe_by_prompt):
            if len(pairs) >= max_pairs:
                break
            pairs.append(PreferencePair(p, rng.choice(refusal_texts), r))
            substituted += 1
    return pairs, {"same_prompt": len(pairs) - substituted, "refusal_substitute": substituted}
