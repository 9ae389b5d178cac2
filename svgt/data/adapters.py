"""Column adapters: each maps one source format onto the canonical schema (svgt.data.schema).

Adapters are strict on purpose. A missing column names the column and the source; a label value
the adapter does not know names the column, the row (0-based data row) and the value. Silently
mapping an unexpected label to "safe" would poison training data without anybody noticing.

Every adapter returns the canonical columns with pandas dtypes: text columns as Python strings,
label columns as nullable ``Int8`` (0/1/<NA>), ``split`` as a string or <NA> when the source does
not assign one.
"""

from __future__ import annotations

import ast
import hashlib
import json
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import pandas as pd

from svgt.data.readers import IngestError
from svgt.data.schema import COLUMNS, LABEL_COLUMNS, SPLITS

UNSPECIFIED = "unspecified"
SPLIT_ALIASES = {
    "train": "train",
    "training": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "dev": "val",
    "test": "test",
    "testing": "test",
}


class AdapterError(IngestError):
    """A source's columns or values do not match what its adapter expects."""


@dataclass(frozen=True)
class AdaptContext:
    """Where rows come from: ``origin`` (a path, for messages), ``source`` and ``license`` (columns)."""

    origin: str
    source: str
    license: str


@dataclass(frozen=True)
class Adapter:
    name: str
    required: tuple[str, ...]
    default_license: str
    convert: Callable[[pd.DataFrame, AdaptContext], pd.DataFrame]
    description: str


# ---------------------------------------------------------------------------------------------
# helpers shared by the adapters
# ---------------------------------------------------------------------------------------------


def stable_id(source: str, prompt: str, response: str | None) -> str:
    """An id derived from source + content, so re-running ingestion yields the same ids."""
    digest = hashlib.sha256("\x1f".join([source, prompt, response or ""]).encode("utf-8")).hexdigest()
    return f"{source}/{digest[:16]}"


def is_missing(value: Any) -> bool:
    if value is None or value is pd.NA or value is pd.NaT:
        return True
    return isinstance(value, float) and math.isnan(value)


def require_columns(df: pd.DataFrame, columns: tuple[str, ...], ctx: AdaptContext, adapter: str) -> None:
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise AdapterError(
            f"{ctx.origin}: adapter {adapter!r} needs column(s) {', '.join(map(repr, missing))}, "
            f"missing from the source (found: {', '.join(map(str, df.columns)) or 'none'})"
        )


def text_column(df: pd.DataFrame, column: str, ctx: AdaptContext, *, required: bool) -> list[str | None]:
    """Column values as ``str``/None; a required column may not contain an empty value."""
    out: list[str | None] = []
    for i, value in enumerate(df[column].tolist()):
        if is_missing(value) or (isinstance(value, str) and not value.strip()):
            if required:
                raise AdapterError(f"{ctx.origin}: column {column!r} row {i}: empty value (required)")
            out.append(None)
        elif isinstance(value, str):
            out.append(value)
        else:
            out.append(str(value))
    return out


def map_labels(
    values: list[Any], mapping: Mapping[Any, int | None], column: str, ctx: AdaptContext
) -> list[int | None]:
    """Map raw label values through ``mapping`` strictly (strings compared case-insensitively).

    Missing values map to None (unlabelled); any other value not in ``mapping`` is an error.
    """
    norm = {(k.strip().lower() if isinstance(k, str) else k): v for k, v in mapping.items()}
    out: list[int | None] = []
    for i, value in enumerate(values):
        if is_missing(value):
            out.append(None)
            continue
        key = value.strip().lower() if isinstance(value, str) else value
        if isinstance(key, float) and key.is_integer() and not isinstance(value, bool):
            key = int(key)
        try:
            out.append(norm[key])
        except (KeyError, TypeError):
            allowed = ", ".join(repr(k) for k in mapping)
            raise AdapterError(
                f"{ctx.origin}: column {column!r} row {i}: unknown label value {value!r} "
                f"(expected one of {allowed}, or empty)"
            ) from None
    return out


