"""The data validation gate (``svgt validate``) built on Great Expectations (GX Core 1.x).

One canonical Parquet file goes in; a :class:`ValidationResult` comes out, together with a GX Data
Docs site under ``report_dir/data_docs`` and ``report_dir/validation_summary.json`` (written on every
run, pass or fail, including runs where the file cannot be read).

How the checks are run:

* The file is read with pyarrow first. A missing, truncated or corrupt file, or string columns holding
  bytes that are not valid UTF-8, raise :class:`DataValidationError` naming the file (and the column
  and row ids for bad UTF-8): there is nothing meaningful to validate.
* Everything else is an expectation in one GX suite, run by a checkpoint on an ephemeral context
  whose Data Docs site writes HTML under ``report_dir``. Checks GX has no built-in expectation for
  (prompt leakage across splits, per-stage minimums and class balance) are computed in pandas as
  extra derived columns (``_prompt_split_count``, ``_stage1_rows``, ``_stage1_class`` ...) that
  ordinary GX expectations then check, so they appear in the same suite and the same Data Docs page.
  (``UnexpectedRowsExpectation`` has SQL and Spark metrics only; it cannot run on a pandas source.)
* A column that is missing or has the wrong type fails ``ExpectColumnToExist`` / the type
  expectation; the value checks that depend on it are not added to the suite (GX would only raise
  "column does not exist"), and the failure message lists them as skipped.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from svgt.core.errors import BadInput
from svgt.core.io import atomic_dir, sha256_file, write_json_atomic
from svgt.core.params import ValidateConfig
from svgt.data.expectations import INT_DTYPES, Plan, build_plan, is_text

# GX reads these when it is imported: no usage statistics, no network calls.
os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")

SUMMARY_NAME = "validation_summary.json"
DOCS_DIR = "data_docs"
SITE_NAME = "svgt_data_docs"
SUITE_NAME = "svgt_canonical_dataset"
MAX_EXAMPLES = 5

# labels are read with pyarrow's types_mapper so int8-with-nulls does not become float64
_ARROW_TO_PANDAS_INT = {getattr(pa, name.lower())(): getattr(pd, f"{name}Dtype")() for name in INT_DTYPES}


class DataValidationError(BadInput):
    """The dataset cannot be validated at all (unreadable file, undecodable text)."""


@dataclass(frozen=True)
class Failure:
    expectation: str  # GX expectation type (snake_case) or an svgt pseudo-expectation for read errors
    column: str | None  # None for table-level checks
    unexpected_count: int  # offending rows (0 where the check is about an aggregate)
    example_ids: list[str]  # up to MAX_EXAMPLES offending row ids
    message: str  # one line, starts with "FAILED"


@dataclass
class ValidationResult:
    success: bool
    failures: list[Failure]
    n_rows: int
    report_path: Path | None  # Data Docs index.html
    skipped: list[str] = field(default_factory=list)  # checks not run because their column is unusable
    summary_path: Path | None = None
    seconds: float = 0.0


def format_failures(result: ValidationResult) -> str:
    """A short human-readable verdict: one line per failure."""
    if result.success:
        return f"PASSED: {result.n_rows} rows, all checks passed (report: {result.report_path})"
    lines = [f.message for f in result.failures]
    lines.append(f"{len(result.failures)} check(s) failed on {result.n_rows} rows (report: {result.report_path})")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------- reading


def read_canonical(parquet_path: Path) -> pa.Table:
    """Read the file and prove its text decodes; raise DataValidationError naming the file otherwise."""
    path = Path(parquet_path)
    if not path.exists():
        raise DataValidationError(f"{path}: file not found")
    try:
        table = pq.read_table(path)
    except (OSError, ValueError, pa.ArrowException) as err:
        raise DataValidationError(f"{path}: not a readable Parquet file ({err})") from err
    _check_utf8(path, table)
    return table


def _check_utf8(path: Path, table: pa.Table) -> None:
    """pyarrow does not validate UTF-8 when reading Parquet; decoding fails later, far from the cause."""
    problems = []
    for name, typ in zip(table.column_names, table.schema.types, strict=True):
        if not is_text(typ):
            continue
        column = table.column(name)
        try:
            column.validate(full=True)
            continue
        except pa.ArrowInvalid:
            pass
        try:  # string -> binary reinterprets the bytes and never validates them
            raw = column.cast(pa.large_binary()).to_pylist()
        except pa.ArrowException:
            problems.append(f"column '{name}': holds bytes that are not valid UTF-8")
            continue
        bad = []
        for i, value in enumerate(raw):
            if value is None:
                continue
            try:
                value.decode("utf-8")
            except UnicodeDecodeError:
                bad.append(i)
        if bad:
            ids = _row_labels(table, bad[:MAX_EXAMPLES])
            problems.append(
                f"column '{name}': {len(bad)} rows hold bytes that are not valid UTF-8 (e.g. ids {', '.join(ids)})"
            )
    if problems:
        raise DataValidationError(f"{path}: " + "; ".join(problems))


def _row_labels(table: pa.Table, rows: list[int]) -> list[str]:
    if "id" in table.column_names and is_text(table.schema.field("id").type):
        raw = table.column("id").cast(pa.large_binary()).take(rows).to_pylist()
        return [f"row {r}" if v is None else v.decode("utf-8", "replace") for r, v in zip(rows, raw, strict=True)]
    return [f"row {r}" for r in rows]


def _to_pandas(table: pa.Table) -> pd.DataFrame:
    df = table.to_pandas(types_mapper=_ARROW_TO_PANDAS_INT.get)
    for name, typ in zip(table.column_names, table.schema.types, strict=True):
        # object dtype of Python str: GX's pandas type check then inspects values ("str"), and the
        # pandas 3 "str" dtype would not match any GX type name.
        if is_text(typ):
            df[name] = pd.Series(table.column(name).to_pylist(), index=df.index, dtype=object)
    return df


# ------------------------------------------------------------------------------------------ running GX


def _gx_context(docs_dir: Path):
    import great_expectations as gx
    from great_expectations.data_context.types.base import (
        DataContextConfig,
        InMemoryStoreBackendDefaults,
        ProgressBarsConfig,
    )

    config = DataContextConfig(
        store_backend_defaults=InMemoryStoreBackendDefaults(init_temp_docs_sites=False),
        data_docs_sites={
            SITE_NAME: {
                "class_name": "SiteBuilder",
                "show_how_to_buttons": False,
                "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(docs_dir)},
                "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
            }
        },
        analytics_enabled=False,
        progress_bars=ProgressBarsConfig(globally=False, metric_calculations=False),
    )
    return gx.get_context(mode="ephemeral", project_config=config)


def _run_gx(plan: Plan, docs_dir: Path) -> dict[str, Any]:
    """Run the suite through a checkpoint that updates the Data Docs site; return results by check key."""
    import great_expectations as gx
    from great_expectations.checkpoint import UpdateDataDocsAction

    context = _gx_context(docs_dir)
    asset = context.data_sources.add_pandas("svgt").add_dataframe_asset("canonical_dataset")
    batch = asset.add_batch_definition_whole_dataframe("whole_file")
    suite = context.suites.add(gx.ExpectationSuite(name=SUITE_NAME))
    for check in plan.checks:
        suite.add_expectation(check.expectation)
    definition = context.validation_definitions.add(
        gx.ValidationDefinition(name="canonical_dataset", data=batch, suite=suite)
    )
    checkpoint = context.checkpoints.add(
        gx.Checkpoint(
            name="svgt_validate",
            validation_definitions=[definition],
            actions=[UpdateDataDocsAction(name="update_data_docs", site_names=[SITE_NAME])],
            result_format={
                "result_format": "SUMMARY",
                "partial_unexpected_count": 20,
                "unexpected_index_column_names": [plan.index_column],
            },
        )
    )
    outcome = checkpoint.run(batch_parameters={"dataframe": plan.frame})
    results = {}
    for suite_result in outcome.run_results.values():
        for r in suite_result.results:
            key = (r.expectation_config.meta or {}).get("svgt_check")
            results[key] = r
    return results


def _example_ids(result: dict[str, Any], index_column: str) -> list[str]:
    ids: list[str] = []
    for row in result.get("partial_unexpected_index_list") or []:
        value = row.get(index_column) if isinstance(row, dict) else row
        text = str(value)
        if text not in ids:
            ids.append(text)
        if len(ids) == MAX_EXAMPLES:
            break
    return ids


def _failures(plan: Plan, results: dict[str, Any]) -> list[Failure]:
    failures = []
    for check in plan.checks:
        r = results.get(check.key)
        if r is None:
            failures.append(Failure(check.key, check.column, 0, [], f"FAILED {check.key}: GX returned no result"))
            continue
        if r.success:
            continue
        expectation = r.expectation_config.type
        info = r.exception_info or {}
        if info.get("raised_exception"):
            message = f"FAILED {check.key}: the expectation raised: {info.get('exception_message')}"
            failures.append(Failure(expectation, check.column, 0, [], message))
            continue
        result = dict(r.result or {})
        ids = _example_ids(result, plan.index_column)
        message = "FAILED " + check.describe(result, ids)
        if check.key.startswith(("exists:", "type:")) and plan.skipped.get(check.column):
            message += f"; skipped: {', '.join(plan.skipped[check.column])}"
        count = int(result.get("unexpected_count") or 0)
        failures.append(Failure(expectation, check.column, count, ids, message))
    return failures


# ------------------------------------------------------------------------------------------ public API


def validate_dataset(parquet_path: Path, cfg: ValidateConfig, report_dir: Path) -> ValidationResult:
    """Validate one canonical Parquet file; write Data Docs and the JSON summary under ``report_dir``.

    Raises DataValidationError (after writing the summary) when the file cannot be read or decoded.
    """
    started = time.perf_counter()
    parquet_path, report_dir = Path(parquet_path), Path(report_dir)
    summary_path = report_dir / SUMMARY_NAME
    try:
        table = read_canonical(parquet_path)
    except DataValidationError as err:
        shutil.rmtree(report_dir / DOCS_DIR, ignore_errors=True)  # never leave an older run's verdict
        _write_failed_summary(parquet_path, summary_path, "read_parquet", str(err), started)
        raise

    try:
        df = _to_pandas(table)
        gx_logger = logging.getLogger("great_expectations")
        if gx_logger.level == logging.NOTSET:
            gx_logger.setLevel(logging.ERROR)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            plan = build_plan(df, table, cfg)
            with atomic_dir(report_dir / DOCS_DIR) as tmp_docs:
                results = _run_gx(plan, tmp_docs.resolve())
    except BaseException as err:  # a crash must not leave a previous run's "success" behind
        _write_failed_summary(parquet_path, summary_path, "gx_run", f"{type(err).__name__}: {err}", started)
        raise
    report_path = report_dir / DOCS_DIR / "index.html"
    failures = _failures(plan, results)
    skipped = [f"{check} (column '{column}')" for column, checks in plan.skipped.items() for check in checks]
    result = ValidationResult(
        success=not failures,
        failures=failures,
        n_rows=len(df),
        report_path=report_path if report_path.exists() else None,
        skipped=skipped,
        summary_path=summary_path,
        seconds=time.perf_counter() - started,
    )
    _write_summary(parquet_path, result)
    return result


def _write_failed_summary(parquet_path: Path, summary_path: Path, what: str, error: str, started: float) -> None:
    failure = Failure(what, None, 0, [], f"FAILED {error}")
    _write_summary(
        parquet_path,
        ValidationResult(False, [failure], 0, None, [], summary_path, time.perf_counter() - started),
    )


def _write_summary(parquet_path: Path, result: ValidationResult) -> None:
    assert result.summary_path is not None
    write_json_atomic(
        result.summary_path,
        {
            "dataset": str(parquet_path),
            # lets downstream steps check that the summary is about the file they are about to read
            "dataset_sha256": sha256_file(parquet_path) if parquet_path.is_file() else None,
            "success": result.success,
            "n_rows": result.n_rows,
            "failures": [dataclasses.asdict(f) for f in result.failures],
            "skipped": result.skipped,
            "report_path": str(result.report_path) if result.report_path else None,
            "seconds": round(result.seconds, 3),
        },
    )
