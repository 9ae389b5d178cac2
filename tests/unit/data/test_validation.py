
"""The data validation gate: a clean canonical dataset passes, and each way of breaking it fails with
the offending column and example row ids named."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from svgt.core.params import StageMinimums, ValidateConfig
from svgt.data.schema import CANONICAL_SCHEMA
from svgt.data.validation import (
    SUMMARY_NAME,
    DataValidationError,
    ValidationResult,
    format_failures,
    validate_dataset,
)

# every test here breaks the data one way: part of the fault-and-abuse suite (pytest -m faults)
pytestmark = pytest.mark.faults

CFG = ValidateConfig(
    stage1=StageMinimums(min_rows=100, min_class_fraction=0.2),
    stage2=StageMinimums(min_rows=80, min_class_fraction=0.2),
    stage3=StageMinimums(min_rows=40, min_class_fraction=0.1),
    max_prompt_chars=200,
    max_response_chars=400,
    min_rows=200,
)
N_ROWS = 320


def canonical_frame(n: int = N_ROWS) -> pd.DataFrame:
    """Balanced rows meeting CFG: both prompt classes, both response classes, safe targets for both."""
    rows = []
    for i in range(n):
        has_response = i % 5 != 4
        rows.append(
            {
                "id": f"ex{i:04d}",
                "prompt": f"Question {i}: how do I handle situation {i % 11}?",
                "response": f"Answer {i}." if has_response else None,
                "prompt_harmful": i % 2,
                "response_harmful": (i // 2) % 2 if has_response else None,
                "response_refusal": (i // 3) % 2 if has_response else None,
                "category": "violence" if i % 2 else "benign",
                "source": "unit-test",
                "license": "cc0-1.0",
                "split": ("train", "train", "train", "val", "test")[i % 5],
            }
        )
    return pd.DataFrame(rows)


def write(df: pd.DataFrame, path: Path, schema: pa.Schema | None = None) -> Path:
    if schema is None:
        if list(df.columns) == list(CANONICAL_SCHEMA.names):
            schema = CANONICAL_SCHEMA
        else:  # keep canonical types for the columns that are still canonical
            fields = {f.name: f for f in CANONICAL_SCHEMA}
            inferred = pa.Schema.from_pandas(df, preserve_index=False)
            schema = pa.schema([fields.get(c, inferred.field(c)) for c in df.columns])
    pq.write_table(pa.Table.from_pandas(df, schema=schema, preserve_index=False), path)
    return path


def run(df: pd.DataFrame, tmp_path: Path, cfg: ValidateConfig = CFG) -> ValidationResult:
    path = write(df, tmp_path / "dataset.parquet")
    return validate_dataset(path, cfg, tmp_path / "report")


def failing_lines(result: ValidationResult) -> list[str]:
    assert not result.success, "expected the gate to fail"
    text = format_failures(result)
    assert text.splitlines()[:-1] == [f.message for f in result.failures]
    return [f.message for f in result.failures]


def the_line(result: ValidationResult, *needles: str) -> str:
    """The single failure line containing all needles."""
    lines = [m for m in failing_lines(result) if all(n in m for n in needles)]
    assert len(lines) == 1, f"no single line with {needles} in:\n{format_failures(result)}"
    return lines[0]


def summary(tmp_path: Path) -> dict:
    return json.loads((tmp_path / "report" / SUMMARY_NAME).read_text())


# ----------------------------------------------------------------------------------------- passing


def test_valid_dataset_passes_and_writes_data_docs(tmp_path):
    result = run(canonical_frame(), tmp_path)
    assert result.success, format_failures(result)
    assert result.failures == [] and result.skipped == []
    assert result.n_rows == N_ROWS
    assert result.report_path == tmp_path / "report" / "data_docs" / "index.html"
    assert result.report_path.is_file()
    assert format_failures(result).startswith(f"PASSED: {N_ROWS} rows")
    # the derived (pandas-computed) checks are part of the GX suite, hence of the Data Docs page
    pages = list((tmp_path / "report" / "data_docs" / "validations").rglob("*.html"))
    assert len(pages) == 1
    page = pages[0].read_text()
    for text in (
        "Split leakage",
        "stage1 (rows with a prompt_harmful label)",
        "stage3 (safe target responses with a refusal label",
        "values must be unique",
        "_stage2_rows",
    ):
        assert text in page
    data = summary(tmp_path)
    assert data["success"] is True and data["n_rows"] == N_ROWS and data["failures"] == []


def test_rerun_replaces_the_report(tmp_path):
    run(canonical_frame(), tmp_path)
    result = run(canonical_frame(), tmp_path)
    assert result.success
    assert len(list((tmp_path / "report" / "data_docs" / "validations").rglob("*.html"))) == 1


def test_extra_columns_are_allowed(tmp_path):
    df = canonical_frame()
    df["notes"] = "x"
    assert run(df, tmp_path).success


def test_stage3_balance_not_checked_when_fraction_is_zero(tmp_path):
    df = canonical_frame()
    # only benign prompts keep safe targets
    df.loc[(df.prompt_harmful == 1) & (df.response_harmful == 0), "response_harmful"] = 1
    lenient = ValidateConfig(**{**CFG.__dict__, "stage3": StageMinimums(40, 0.0)})
    assert run(df, tmp_path, lenient).success
    line = the_line(run(df, tmp_path), "stage3")
    assert "column 'prompt_harmful'" in line and "minority class prompt_harmful=1 is 0.0%" in line


# ------------------------------------------------------------------------------------ schema problems


def test_missing_column(tmp_path):
    result = run(canonical_frame().drop(columns=["split"]), tmp_path)
    line = the_line(result, "column 'split'")
    assert line.startswith("FAILED column 'split': missing (expected a string column)")
    assert "skipped:" in line and "no prompt shared across splits" in line
    assert result.failures[0].expectation == "expect_column_to_exist"
    assert any("column 'split'" in s for s in result.skipped)


def test_renamed_column(tmp_path):
    result = run(canonical_frame().rename(columns={"prompt_harmful": "prompt_harm"}), tmp_path)
    line = the_line(result, "column 'prompt_harmful'")
    assert "missing (expected a nullable int8 column)" in line
    assert "stage1 minimums" in line and "stage3 minimums" in line
    # the renamed column is extra, not an error by itself; nothing else fails
    assert len(result.failures) == 1


def test_missing_id_column_reports_rows_by_number(tmp_path):
    df = canonical_frame().drop(columns=["id"])
    df.loc[7, "prompt"] = ""
    result = run(df, tmp_path)
    assert "FAILED column 'id': missing" in format_failures(result)
    assert the_line(result, "column 'prompt'", "whitespace").endswith("(e.g. ids row 7)")


def test_wrong_label_type(tmp_path):
    df = canonical_frame()
    df["response_harmful"] = df["response_harmful"].astype("float64")  # the classic int-with-nulls slip
    schema = CANONICAL_SCHEMA.set(
        CANONICAL_SCHEMA.get_field_index("response_harmful"), pa.field("response_harmful", pa.float64())
    )
    path = write(df, tmp_path / "dataset.parquet", schema)
    result = validate_dataset(path, CFG, tmp_path / "report")
    line = the_line(result, "column 'response_harmful'")
    assert "type double, expected a nullable int8 column" in line
    assert "skipped: values in {0, 1}, stage2 minimums, stage3 minimums" in line


def test_binary_prompt_column(tmp_path):
    df = canonical_frame()
    df["prompt"] = df["prompt"].str.encode("utf-8")
    schema = CANONICAL_SCHEMA.set(1, pa.field("prompt", pa.binary()))
    path = write(df, tmp_path / "dataset.parquet", schema)
    result = validate_dataset(path, CFG, tmp_path / "report")
    line = the_line(result, "column 'prompt'")
    assert line.startswith(
        f"FAILED column 'prompt': type binary, expected a string column; {N_ROWS} rows with values of "
        "another type (e.g. ids ex0000, ex0001, ex0002, ex0003, ex0004); skipped: not null, non-blank"
    )


# ------------------------------------------------------------------------------------- value problems


def test_label_outside_its_set(tmp_path):
    df = canonical_frame()
    df.loc[[3, 10], "prompt_harmful"] = [2, -1]
    line = the_line(run(df, tmp_path), "column 'prompt_harmful'")
    assert line == "FAILED column 'prompt_harmful': 2 rows with values outside {0, 1} (e.g. ids ex0003, ex0010)"


# stage 3 needs response_refusal labels, so these two relax its minimums to isolate the type checks
NO_STAGE3 = dataclasses.replace(CFG, stage3=StageMinimums(0, 0.0))


def test_null_labels_are_allowed(tmp_path):
    df = canonical_frame()
    df["response_refusal"] = None
    path = write(df, tmp_path / "dataset.parquet")
    result = validate_dataset(path, NO_STAGE3, tmp_path / "report")
    assert result.success, format_failures(result)


def test_untyped_all_null_label_column_is_allowed(tmp_path):
    df = canonical_frame()
    df["response_refusal"] = None
    schema = CANONICAL_SCHEMA.set(5, pa.field("response_refusal", pa.null()))
    path = write(df, tmp_path / "dataset.parquet", schema)
    result = validate_dataset(path, NO_STAGE3, tmp_path / "report")
    assert result.success, format_failures(result)


def test_split_outside_its_set(tmp_path):
    df = canonical_frame()
    df.loc[12, "split"] = "validation"
    line = the_line(run(df, tmp_path), "column 'split'")
    assert line == "FAILED column 'split': 1 rows with values outside {train, val, test} (e.g. ids ex0012)"


def test_empty_prompt(tmp_path):
    df = canonical_frame()
    df.loc[5, "prompt"] = ""
    line = the_line(run(df, tmp_path), "column 'prompt'")
    assert line == "FAILED column 'prompt': 1 rows are empty or whitespace-only (e.g. ids ex0005)"


def test_whitespace_only_prompt(tmp_path):
    df = canonical_frame()
    df.loc[[6, 9], "prompt"] = [" \t\n ", "\u3000 "]
    line = the_line(run(df, tmp_path), "column 'prompt'")
    assert line == "FAILED column 'prompt': 2 rows are empty or whitespace-only (e.g. ids ex0006, ex0009)"


def test_null_prompt(tmp_path):
    df = canonical_frame()
    df.loc[8, "prompt"] = None
    schema = CANONICAL_SCHEMA.set(1, pa.field("prompt", pa.string(), nullable=True))
    path = write(df, tmp_path / "dataset.parquet", schema)
    line = the_line(validate_dataset(path, CFG, tmp_path / "report"), "column 'prompt'")
    assert line == "FAILED column 'prompt': 1 rows are null (e.g. ids ex0008)"


def test_duplicated_id(tmp_path):
    df = canonical_frame()
    df.loc[[20, 30], "id"] = ["dup-a", "dup-a"]
    result = run(df, tmp_path)
    line = the_line(result, "column 'id'")
    assert line == "FAILED column 'id': 2 rows share a duplicated id (e.g. ids dup-a)"
    assert result.failures[0].expectation == "expect_column_values_to_be_unique"


def test_prompt_leaked_across_splits(tmp_path):
    df = canonical_frame()
    assert (df.loc[0, "split"], df.loc[4, "split"]) == ("train", "test")
    df.loc[4, "prompt"] = "  " + df.loc[0, "prompt"].upper().replace(" ", "   ") + "\n"
    line = the_line(run(df, tmp_path), "across splits")
    assert line == (
        "FAILED column 'prompt': 2 rows share a normalized prompt across splits "
        "(e.g. ids ex0000 [train], ex0004 [test])"
    )


def test_same_prompt_within_one_split_is_not_leakage(tmp_path):
    df = canonical_frame()
    df.loc[1, "prompt"] = df.loc[0, "prompt"].upper()  # both train
    assert run(df, tmp_path).success


def test_too_long_prompt_and_response(tmp_path):
    df = canonical_frame()
    df.loc[15, "prompt"] = "x" * 201
    df.loc[[16, 18], "response"] = "y" * 401
    result = run(df, tmp_path)
    assert the_line(result, "column 'prompt'") == (
        "FAILED column 'prompt': 1 rows longer than 200 characters (e.g. ids ex0015)"
    )
    assert the_line(result, "column 'response'") == (
        "FAILED column 'response': 2 rows longer than 400 characters (e.g. ids ex0016, ex0018)"
    )


def test_at_most_five_example_ids(tmp_path):
    df = canonical_frame()
    df.loc[:9, "prompt_harmful"] = 7
    result = run(df, tmp_path)
    failure = next(f for f in result.failures if f.column == "prompt_harmful")
    assert failure.unexpected_count == 10
    assert failure.example_ids == [f"ex{i:04d}" for i in range(5)]


# ------------------------------------------------------------------------------ table and stage sizes


def test_too_few_rows(tmp_path):
    result = run(canonical_frame(150), tmp_path)
    assert failing_lines(result) == ["FAILED table: 150 rows, expected at least 200"]
    assert result.failures[0].column is None


def test_too_few_stage_rows(tmp_path):
    df = canonical_frame()
    df.loc[df.index >= 100, "prompt_harmful"] = None
    assert run(df, tmp_path).success  # exactly the minimum
    df.loc[df.index >= 90, "prompt_harmful"] = None
    assert failing_lines(run(df, tmp_path)) == [
        "FAILED stage1 (column 'prompt_harmful'): 90 rows (rows with a prompt_harmful label), expected at least 100"
    ]


def test_single_class_stage1(tmp_path):
    df = canonical_frame()
    df["prompt_harmful"] = 0
    line = the_line(run(df, tmp_path), "stage1")
    assert line == (
        "FAILED stage1 (column 'prompt_harmful'): minority class prompt_harmful=1 is 0.0% "
        f"of {N_ROWS} rows (0 rows), expected at least 20%"
    )


def test_imbalanced_stage2(tmp_path):
    df = canonical_frame()
    df.loc[df.response_harmful == 1, "response_harmful"] = 0
    df.loc[[0, 2], "response_harmful"] = 1
    line = the_line(run(df, tmp_path), "stage2")
    assert line.startswith("FAILED stage2 (column 'response_harmful'): minority class response_harmful=1 is ")
    assert "expected at least 20%" in line


# ---------------------------------------------------------------------------------- unreadable files


def test_non_utf8_bytes(tmp_path):
    table = pa.Table.from_pandas(canonical_frame(), schema=CANONICAL_SCHEMA, preserve_index=False)
    raw = table.column("response").combine_chunks().cast(pa.binary()).to_pylist()
    raw[3] = b"caf\xe9 \xff"  # latin-1, not UTF-8
    bad = pa.array(raw, pa.binary()).view(pa.string())  # a view: no validation on the way in
    table = table.set_column(2, "response", bad)
    path = tmp_path / "latin1.parquet"
    pq.write_table(table, path)
    with pytest.raises(DataValidationError) as err:
        validate_dataset(path, CFG, tmp_path / "report")
    message = str(err.value)
    assert str(path) in message
    assert "column 'response': 1 rows hold bytes that are not valid UTF-8 (e.g. ids ex0003)" in message
    data = summary(tmp_path)
    assert data["success"] is False and "ex0003" in data["failures"][0]["message"]


def test_truncated_parquet(tmp_path):
    assert run(canonical_frame(), tmp_path).success  # an earlier good run must not keep saying "success"
    path = tmp_path / "dataset.parquet"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataValidationError, match=r"dataset\.parquet: not a readable Parquet file"):
        validate_dataset(path, CFG, tmp_path / "report")
    assert summary(tmp_path)["success"] is False
    assert not (tmp_path / "report" / "data_docs").exists()


def test_missing_file(tmp_path):
    with pytest.raises(DataValidationError, match=r"nope\.parquet: file not found"):
        validate_dataset(tmp_path / "nope.parquet", CFG, tmp_path / "report")
    assert summary(tmp_path)["failures"][0]["expectation"] == "read_parquet"


def test_summary_written_on_failure(tmp_path):
    df = canonical_frame()
    df.loc[3, "prompt_harmful"] = 5
    result = run(df, tmp_path)
    data = summary(tmp_path)
    assert data["success"] is False and data["n_rows"] == N_ROWS
    assert data["failures"] == [
        {
            "expectation": "expect_column_values_to_be_in_set",
            "column": "prompt_harmful",
            "unexpected_count": 1,
            "example_ids": ["ex0003"],
            "message": result.failures[0].message,
        }
    ]
    assert Path(data["report_path"]).is_file()


def test_crash_inside_gx_still_writes_a_failed_summary(tmp_path, monkeypatch):
    import svgt.data.validation as validation

    assert run(canonical_frame(), tmp_path).success

    def boom(*args, **kwargs):
        raise RuntimeError("simulated GX crash")

    monkeypatch.setattr(validation, "_run_gx", boom)
    with pytest.raises(RuntimeError, match="simulated GX crash"):
        run(canonical_frame(), tmp_path)
    data = summary(tmp_path)
    assert data["success"] is False
    assert data["failures"][0]["message"] == "FAILED RuntimeError: simulated GX crash"