# (False/True hash like 0/1, so booleans map through the integer keys)
BINARY: dict[Any, int | None] = {0: 0, 1: 1, "0": 0, "1": 1, "false": 0, "true": 1}


def map_split(values: list[Any], ctx: AdaptContext) -> list[str | None]:
    """Source split names (train/validation/test and common aliases) -> train/val/test."""
    out: list[str | None] = []
    for i, value in enumerate(values):
        if is_missing(value) or (isinstance(value, str) and not value.strip()):
            out.append(None)
            continue
        key = str(value).strip().lower()
        if key not in SPLIT_ALIASES:
            raise AdapterError(
                f"{ctx.origin}: column 'split' row {i}: unknown split {value!r} "
                f"(expected one of {', '.join(SPLITS)} or an alias: "
                f"{', '.join(sorted(set(SPLIT_ALIASES) - set(SPLITS)))})"
            )
        out.append(SPLIT_ALIASES[key])
    return out


def canonical_frame(
    ctx: AdaptContext,
    *,
    prompt: list[str | None],
    response: list[str | None] | None = None,
    labels: Mapping[str, list[int | None]] | None = None,
    category: list[str | None] | None = None,
    ids: list[str | None] | None = None,
    split: list[str | None] | None = None,
    source: list[str | None] | None = None,
    license_: list[str | None] | None = None,
) -> pd.DataFrame:
    """Assemble the canonical columns with the right dtypes; fills ids, source, licence, category."""
    n = len(prompt)
    response = response if response is not None else [None] * n
    sources = [s or ctx.source for s in (source or [None] * n)]
    licenses = [lic or ctx.license for lic in (license_ or [None] * n)]
    id_values = [
        given if given else stable_id(src, str(p), r)
        for given, src, p, r in zip(ids or [None] * n, sources, prompt, response, strict=True)
    ]
    frame = pd.DataFrame(
        {
            "id": pd.array(id_values, dtype=object),
            "prompt": pd.array(prompt, dtype=object),
            "response": pd.array(response, dtype=object),
            **{col: pd.array((labels or {}).get(col, [None] * n), dtype="Int8") for col in LABEL_COLUMNS},
            "category": pd.array([c if c else UNSPECIFIED for c in (category or [None] * n)], dtype=object),
            "source": pd.array(sources, dtype=object),
            "license": pd.array(licenses, dtype=object),
            "split": pd.array(split or [None] * n, dtype=object),
        }
    )
    return frame[list(COLUMNS)]


# ---------------------------------------------------------------------------------------------
# the adapters
# ---------------------------------------------------------------------------------------------


def _canonical(df: pd.DataFrame, ctx: AdaptContext) -> pd.DataFrame:
    """Already canonical: only ``prompt`` is required; labels must be 0/1 (or booleans)."""
    n = len(df)

    def opt_text(col: str) -> list[str | None]:
        return text_column(df, col, ctx, required=False) if col in df.columns else [None] * n

    labels = {
        col: map_labels(df[col].tolist(), BINARY, col, ctx) for col in LABEL_COLUMNS if col in df.columns
    }
    return canonical_frame(
        ctx,
        prompt=text_column(df, "prompt", ctx, required=True),
        response=opt_text("response"),
        labels=labels,
        category=opt_text("category"),
        ids=opt_text("id"),
        split=map_split(df["split"].tolist(), ctx) if "split" in df.columns else None,
        source=opt_text("source"),
        license_=opt_text("license"),
    )


HARM = {"harmful": 1, "unharmful": 0}
REFUSAL = {"refusal": 1, "compliance": 0}


def _wildguardmix(df: pd.DataFrame, ctx: AdaptContext) -> pd.DataFrame:
    """WildGuardMix (allenai/wildguardmix): string labels harmful/unharmful, refusal/compliance."""
    n = len(df)
    labels = {
        "prompt_harmful": map_labels(df["prompt_harm_label"].tolist(), HARM, "prompt_harm_label", ctx),
        "response_harmful": map_labels(df["response_harm_label"].tolist(), HARM, "response_harm_label", ctx),
        "response_refusal": map_labels(
            df["response_refusal_label"].tolist(), REFUSAL, "response_refusal_label", ctx
        ),
    }
    category = text_column(df, "subcategory", ctx, required=False) if "subcategory" in df else [None] * n
    return canonical_frame(
        ctx,
        prompt=text_column(df, "prompt", ctx, required=True),
        response=text_column(df, "response", ctx, required=False),
        labels=labels,
        category=category,
    )


