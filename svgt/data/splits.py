"""Train/val/test assignment grouped by prompt, so no prompt is ever seen in two splits.

Rows are grouped by prompt: a harmful prompt with a refusal, a compliant answer and a prompt-only row
is one group and lands in one split, otherwise the value module could memorise a test prompt from its
training pairs. Near-duplicate prompts (reworded copies, ``svgt.data.near_duplicates``) join one group
too, keyed by the ``prompt_key`` of the group's first prompt.

* Groups without a source-given split are stratified by (max prompt_harmful, max
  response_harmful) over the group, ordered within a stratum by ``sha256(seed:key)`` and cut at
  the configured fractions. The order depends only on the seed and the prompt, so a prompt's split
  is stable across runs and barely moves when other rows are added.
* Rows whose source already carries a split keep it. If a prompt's rows carry different splits
  (leakage in the source), the whole group moves to the most held-out one, by priority
  test > val > train: benchmark test sets stay complete and comparable, at the cost of a few
  training rows. Unassigned rows of such a group join it too.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import pandas as pd

from svgt.data.near_duplicates import near_duplicate_groups
from svgt.data.schema import SPLITS, prompt_key

SPLIT_PRIORITY = {"train": 0, "val": 1, "test": 2}


@dataclass(frozen=True)
class SplitReport:
    preset_groups: int  # prompt groups whose split came from the source
    near_duplicate_prompts: int  # distinct prompts that joined another prompt's group as its near-duplicate
    leaked_groups_fixed: int  # of those, groups whose rows the source put in several splits
    rows_moved: int  # rows whose source split was overridden by the leakage rule
    assigned_groups: int  # groups assigned here (stratified by the hash order)


def check_fractions(val_fraction: float, test_fraction: float) -> None:
    if not (0.0 <= val_fraction < 1.0 and 0.0 <= test_fraction < 1.0 and val_fraction + test_fraction < 1.0):
        raise ValueError(
            f"split fractions must be in [0, 1) with val + test < 1; got val={val_fraction}, "
            f"test={test_fraction}"
        )


def _order_key(seed: int, key: str) -> str:
    return hashlib.sha256(f"{seed}:{key}".encode()).hexdigest()


def _stratum(group: pd.DataFrame) -> tuple[int, int]:
    ph = group["prompt_harmful"].max()
    rh = group["response_harmful"].max()
    return (-1 if pd.isna(ph) else int(ph), -1 if pd.isna(rh) else int(rh))


def assign_splits(
    df: pd.DataFrame, *, val_fraction: float, test_fraction: float, seed: int
) -> tuple[pd.DataFrame, SplitReport]:
    """Return a copy of ``df`` with ``split`` filled for every row, and what was done."""
    check_fractions(val_fraction, test_fraction)
    out = df.copy()
    keys, joined = group_keys(out["prompt"])
    preset = out["split"].where(out["split"].isin(SPLITS))
    final: dict[str, str] = {}
    leaked = 0
    for key, values in preset.groupby(keys):
        present = set(values.dropna())
        if present:
            final[key] = max(present, key=SPLIT_PRIORITY.__getitem__)
            leaked += len(present) > 1
    rows_moved = int((preset.notna() & (preset != keys.map(final))).sum())

    free = out.loc[~keys.isin(final.keys())]
    strata: dict[tuple[int, int], list[str]] = {}
    for key, group in free.groupby(keys[free.index], sort=False):
        strata.setdefault(_stratum(group), []).append(str(key))
    for members in strata.values():
        members.sort(key=lambda k: _order_key(seed, k))
        n_test = round(len(members) * test_fraction)
        n_val = round(len(members) * val_fraction)
        for i, key in enumerate(members):
            final[key] = "test" if i < n_test else "val" if i < n_test + n_val else "train"
    out["split"] = keys.map(final).astype(object)
    report = SplitReport(
        preset_groups=len(final) - sum(len(m) for m in strata.values()),
        near_duplicate_prompts=joined,
        leaked_groups_fixed=leaked,
        rows_moved=rows_moved,
        assigned_groups=sum(len(m) for m in strata.values()),
    )
    return out, report


def group_keys(prompts: pd.Series) -> tuple[pd.Series, int]:
    """(split-group key per row, number of distinct prompts that joined a near-duplicate's group)."""
    exact = prompts.map(prompt_key)
    distinct = list(dict.fromkeys(exact))
    text = dict(zip(exact, prompts, strict=True))
    groups = near_duplicate_groups([text[k] for k in distinct])
    group_of = {k: distinct[g] for k, g in zip(distinct, groups, strict=True)}
    return exact.map(group_of), sum(1 for i, g in enumerate(groups) if g != i)


def leaked_prompts(df: pd.DataFrame) -> list[str]:
    """Prompt keys found in more than one split (empty for a correctly split dataset)."""
    keys = df["prompt"].map(prompt_key)
    per_key = df.assign(_key=keys).groupby("_key")["split"].nunique()
    return sorted(per_key[per_key > 1].index)
