"""The expectations the canonical dataset must meet, as a plan of Great Expectations checks: one per
column type and value rule, plus derived columns for what GX has no expectation for (prompt leakage
across splits, per-stage minimums and class balance). ``svgt.data.validation`` runs the plan."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import pyarrow as pa

from svgt.core.params import StageMinimums, ValidateConfig
from svgt.data.schema import (
    CANONICAL_SCHEMA,
    COLUMNS,
    LABEL_COLUMNS,
    LABEL_VALUES,
    SPLITS,
    normalize_prompt,
    stage_mask,
)

_NOT_NULL_COLUMNS = tuple(f.name for f in CANONICAL_SCHEMA if not f.nullable)
_NULLABLE_COLUMNS = tuple(f.name for f in CANONICAL_SCHEMA if f.nullable)
# GX's pandas type check compares the column dtype against these names (pandas nullable integers:
# labels are read with pyarrow's types_mapper so int8-with-nulls does not become float64).
INT_DTYPES = ("Int8", "Int16", "Int32", "Int64", "UInt8", "UInt16", "UInt32", "UInt64")
_LABEL_TYPE_LIST = [f"{name}Dtype" for name in INT_DTYPES]
_TEXT_TYPE_LIST = ["str"]


def is_text(typ: pa.DataType) -> bool:
    return pa.types.is_string(typ) or pa.types.is_large_string(typ) or pa.types.is_string_view(typ)


@dataclass
class Check:
    key: str
    expectation: Any  # a gx.expectations.* instance
    column: str | None
    describe: Callable[[dict[str, Any], list[str]], str]  # (GX result dict, example ids) -> message tail


@dataclass
class Plan:
    frame: pd.DataFrame  # what GX validates: the data plus derived check columns
    index_column: str  # column GX reports unexpected rows by
    checks: list[Check] = field(default_factory=list)
    skipped: dict[str, list[str]] = field(default_factory=dict)  # column -> checks skipped because of it


def _fmt_set(values: tuple) -> str:
    return "{" + ", ".join(str(v) for v in values) + "}"


def _ids(ids: list[str]) -> str:
    return f" (e.g. ids {', '.join(ids)})" if ids else ""


def _rows(result: dict[str, Any], what: str, ids: list[str]) -> str:
    return f"{result.get('unexpected_count', 0)} rows {what}{_ids(ids)}"


def build_plan(df: pd.DataFrame, table: pa.Table, cfg: ValidateConfig) -> Plan:
    import great_expectations as gx

    gxe = gx.expectations
    types = dict(zip(table.column_names, table.schema.types, strict=True))
    frame = df.copy()
    present = set(frame.columns)

    def usable(column: str) -> bool:
        if column not in present:
            return False
        typ = types[column]
        if pa.types.is_null(typ) and column in _NULLABLE_COLUMNS:  # an all-null column written untyped
            return True
        return pa.types.is_integer(typ) if column in LABEL_COLUMNS else is_text(typ)

    if usable("id") and not frame["id"].isna().any():
        index_column = "id"
    else:
        index_column = "_row"
        base = frame["id"] if "id" in present else pd.Series(None, index=frame.index, dtype=object)
        frame[index_column] = [
            f"row {i}" if pd.isna(v) else str(v) for i, v in zip(range(len(frame)), base, strict=True)
        ]
    plan = Plan(frame=frame, index_column=index_column)

    def add(key: str, expectation: Any, column: str | None, describe: Callable) -> None:
        expectation.meta = {"svgt_check": key}
        plan.checks.append(Check(key, expectation, column, describe))

    def needs(columns: tuple[str, ...], name: str) -> bool:
        missing = [c for c in columns if not usable(c)]
        for c in missing:
            plan.skipped.setdefault(c, []).append(name)
        return not missing

    # -- table level
    add(
        "row_count",
        gxe.ExpectTableRowCountToBeBetween(min_value=cfg.min_rows),
        None,
        lambda r, ids: f"table: {r.get('observed_value')} rows, expected at least {cfg.min_rows}",
    )

    # -- columns exist and have the canonical types
    for column in COLUMNS:
        add(
            f"exists:{column}",
            gxe.ExpectColumnToExist(column=column),
            column,
            lambda r, ids, c=column: f"column '{c}': missing (expected {_expected_type(c)})",
        )
        if column not in present:
            continue
        type_list = _LABEL_TYPE_LIST if column in LABEL_COLUMNS else _TEXT_TYPE_LIST
        add(
            f"type:{column}",
            gxe.ExpectColumnValuesToBeInTypeList(column=column, type_list=type_list),
            column,
            lambda r, ids, c=column: _describe_type(c, types[c], r, ids),
        )

    # -- values
    for column in _NOT_NULL_COLUMNS:
        if needs((column,), "not null"):
            add(
                f"not_null:{column}",
                gxe.ExpectColumnValuesToNotBeNull(column=column),
                column,
                lambda r, ids, c=column: f"column '{c}': " + _rows(r, "are null", ids),
            )
    for column in LABEL_COLUMNS:
        if needs((column,), f"values in {_fmt_set(LABEL_VALUES)}"):
            add(
                f"in_set:{column}",
                gxe.ExpectColumnValuesToBeInSet(column=column, value_set=list(LABEL_VALUES)),
                column,
                lambda r, ids, c=column: (
                    f"column '{c}': " + _rows(r, f"with values outside {_fmt_set(LABEL_VALUES)}", ids)
                ),
            )
    if needs(("split",), f"values in {_fmt_set(SPLITS)}"):
        add(
            "in_set:split",
            gxe.ExpectColumnValuesToBeInSet(column="split", value_set=list(SPLITS)),
            "split",
            lambda r, ids: "column 'split': " + _rows(r, f"with values outside {_fmt_set(SPLITS)}", ids),
        )
    if needs(("prompt",), "non-blank"):
        add(
            "nonblank:prompt",
            gxe.ExpectColumnValuesToMatchRegex(column="prompt", regex=r"\S"),
            "prompt",
            lambda r, ids: "column 'prompt': " + _rows(r, "are empty or whitespace-only", ids),
        )
    for column, limit in (("prompt", cfg.max_prompt_chars), ("response", cfg.max_response_chars)):
        if needs((column,), f"length <= {limit}"):
            add(
                f"max_len:{column}",
                gxe.ExpectColumnValueLengthsToBeBetween(column=column, max_value=limit),
                column,
                lambda r, ids, c=column, n=limit: f"column '{c}': " + _rows(r, f"longer than {n} characters", ids),
            )
    if needs(("id",), "unique"):
        add(
            "unique:id",
            gxe.ExpectColumnValuesToBeUnique(column="id"),
            "id",
            lambda r, ids: "column 'id': " + _rows(r, "share a duplicated id", ids),
        )

    # -- derived checks GX has no expectation for: computed here, checked by GX on derived columns
    if needs(("prompt", "split"), "no prompt shared across splits"):
        frame["_prompt_split_count"] = _split_counts(frame)
        add(
            "leakage:prompt",
            gxe.ExpectColumnValuesToBeBetween(
                column="_prompt_split_count",
                max_value=1,
                description=(
                    "Split leakage: each normalized prompt (NFKC, case-folded, whitespace collapsed) "
                    "must occur in one split only; _prompt_split_count is the number of splits holding "
                    "the row's normalized prompt."
                ),
            ),
            "prompt",
            lambda r, ids: (
                "column 'prompt': "
                + _rows(r, "share a normalized prompt across splits", _with_splits(frame, index_column, ids))
            ),
        )
    _add_stage_checks(frame, cfg, add, needs)
    return plan


def _expected_type(column: str) -> str:
    return "a nullable int8 column" if column in LABEL_COLUMNS else "a string column"


def _describe_type(column: str, arrow_type: pa.DataType, result: dict[str, Any], ids: list[str]) -> str:
    message = f"column '{column}': type {arrow_type}, expected {_expected_type(column)}"
    if result.get("unexpected_count"):  # GX checked the values one by one (an object column)
        message += "; " + _rows(result, "with values of another type", ids)
    return message


def _split_counts(frame: pd.DataFrame) -> pd.Series:
    keys = frame["prompt"].map(lambda p: normalize_prompt(p) if isinstance(p, str) else None)
    ok = keys.notna() & (keys != "") & frame["split"].notna()
    counts = pd.Series(pd.NA, index=frame.index, dtype="Int64")
    if ok.any():
        grouped = pd.DataFrame({"key": keys[ok], "split": frame.loc[ok, "split"]})
        counts[ok] = grouped.groupby("key")["split"].transform("nunique").astype("int64")
    return counts


def _with_splits(frame: pd.DataFrame, index_column: str, ids: list[str]) -> list[str]:
    split_of = dict(zip(frame[index_column].astype(str), frame["split"], strict=True))
    return [f"{i} [{split_of.get(i)}]" for i in ids]


def _valid_label(frame: pd.DataFrame, column: str) -> pd.Series:
    values = frame[column]
    return values.where(values.isin(LABEL_VALUES)).astype("Int8")


def _add_stage_checks(frame: pd.DataFrame, cfg: ValidateConfig, add: Callable, needs: Callable) -> None:
    import great_expectations as gx

    gxe = gx.expectations
    stages: list[tuple[str, StageMinimums, tuple[str, ...], str, str]] = [
        ("stage1", cfg.stage1, ("prompt_harmful",), "prompt_harmful", "rows with a prompt_harmful label"),
        (
            "stage2",
            cfg.stage2,
            ("response", "response_harmful"),
            "response_harmful",
            "rows with a response and a response_harmful label",
        ),
        (
            "stage3",
            cfg.stage3,
            ("response", "response_harmful", "prompt_harmful"),
            "prompt_harmful",
            "safe target responses with a refusal label, classed by prompt_harmful",
        ),
    ]
    for name, minimums, columns, class_column, what in stages:
        if not needs(columns, f"{name} minimums"):
            continue
        in_stage = stage_mask(frame, name)
        klass = _valid_label(frame, class_column).where(in_stage)
        rows_col, class_col = f"_{name}_rows", f"_{name}_class"
        frame[rows_col] = in_stage.astype("int64")
        frame[class_col] = klass.astype("Int8")
        add(
            f"{name}:rows",
            gxe.ExpectColumnSumToBeBetween(
                column=rows_col,
                min_value=minimums.min_rows,
                description=f"{name} ({what}): at least {minimums.min_rows} rows "
                f"({rows_col} is 1 for rows in the view).",
            ),
            class_column,
            lambda r, ids, n=name, c=class_column, m=minimums, w=what: (
                f"{n} (column '{c}'): {r.get('observed_value')} rows ({w}), expected at least {m.min_rows}"
            ),
        )
        fraction = min(minimums.min_class_fraction, 0.5)
        if fraction <= 0:
            continue
        ones = int((klass == 1).sum())
        labelled = int(klass.notna().sum())
        add(
            f"{name}:balance",
            gxe.ExpectColumnMeanToBeBetween(
                column=class_col,
                min_value=fraction,
                max_value=1 - fraction,
                description=f"{name} ({what}): the minority {class_column} class makes up at least "
                f"{fraction:.0%} of the view ({class_col} is the class label inside the view).",
            ),
            class_column,
            lambda r, ids, n=name, c=class_column, f=fraction, o=ones, t=labelled: _describe_balance(n, c, f, o, t),
        )


def _describe_balance(stage: str, column: str, fraction: float, ones: int, labelled: int) -> str:
    if labelled == 0:
        return f"{stage} (column '{column}'): no labelled rows, expected a minority class of at least {fraction:.0%}"
    minority = min(ones, labelled - ones)
    label = 1 if ones <= labelled - ones else 0
    return (
        f"{stage} (column '{column}'): minority class {column}={label} is {minority / labelled:.1%} "
        f"of {labelled} rows ({minority} rows), expected at least {fraction:.0%}"
    )