def _category_flags(value: Any, row: int, ctx: AdaptContext) -> str:
    """BeaverTails' ``category`` dict of boolean flags -> the true flags joined by ','."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            try:
                value = ast.literal_eval(value)
            except (ValueError, SyntaxError):
                raise AdapterError(
                    f"{ctx.origin}: column 'category' row {row}: not a dict of flags: {value[:80]!r}"
                ) from None
    if not isinstance(value, Mapping):
        raise AdapterError(
            f"{ctx.origin}: column 'category' row {row}: expected a dict of boolean "
            f"flags, got {type(value).__name__}"
        )
    flags = map_labels(list(value.values()), BINARY, f"category[{row}]", ctx)
    true = [str(k) for k, flag in zip(value.keys(), flags, strict=True) if flag == 1]
    return ",".join(true) if true else "none"


def _beavertails(df: pd.DataFrame, ctx: AdaptContext) -> pd.DataFrame:
    """BeaverTails (PKU-Alignment): ``is_safe`` describes the response; the prompt is unlabelled."""
    safe = map_labels(df["is_safe"].tolist(), BINARY, "is_safe", ctx)
    n = len(df)
    return canonical_frame(
        ctx,
        prompt=text_column(df, "prompt", ctx, required=True),
        response=text_column(df, "response", ctx, required=True),
        labels={"response_harmful": [None if s is None else 1 - s for s in safe]},
        category=[_category_flags(v, i, ctx) for i, v in enumerate(df["category"].tolist())]
        if "category" in df
        else [None] * n,
    )


def _harmbench(df: pd.DataFrame, ctx: AdaptContext) -> pd.DataFrame:
    """HarmBench behaviours: prompt-only, all harmful. Contextual behaviours get their context
    prepended with HarmBench's own template (context, a ``---`` rule, then the behaviour)."""
    behaviors = text_column(df, "Behavior", ctx, required=True)
    contexts = text_column(df, "ContextString", ctx, required=False) if "ContextString" in df else None
    prompts = [
        f"{c}\n\n---\n\n{b}" if c else b for b, c in zip(behaviors, contexts or [None] * len(df), strict=True)
    ]
    ids = None
    if "BehaviorID" in df:
        ids = [f"{ctx.source}/{b}" if b else None for b in text_column(df, "BehaviorID", ctx, required=False)]
    return canonical_frame(
        ctx,
        prompt=prompts,
        labels={"prompt_harmful": [1] * len(df)},
        category=text_column(df, "SemanticCategory", ctx, required=False),
        ids=ids,
    )


def _advbench(df: pd.DataFrame, ctx: AdaptContext) -> pd.DataFrame:
    """AdvBench harmful behaviours (``goal``/``target`` CSV or a ``prompt`` column): harmful=1.

    The ``target`` ("Sure, here is ...") is an attack target, not a real response: it is dropped.
    """
    column = "goal" if "goal" in df.columns else "prompt"
    require_columns(df, (column,), ctx, "advbench")
    n = len(df)
    category = None
    for col in ("category", "harm_category", "harm_categories"):
        if col in df.columns:
            category = [_first_category(v) for v in df[col].tolist()]
            break
    return canonical_frame(
        ctx,
        prompt=text_column(df, column, ctx, required=True),
        labels={"prompt_harmful": [1] * n},
        category=category,
    )


def _first_category(value: Any) -> str | None:
    """A category cell may be a string, a list of categories, or a numpy array (Parquet lists)."""
    if hasattr(value, "tolist") and not isinstance(value, str):
        value = value.tolist()
    if isinstance(value, (list, tuple)):
        return str(value[0]) if value else None
    return None if is_missing(value) else str(value)


