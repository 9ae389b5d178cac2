"""The ingest step: sources (or the embedded seed set) -> one canonical Parquet file + dataset card.

Order of operations, each counted in the summary and the card:
read/adapt each source (``limit`` = its first N rows) -> concatenate -> coerce types -> drop exact
duplicate (normalised prompt, response) pairs (first occurrence wins) -> make ids unique ->
assign splits by prompt -> write Parquet with exactly ``CANONICAL_SCHEMA`` atomically -> card.
Lengths are not enforced here: the validation gate reports over-long rows with their ids.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from svgt.core.io import atomic_path, sha256_file
from svgt.core.params import DataConfig, IngestSource
from svgt.data.adapters import ADAPTERS, adapt
from svgt.data.card import Provenance, SourceRecord, leakage_count, write_dataset_card
from svgt.data.readers import HF_PREFIX, IngestError, read_table
from svgt.data.schema import (
    CANONICAL_SCHEMA,
    COLUMNS,
    LABEL_COLUMNS,
    REQUIRED_TEXT_COLUMNS,
    normalize_prompt,
    stage_mask,
)
from svgt.data.seed import build_seed_with_provenance
from svgt.data.splits import assign_splits

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DedupReport:
    duplicates_dropped: int
    label_conflicts: int  # duplicate groups whose labels disagreed (the first row's labels were kept)
    labels_filled: int  # labels missing on a kept row, taken from its (agreeing) duplicates


@dataclass(frozen=True)
class IngestSummary:
    out_parquet: str
    card_path: str
    sha256: str
    rows: int
    rows_read: int
    duplicates_dropped: int
    label_conflicts: int
    ids_renamed: int
    split_rows_moved: int
    prompt_leakage: int
    by_split: dict[str, int] = field(default_factory=dict)
    by_source: dict[str, int] = field(default_factory=dict)
    stages: dict[str, int] = field(default_factory=dict)

    def __str__(self) -> str:
        splits = ", ".join(f"{k} {v}" for k, v in self.by_split.items())
        stages = ", ".join(f"{k} {v}" for k, v in self.stages.items())
        return (
            f"{self.rows} rows ({splits}); read {self.rows_read}, {self.duplicates_dropped} duplicates "
            f"dropped, {self.label_conflicts} label conflicts; stage rows: {stages}; "
            f"{len(self.by_source)} sources; sha256 {self.sha256[:12]}"
        )


# ---------------------------------------------------------------------------------------------
# reading
# ---------------------------------------------------------------------------------------------


def source_name(src: IngestSource) -> str:
    """The ``source`` column value for a configured source: adapter + file (or dataset) name."""
    if src.path.startswith(HF_PREFIX):
        return f"{src.adapter}:{src.path[len(HF_PREFIX) :]}"
    return f"{src.adapter}:{src.path.rstrip('/').rsplit('/', 1)[-1]}"


def read_source(
    src: IngestSource, storage_options: dict[str, Any] | None = None
) -> tuple[pd.DataFrame, SourceRecord]:
    """Read and adapt one configured source."""
    if src.adapter not in ADAPTERS:
        raise IngestError(
            f"{src.path}: unknown adapter {src.adapter!r} (known: {', '.join(sorted(ADAPTERS))})"
        )
    if src.limit is not None and src.limit < 1:
        raise IngestError(f"{src.path}: limit must be a positive number of rows, got {src.limit}")
    raw = read_table(src.path, storage_options=storage_options, split=src.split)
    rows_read = len(raw)
    if src.limit is not None:
        raw = raw.head(src.limit)
    frame = adapt(raw, src.adapter, origin=src.path, source=source_name(src))
    spec = ADAPTERS[src.adapter]
    record = SourceRecord(
        name=source_name(src),
        origin=src.path,
        license=", ".join(sorted(frame["license"].unique())) or spec.default_license,
        rows_read=rows_read,
        rows_kept=len(frame),
        cap=src.limit,
        labels=f"adapter {src.adapter!r}: {spec.description}",
        responses="as provided by the source",
    )
    return frame, record


def read_sources(
    sources: list[IngestSource], seed: int, storage_options: dict[str, Any] | None = None
) -> tuple[pd.DataFrame, Provenance]:
    parts = [read_source(src, storage_options) for src in sources]
    provenance = Provenance(kind="sources", seed=seed, sources=[r for _, r in parts])
    return pd.concat([f for f, _ in parts], ignore_index=True), provenance


# ---------------------------------------------------------------------------------------------
# cleaning
# ---------------------------------------------------------------------------------------------


def coerce_canonical(df: pd.DataFrame) -> pd.DataFrame:
    """Exactly the canonical columns, typed: text as ``str``/None, labels as ``Int8`` in {0, 1}."""
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise IngestError(f"canonical frame lacks column(s) {', '.join(missing)}")
    out = pd.DataFrame(index=df.index)
    for col in COLUMNS:
        if col in LABEL_COLUMNS:
            values = pd.to_numeric(df[col], errors="raise").astype("Int8")
            bad = values.notna() & ~values.isin([0, 1])
            if bad.any():
                i = int(bad.to_numpy().nonzero()[0][0])
                raise IngestError(f"column {col!r} row {i}: label {values.iloc[i]!r} is not 0, 1 or null")
            out[col] = values
        else:
            out[col] = df[col].astype(object).where(df[col].notna(), None)
    for col in REQUIRED_TEXT_COLUMNS:
        if col == "split":
            continue
        empty = out[col].isna()
        if empty.any():
            i = int(empty.to_numpy().nonzero()[0][0])
            raise IngestError(f"column {col!r} row {i}: empty value (required)")
    return out.reset_index(drop=True)


def dedupe(df: pd.DataFrame) -> tuple[pd.DataFrame, DedupReport]:
    """Drop exact duplicate (normalised prompt, response) pairs, keeping the first occurrence.

    Duplicates often carry complementary labels (PyRIT's objective file labels harm, its refusal
    file labels refusal, for the same pair): a label missing on the kept row is filled from its
    duplicates when they all agree. Disagreeing labels are counted as conflicts and the kept row's
    own value stays (put the most trusted source first in ``data.sources``).
    """
    out = df.copy()
    key = pd.DataFrame(
        {
            "p": out["prompt"].map(normalize_prompt),
            "r": out["response"].map(lambda r: "\x00<none>" if r is None else r),
        }
    )
    conflict = pd.Series(False, index=out.index)
    filled = 0
    for col in LABEL_COLUMNS:
        values = out[col]
        distinct = values.groupby([key["p"], key["r"]], sort=False).transform("nunique")
        first = values.groupby([key["p"], key["r"]], sort=False).transform("first")
        fill = values.isna() & (distinct == 1)
        out[col] = values.where(~fill, first).astype("Int8")
        conflict |= distinct > 1
        filled += int((fill & ~key.duplicated(keep="first")).sum())
    dup = key.duplicated(keep="first")
    conflicts = int(key[conflict].drop_duplicates().shape[0])
    report = DedupReport(int(dup.sum()), conflicts, filled)
    return out.loc[~dup].reset_index(drop=True), report


def unique_ids(df: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """Ids must be unique; later repeats get ``#2``, ``#3`` ... (counted), never silently merged."""
    out = df.copy()
    seen = out["id"].duplicated(keep="first")
    if not seen.any():
        return out, 0
    counter = out.groupby("id").cumcount() + 1
    out.loc[seen, "id"] = out.loc[seen, "id"] + "#" + counter[seen].astype(str)
    while out["id"].duplicated().any():  # a suffixed id may itself exist already
        again = out["id"].duplicated(keep="first")
        out.loc[again, "id"] = out.loc[again, "id"] + "#"
    return out, int(seen.sum())