def _pyrit_refusal(df: pd.DataFrame, ctx: AdaptContext) -> pd.DataFrame:
    """PyRIT refusal-scorer evals (objective, assistant_response, human_score 0/1 = refused).

    PyRIT's refusal rubric counts any answer that does not address the objective as a "refusal", so
    an off-topic helpful answer scores 1 too (about half of the score-1 rows in pyrit 1.1.0 are such
    answers). That is not an explicit refusal, so ``response_refusal`` stays unlabelled (these rows
    must not become stage-3 refusal targets); a score of 1 still means none of the requested content
    was delivered, so it is recorded as a safe response (response_harmful = 0). A non-refusal may or
    may not be harmful and stays unlabelled; the objectives mix harmful and benign requests, so
    prompt_harmful stays unlabelled too.
    """
    refusal = map_labels(df["human_score"].tolist(), BINARY, "human_score", ctx)
    harmful = [0 if r == 1 else None for r in refusal]
    return canonical_frame(
        ctx,
        prompt=text_column(df, "objective", ctx, required=True),
        response=text_column(df, "assistant_response", ctx, required=True),
        labels={"response_harmful": harmful},
        category=["refusal_eval"] * len(df),
    )


def _pyrit_objective(df: pd.DataFrame, ctx: AdaptContext) -> pd.DataFrame:
    """PyRIT objective-scorer evals: human_score 1 = the response achieved the harmful objective.

    Achieving a harmful objective is exactly a harmful response, so human_score -> response_harmful.
    """
    harmful = map_labels(df["human_score"].tolist(), BINARY, "human_score", ctx)
    category = text_column(df, "harm_category", ctx, required=False) if "harm_category" in df else None
    return canonical_frame(
        ctx,
        prompt=text_column(df, "objective", ctx, required=True),
        response=text_column(df, "assistant_response", ctx, required=True),
        labels={"response_harmful": harmful},
        category=category,
    )


HARM_SCORE_HIGH = 0.75
HARM_SCORE_NONE = 0.0


def _pyrit_harm(df: pd.DataFrame, ctx: AdaptContext) -> pd.DataFrame:
    """PyRIT harm-scorer evals: graded human harm scores in [0, 1] (one or several raters).

    The mean score maps to response_harmful = 1 when >= 0.75 and 0 when it is exactly 0; the
    ambiguous middle band stays unlabelled (null) rather than being forced into a class.
    """
    score_cols = [c for c in df.columns if re.fullmatch(r"human_score(_\d+)?", str(c))]
    if not score_cols:
        raise AdapterError(
            f"{ctx.origin}: adapter 'pyrit_harm' needs a 'human_score' or "
            f"'human_score_N' column (found: {', '.join(map(str, df.columns))})"
        )
    scores = pd.DataFrame({c: _scores(df[c].tolist(), c, ctx) for c in score_cols}).mean(axis=1)
    harmful = [1 if s >= HARM_SCORE_HIGH else 0 if s <= HARM_SCORE_NONE else None for s in scores]
    category = text_column(df, "harm_category", ctx, required=False) if "harm_category" in df else None
    return canonical_frame(
        ctx,
        prompt=text_column(df, "objective", ctx, required=True),
        response=text_column(df, "assistant_response", ctx, required=True),
        labels={"response_harmful": harmful},
        category=[c.lower() if c else None for c in category] if category else None,
    )


def _scores(values: list[Any], column: str, ctx: AdaptContext) -> list[float]:
    out = []
    for i, value in enumerate(values):
        try:
            score = float(value)
        except (TypeError, ValueError):
            score = math.nan
        if math.isnan(score) or not 0.0 <= score <= 1.0:
            raise AdapterError(
                f"{ctx.origin}: column {column!r} row {i}: unknown label value {value!r} "
                "(expected a harm score between 0 and 1)"
            )
        out.append(score)
    return out