# ---------------------------------------------------------------------------------------------
# writing
# ---------------------------------------------------------------------------------------------


def to_arrow(df: pd.DataFrame) -> pa.Table:
    """The frame as an Arrow table with exactly ``CANONICAL_SCHEMA`` (non-null fields checked)."""
    for f in CANONICAL_SCHEMA:
        if not f.nullable and df[f.name].isna().any():
            i = int(df[f.name].isna().to_numpy().nonzero()[0][0])
            raise IngestError(f"column {f.name!r} row {i}: null in a non-nullable field")
    table = pa.Table.from_pandas(df[list(COLUMNS)], schema=CANONICAL_SCHEMA, preserve_index=False)
    table.validate(full=True)
    return table.replace_schema_metadata(None)


def write_parquet_atomic(df: pd.DataFrame, path: Path) -> str:
    """Write via a temporary file renamed into place; return the file's sha256."""
    table = to_arrow(df)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp)
    return sha256_file(path)


def run_ingest(
    cfg: DataConfig,
    out_parquet: Path,
    card_path: Path,
    cache_dir: Path,
    storage_options: dict[str, Any] | None = None,
) -> IngestSummary:
    """Build the canonical dataset from ``cfg.sources`` (or the seed set when empty) and write it."""
    if cfg.sources:
        frame, provenance = read_sources(cfg.sources, cfg.seed, storage_options)
    else:
        frame, provenance = build_seed_with_provenance(
            cache_dir,
            cfg.seed,
            max_prompt_chars=cfg.max_prompt_chars,
            max_response_chars=cfg.max_response_chars,
        )
    rows_read = len(frame)
    frame = coerce_canonical(frame)
    frame, dedup = dedupe(frame)
    frame, renamed = unique_ids(frame)
    frame, split_report = assign_splits(
        frame, val_fraction=cfg.val_fraction, test_fraction=cfg.test_fraction, seed=cfg.seed
    )
    provenance.counters.update(
        {
            "rows_before_dedup": rows_read,
            "duplicate_pairs_dropped": dedup.duplicates_dropped,
            "duplicate_label_conflicts": dedup.label_conflicts,
            "labels_filled_from_duplicates": dedup.labels_filled,
            "ids_renamed": renamed,
            "split_groups_preset": split_report.preset_groups,
            "split_leaked_groups_fixed": split_report.leaked_groups_fixed,
            "split_rows_moved": split_report.rows_moved,
            "split_groups_assigned": split_report.assigned_groups,
            "split_near_duplicate_prompts_grouped": split_report.near_duplicate_prompts,
        }
    )
    digest = write_parquet_atomic(frame, Path(out_parquet))
    summary = write_dataset_card(frame, provenance, card_path)
    log.info("wrote %s (%d rows) and %s", out_parquet, len(frame), card_path)
    return IngestSummary(
        out_parquet=str(out_parquet),
        card_path=str(card_path),
        sha256=digest,
        rows=len(frame),
        rows_read=rows_read,
        duplicates_dropped=dedup.duplicates_dropped,
        label_conflicts=dedup.label_conflicts,
        ids_renamed=renamed,
        split_rows_moved=split_report.rows_moved,
        prompt_leakage=leakage_count(frame),
        by_split=summary["by_split"],
        by_source=summary["by_source"],
        stages={view: int(stage_mask(frame, view).sum()) for view in ("stage1", "stage2", "stage3")},
    )