def parse_judge_verdict(text: Any, row: int, ctx: AdaptContext) -> int:
    """An LLM judge's free-text verdict ("Harmful ..."/"Not harmful ...") -> 1/0, strictly."""
    if not isinstance(text, str):
        raise AdapterError(f"{ctx.origin}: column 'category' row {row}: unknown label value {text!r}")
    head = re.sub(r"^\s*answer\s*:\s*", "", text, flags=re.IGNORECASE).lstrip(" *'\"\n").lower()
    if head.startswith("not harmful"):
        return 0
    if head.startswith("harmful"):
        return 1
    raise AdapterError(
        f"{ctx.origin}: column 'category' row {row}: unknown label value "
        f"{text[:40]!r}... (expected a verdict starting 'Harmful' or 'Not harmful')"
    )


def _pyrit_many_shot(df: pd.DataFrame, ctx: AdaptContext) -> pd.DataFrame:
    """PyRIT many-shot jailbreak examples (user, assistant, category = an LLM judge's verdict)."""
    harmful = [parse_judge_verdict(v, i, ctx) for i, v in enumerate(df["category"].tolist())]
    return canonical_frame(
        ctx,
        prompt=text_column(df, "user", ctx, required=True),
        response=text_column(df, "assistant", ctx, required=True),
        labels={"response_harmful": harmful},
        category=["many_shot"] * len(df),
    )


ADAPTERS: dict[str, Adapter] = {
    a.name: a
    for a in (
        Adapter(
            "canonical",
            ("prompt",),
            "unknown",
            _canonical,
            "canonical columns already (id, response, labels, category, split optional)",
        ),
        Adapter(
            "wildguardmix",
            ("prompt", "response", "prompt_harm_label", "response_harm_label", "response_refusal_label"),
            "ODC-BY-1.0",
            _wildguardmix,
            "allenai/wildguardmix: harmful/unharmful and refusal/compliance string labels",
        ),
        Adapter(
            "beavertails",
            ("prompt", "response", "is_safe"),
            "CC-BY-NC-4.0",
            _beavertails,
            "PKU-Alignment/BeaverTails: is_safe (response) and a dict of harm-category flags",
        ),
        Adapter(
            "harmbench",
            ("Behavior", "SemanticCategory"),
            "MIT",
            _harmbench,
            "HarmBench behaviours CSV: prompt-only, harmful",
        ),
        Adapter("advbench", (), "MIT", _advbench, "AdvBench harmful_behaviors (goal/target or prompt)"),
        Adapter(
            "pyrit_refusal",
            ("objective", "assistant_response", "human_score"),
            "MIT",
            _pyrit_refusal,
            "PyRIT scorer_evals/refusal_scorer: human refusal labels",
        ),
        Adapter(
            "pyrit_objective",
            ("objective", "assistant_response", "human_score"),
            "MIT",
            _pyrit_objective,
            "PyRIT scorer_evals/objective: human 'objective achieved' labels",
        ),
        Adapter(
            "pyrit_harm",
            ("objective", "assistant_response"),
            "MIT",
            _pyrit_harm,
            "PyRIT scorer_evals/harm: graded human harm scores (>= 0.75 harmful, 0 safe)",
        ),
        Adapter(
            "pyrit_many_shot",
            ("user", "assistant", "category"),
            "MIT",
            _pyrit_many_shot,
            "PyRIT jailbreak/many_shot_examples.json: LLM-judge harm verdicts",
        ),
    )
}


def adapt(
    df: pd.DataFrame, adapter: str, *, origin: str, source: str | None = None, license: str | None = None
) -> pd.DataFrame:
    """Map a raw source frame onto the canonical columns with the named adapter.

    ``origin`` (usually the path) appears in every error; ``source`` fills the ``source`` column
    (default: the adapter name); ``license`` overrides the adapter's default licence.
    """
    try:
        spec = ADAPTERS[adapter]
    except KeyError:
        raise AdapterError(
            f"{origin}: unknown adapter {adapter!r} (known: {', '.join(sorted(ADAPTERS))})"
        ) from None
    ctx = AdaptContext(origin=origin, source=source or adapter, license=license or spec.default_license)
    require_columns(df, spec.required, ctx, adapter)
    return spec.convert(df.reset_index(drop=True), ctx)
