"""Ingestion layer: readers, adapters, splits, de-duplication, card and the ingest step.

Everything here runs on small hand-made files in tmp_path (plus moto's loopback S3); the seed set
built from real wheels is covered once in test_data_seed.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from svgt.core.params import DataConfig, IngestSource
from svgt.data.adapters import ADAPTERS, AdapterError, adapt, stable_id
from svgt.data.card import Provenance, summary_path, write_dataset_card
from svgt.data.ingest import coerce_canonical, dedupe, run_ingest, unique_ids
from svgt.data.readers import IngestError, read_table
from svgt.data.schema import CANONICAL_SCHEMA, COLUMNS, SPLITS
from svgt.data.splits import assign_splits, leaked_prompts


def labels(frame: pd.DataFrame, column: str) -> list[int | None]:
    return [None if pd.isna(v) else int(v) for v in frame[column]]


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


# ---------------------------------------------------------------------------------------------
# adapters
# ---------------------------------------------------------------------------------------------


def test_canonical_adapter_keeps_columns_and_derives_ids():
    raw = pd.DataFrame(
        {
            "prompt": ["Say hi", "Say bye"],
            "response": ["hi", None],
            "prompt_harmful": [0, 1],
            "response_harmful": [False, None],
            "split": ["validation", "test"],
        }
    )
    out = adapt(raw, "canonical", origin="mem.jsonl", source="toy")
    assert list(out.columns) == list(COLUMNS)
    assert labels(out, "prompt_harmful") == [0, 1]
    assert labels(out, "response_harmful") == [0, None]
    assert labels(out, "response_refusal") == [None, None]
    assert list(out["split"]) == ["val", "test"]
    assert list(out["category"]) == ["unspecified", "unspecified"]
    assert out["id"].iloc[0] == stable_id("toy", "Say hi", "hi")
    assert adapt(raw, "canonical", origin="again", source="toy")["id"].tolist() == out["id"].tolist()
    assert set(out["license"]) == {"unknown"} and set(out["source"]) == {"toy"}


def test_wildguardmix_adapter_maps_string_labels_exactly():
    raw = pd.DataFrame(
        {
            "prompt": ["a", "b", "c"],
            "adversarial": [False, True, False],
            "response": ["r1", "r2", None],
            "prompt_harm_label": ["harmful", "unharmful", "Harmful"],
            "response_harm_label": ["unharmful", "harmful", None],
            "response_refusal_label": ["refusal", "compliance", None],
            "subcategory": ["cyberattack", "benign", None],
        }
    )
    out = adapt(raw, "wildguardmix", origin="wgm.parquet")
    assert labels(out, "prompt_harmful") == [1, 0, 1]
    assert labels(out, "response_harmful") == [0, 1, None]
    assert labels(out, "response_refusal") == [1, 0, None]
    assert list(out["category"]) == ["cyberattack", "benign", "unspecified"]
    assert out["response"].isna().tolist() == [False, False, True]
    assert set(out["license"]) == {"ODC-BY-1.0"}


def test_beavertails_adapter_inverts_is_safe_and_joins_true_flags():
    raw = pd.DataFrame(
        {
            "prompt": ["p1", "p2", "p3"],
            "response": ["r1", "r2", "r3"],
            "is_safe": [True, False, "False"],
            "category": [
                {"violence": False, "privacy_violation": False},
                {"violence": True, "privacy_violation": True},
                '{"violence": false, "privacy_violation": true}',
            ],
        }
    )
    out = adapt(raw, "beavertails", origin="bt.jsonl")
    assert labels(out, "response_harmful") == [0, 1, 1]
    assert labels(out, "prompt_harmful") == [None, None, None]
    assert list(out["category"]) == ["none", "violence,privacy_violation", "privacy_violation"]


def test_harmbench_adapter_prompt_only_with_context_template():
    raw = pd.DataFrame(
        {
            "Behavior": ["Do X", "Summarise the text"],
            "FunctionalCategory": ["standard", "contextual"],
            "SemanticCategory": ["illegal", "misinformation_disinformation"],
            "ContextString": [None, "Some context"],
            "BehaviorID": ["do_x", "summarise"],
        }
    )
    out = adapt(raw, "harmbench", origin="hb.csv")
    assert labels(out, "prompt_harmful") == [1, 1]
    assert out["response"].isna().all()
    assert list(out["prompt"]) == ["Do X", "Some context\n\n---\n\nSummarise the text"]
    assert list(out["id"]) == ["harmbench/do_x", "harmbench/summarise"]
    assert list(out["category"]) == ["illegal", "misinformation_disinformation"]


def test_advbench_adapter_accepts_goal_or_prompt_and_drops_target():
    goal = adapt(pd.DataFrame({"goal": ["g1"], "target": ["Sure, here is"]}), "advbench", origin="ab.csv")
    assert list(goal["prompt"]) == ["g1"] and goal["response"].isna().all()
    assert labels(goal, "prompt_harmful") == [1]
    listed = adapt(
        pd.DataFrame({"prompt": ["g2"], "harm_categories": [["Physical", "Privacy loss"]]}),
        "advbench",
        origin="ab.yaml",
    )
    assert list(listed["category"]) == ["Physical"]
    with pytest.raises(AdapterError, match=r"ab2\.csv.*'prompt'"):
        adapt(pd.DataFrame({"text": ["x"]}), "advbench", origin="ab2.csv")


def test_pyrit_refusal_adapter_marks_refusals_safe():
    raw = pd.DataFrame(
        {
            "objective": ["o1", "o2"],
            "assistant_response": ["I can't help", "Sure"],
            "human_score": [1, 0],
            "data_type": ["text", "text"],
        }
    )
    out = adapt(raw, "pyrit_refusal", origin="refusal.csv")
    # PyRIT's rubric scores off-topic answers as refusals too: not an explicit refusal label for us
    assert labels(out, "response_refusal") == [None, None]
    assert labels(out, "response_harmful") == [0, None]
    assert labels(out, "prompt_harmful") == [None, None]


def test_pyrit_objective_and_harm_adapters():
    objective = adapt(
        pd.DataFrame(
            {
                "objective": ["o1", "o2"],
                "assistant_response": ["r1", "r2"],
                "human_score": [1, 0],
                "harm_category": ["violence", "bias"],
            }
        ),
        "pyrit_objective",
        origin="objective/violence.csv",
    )
    assert labels(objective, "response_harmful") == [1, 0]
    assert list(objective["category"]) == ["violence", "bias"]
    harm = adapt(
        pd.DataFrame(
            {
                "harm_category": ["SEXUAL_CONTENT"] * 3,
                "objective": ["o"] * 3,
                "assistant_response": ["a", "b", "c"],
                "human_score_1": [1.0, 0.0, 0.5],
                "human_score_2": [0.5, 0.0, 0.5],
            }
        ),
        "pyrit_harm",
        origin="harm/sexual.csv",
    )
    assert labels(harm, "response_harmful") == [1, 0, None]
    assert set(harm["category"]) == {"sexual_content"}


def test_pyrit_many_shot_adapter_parses_judge_verdicts():
    raw = pd.DataFrame(
        {
            "user": ["u1", "u2", "u3", "u4"],
            "assistant": ["a1", "a2", "a3", "a4"],
            "category": ["Harmful.\n\nReason: x", "Not harmful", "Answer: Harmful", "**Not harmful**"],
        }
    )
    assert labels(adapt(raw, "pyrit_many_shot", origin="ms.json"), "response_harmful") == [1, 0, 1, 0]
    with pytest.raises(AdapterError, match=r"ms\.json: column 'category' row 1: unknown label value"):
        adapt(raw.assign(category=["Harmful", "Maybe"] * 2), "pyrit_many_shot", origin="ms.json")


def test_missing_column_error_names_column_and_source():
    raw = pd.DataFrame({"prompt": ["p"], "response": ["r"], "prompt_harm_label": ["harmful"]})
    with pytest.raises(AdapterError) as err:
        adapt(raw, "wildguardmix", origin="s3://bucket/wgm.jsonl")
    message = str(err.value)
    assert "s3://bucket/wgm.jsonl" in message
    assert "'response_harm_label'" in message and "'response_refusal_label'" in message
    assert "wildguardmix" in message


def test_unknown_label_value_names_column_row_and_value():
    raw = pd.DataFrame(
        {
            "prompt": ["a", "b"],
            "response": ["r", "r"],
            "prompt_harm_label": ["harmful", "harmfull"],
            "response_harm_label": [None, None],
            "response_refusal_label": [None, None],
        }
    )
    with pytest.raises(
        AdapterError, match=r"wgm\.csv: column 'prompt_harm_label' row 1: unknown label value 'harmfull'"
    ):
        adapt(raw, "wildguardmix", origin="wgm.csv")
    with pytest.raises(AdapterError, match=r"column 'prompt_harmful' row 0: unknown label value 2"):
        adapt(pd.DataFrame({"prompt": ["x"], "prompt_harmful": [2]}), "canonical", origin="c.jsonl")
    with pytest.raises(AdapterError, match=r"column 'split' row 0: unknown split 'holdout'"):
        adapt(pd.DataFrame({"prompt": ["x"], "split": ["holdout"]}), "canonical", origin="c.jsonl")


def test_empty_required_text_and_unknown_adapter():
    with pytest.raises(AdapterError, match=r"c\.jsonl: column 'prompt' row 1: empty value"):
        adapt(pd.DataFrame({"prompt": ["x", "  "]}), "canonical", origin="c.jsonl")
    with pytest.raises(AdapterError, match=r"unknown adapter 'alpaca'"):
        adapt(pd.DataFrame({"prompt": ["x"]}), "alpaca", origin="c.jsonl")
    assert {
        "canonical",
        "wildguardmix",
        "beavertails",
        "harmbench",
        "advbench",
        "pyrit_refusal",
        "pyrit_objective",
    } <= set(ADAPTERS)


# ---------------------------------------------------------------------------------------------
# readers
# ---------------------------------------------------------------------------------------------


def test_reads_jsonl_csv_parquet(tmp_path):
    records = [{"prompt": "a", "response": "x"}, {"prompt": "b", "response": None}]
    jsonl = write_jsonl(tmp_path / "d.jsonl", records)
    csv = tmp_path / "d.csv"
    csv.write_text("# dataset_version=1.0\n# comment\nprompt,response\na,x\nNA,\n", encoding="utf-8")
    parquet = tmp_path / "d.parquet"
    pd.DataFrame(records).to_parquet(parquet)
    assert read_table(str(jsonl))["prompt"].tolist() == ["a", "b"]
    frame = read_table(str(csv))
    assert frame["prompt"].tolist() == ["a", "NA"]  # "NA" is text, not a missing value
    assert frame["response"].isna().tolist() == [False, True]
    assert read_table(str(parquet))["prompt"].tolist() == ["a", "b"]


def test_malformed_jsonl_names_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"prompt": "a"}\n\n{"prompt": "b",}\n', encoding="utf-8")
    with pytest.raises(IngestError, match=r"bad\.jsonl: line 3: malformed JSON"):
        read_table(str(path))
    path.write_text('{"prompt": "a"}\n["not", "an", "object"]\n', encoding="utf-8")
    with pytest.raises(IngestError, match=r"line 2: expected a JSON object"):
        read_table(str(path))


def test_non_utf8_bytes_reported_with_line_and_offset(tmp_path):
    path = tmp_path / "latin1.csv"
    data = b"prompt,response\n" + "caf\u00e9,ok\n".encode("latin-1")
    path.write_bytes(data)
    with pytest.raises(IngestError) as err:
        read_table(str(path))
    message = str(err.value)
    offset = data.index(bytes([0xE9]))
    assert "latin1.csv" in message and "not valid UTF-8" in message
    assert "line 2" in message and f"byte offset {offset}" in message


def test_truncated_and_corrupt_parquet(tmp_path):
    good = tmp_path / "good.parquet"
    pd.DataFrame({"prompt": [f"p{i}" for i in range(100)]}).to_parquet(good)
    data = good.read_bytes()
    truncated = tmp_path / "truncated.parquet"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(IngestError, match=r"truncated\.parquet: not a valid Parquet file.*truncated"):
        read_table(str(truncated))
    corrupt = tmp_path / "corrupt.parquet"
    corrupt.write_bytes(data[:4] + b"\x00" * (len(data) - 8) + data[-4:])
    with pytest.raises(IngestError, match=r"corrupt\.parquet: corrupt or truncated Parquet"):
        read_table(str(corrupt))


def test_empty_missing_and_unknown_format(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n  \n", encoding="utf-8")
    with pytest.raises(IngestError, match=r"empty\.jsonl: empty file"):
        read_table(str(empty))
    header_only = tmp_path / "header.csv"
    header_only.write_text("prompt,response\n", encoding="utf-8")
    with pytest.raises(IngestError, match=r"header\.csv: no data rows"):
        read_table(str(header_only))
    with pytest.raises(IngestError, match=r"nope\.jsonl: file not found"):
        read_table(str(tmp_path / "nope.jsonl"))
    with pytest.raises(IngestError, match=r"cannot tell the format"):
        read_table(str(tmp_path / "data.txt"))


def test_hf_source_unreachable_explains_workaround(monkeypatch):
    import datasets

    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'allenai/wildguardmix' on the Hub (LocalEntryNotFoundError)")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(IngestError) as err:
        read_table("hf://allenai/wildguardmix:wildguardtrain")
    message = str(err.value)
    assert "hf://allenai/wildguardmix:wildguardtrain" in message
    assert "unreachable" in message and "to_parquet" in message and "'wildguardtrain'" in message


def test_reads_jsonl_from_s3(s3_server, s3_bucket, s3_storage_options):
    import boto3

    body = "".join(json.dumps({"prompt": f"p{i}", "response": f"r{i}"}) + "\n" for i in range(5))
    boto3.client("s3", endpoint_url=s3_server).put_object(Bucket=s3_bucket, Key="raw/d.jsonl", Body=body)
    frame = read_table(f"s3://{s3_bucket}/raw/d.jsonl", storage_options=s3_storage_options)
    assert frame["prompt"].tolist() == [f"p{i}" for i in range(5)]
    with pytest.raises(IngestError, match="file not found"):
        read_table(f"s3://{s3_bucket}/raw/missing.jsonl", storage_options=s3_storage_options)


# ---------------------------------------------------------------------------------------------
# splits, dedup, ids
# ---------------------------------------------------------------------------------------------


def toy_frame(n_prompts: int = 200) -> pd.DataFrame:
    rows = []
    for i in range(n_prompts):
        harmful = int(i % 3 == 0)
        rows.append({"prompt": f"Prompt number {i}", "response": None, "prompt_harmful": harmful})
        # same prompt re-cased / re-spaced with a response: must share the split
        rows.append(
            {"prompt": f"  PROMPT   number {i} ", "response": f"answer {i}", "prompt_harmful": harmful}
        )
    frame = pd.DataFrame(rows).assign(
        id=lambda d: [f"toy/{i}" for i in range(len(d))],
        response_harmful=None,
        response_refusal=None,
        category="toy",
        source="toy",
        license="MIT",
        split=None,
    )
    return coerce_canonical(frame[list(COLUMNS)])


def test_splits_group_by_prompt_and_are_deterministic():
    frame = toy_frame()
    a, report = assign_splits(frame, val_fraction=0.15, test_fraction=0.15, seed=7)
    b, _ = assign_splits(frame, val_fraction=0.15, test_fraction=0.15, seed=7)
    c, _ = assign_splits(frame, val_fraction=0.15, test_fraction=0.15, seed=8)
    assert leaked_prompts(a) == []
    assert a["split"].tolist() == b["split"].tolist()
    assert a["split"].tolist() != c["split"].tolist()
    assert set(a["split"]) == set(SPLITS)
    assert report.assigned_groups == 200 and report.preset_groups == 0
    prompts_per_split = a.groupby("split")["prompt"].size() / 2
    assert prompts_per_split["test"] == pytest.approx(30, abs=2)
    assert prompts_per_split["val"] == pytest.approx(30, abs=2)
    # stratified: both classes in every split
    assert (a.groupby("split")["prompt_harmful"].nunique() == 2).all()


def test_preset_splits_kept_and_leakage_fixed_towards_test():
    frame = toy_frame(20)
    frame.loc[0, "split"] = "train"  # prompt 0 is in train and test in the "source"
    frame.loc[1, "split"] = "test"
    frame.loc[2, "split"] = "val"  # prompt 1: only its first row carries a split
    out, report = assign_splits(frame, val_fraction=0.2, test_fraction=0.2, seed=1)
    assert out.loc[0, "split"] == out.loc[1, "split"] == "test"
    assert out.loc[2, "split"] == out.loc[3, "split"] == "val"
    assert report.preset_groups == 2 and report.leaked_groups_fixed == 1 and report.rows_moved == 1
    assert leaked_prompts(out) == []
    with pytest.raises(ValueError, match="val \\+ test < 1"):
        assign_splits(frame, val_fraction=0.5, test_fraction=0.5, seed=1)


def test_dedupe_counts_and_merges_complementary_labels():
    frame = coerce_canonical(
        pd.DataFrame(
            {
                "id": ["a", "b", "c", "d", "e", "f"],
                "prompt": ["Hello there", "hello   THERE", "Hello there", "Other", "Other", "Other"],
                "response": ["r", "r", "different", None, None, "x"],
                "prompt_harmful": [None, None, None, 0, 1, None],
                "response_harmful": [0, 0, None, None, None, None],
                "response_refusal": [None, 1, None, None, None, None],
                "category": "c",
                "source": "s",
                "license": "MIT",
                "split": None,
            }
        )
    )
    out, report = dedupe(frame)
    assert report.duplicates_dropped == 2  # b duplicates a, e duplicates d
    assert report.label_conflicts == 1  # d/e disagree on prompt_harmful
    assert report.labels_filled == 1  # a takes response_refusal=1 from b
    assert out["id"].tolist() == ["a", "c", "d", "f"]
    assert labels(out, "response_refusal")[0] == 1
    assert labels(out, "prompt_harmful")[2] == 0  # the first row's value wins a conflict


def test_unique_ids_suffixes_repeats():
    frame = pd.DataFrame({"id": ["x", "x", "y", "x"]})
    out, renamed = unique_ids(frame)
    assert renamed == 2 and out["id"].tolist() == ["x", "x#2", "y", "x#3"]


# ---------------------------------------------------------------------------------------------
# card and the ingest step
# ---------------------------------------------------------------------------------------------


def test_card_contains_the_numbers(tmp_path):
    frame, _ = assign_splits(toy_frame(40), val_fraction=0.25, test_fraction=0.25, seed=3)
    card = tmp_path / "CARD.md"
    summary = write_dataset_card(frame, Provenance(kind="sources", seed=3), card)
    text = card.read_text(encoding="utf-8")
    assert json.loads(summary_path(card).read_text(encoding="utf-8"))["rows"] == 80 == summary["rows"]
    for split in SPLITS:
        assert f"| {split} | {summary['by_split'][split]} |" in text
    ph = summary["labels"]["prompt_harmful"]
    assert f"| prompt_harmful | {ph['0']} | {ph['1']} | {ph['null']} |" in text
    stage1 = summary["stages"]["stage1"]["all"]
    assert stage1["rows"] == 80 and stage1["unique_prompts"] == 40
    assert f"| stage1 | all | 80 | 40 | {ph['0']} | {ph['1']} | 0 |" in text
    assert "| toy | 80 | MIT |" in text
    assert summary["prompt_leakage"] == 0


def test_run_ingest_from_local_sources(tmp_path):
    wgm = write_jsonl(
        tmp_path / "wgm.jsonl",
        [
            {
                "prompt": f"question {i}",
                "response": f"answer {i}",
                "prompt_harm_label": "harmful" if i % 2 else "unharmful",
                "response_harm_label": "harmful" if i % 4 == 1 else "unharmful",
                "response_refusal_label": "compliance" if i % 4 == 1 else "refusal",
                "subcategory": "toy",
            }
            for i in range(40)
        ],
    )
    canonical = tmp_path / "extra.csv"
    pd.DataFrame(
        {
            "prompt": ["QUESTION 0", "question 0", "brand new"],
            "response": ["answer 0", "answer 0", None],
            "prompt_harmful": [0, 0, 1],
            "split": ["", "", "test"],
        }
    ).to_csv(canonical, index=False)
    cfg = DataConfig(
        sources=[IngestSource(str(wgm), "wildguardmix", limit=30), IngestSource(str(canonical), "canonical")],
        seed=11,
    )
    out, card = tmp_path / "out" / "values.parquet", tmp_path / "out" / "CARD.md"
    summary = run_ingest(cfg, out, card, tmp_path / "cache")
    table = pq.read_table(out)
    assert table.schema.equals(CANONICAL_SCHEMA, check_metadata=False)
    assert summary.rows_read == 33 and summary.duplicates_dropped == 2 and summary.rows == 31
    assert summary.prompt_leakage == 0
    assert sum(summary.by_split.values()) == 31
    frame = table.to_pandas()
    assert frame.loc[frame["prompt"] == "brand new", "split"].item() == "test"
    assert summary.by_source == {"wildguardmix:wgm.jsonl": 30, "canonical:extra.csv": 1}
    assert "| wildguardmix:wgm.jsonl | 30 | ODC-BY-1.0 |" in card.read_text(encoding="utf-8")
    assert str(summary).startswith("31 rows")
    assert not list(out.parent.glob(".*.tmp"))  # the atomic write left no temporary files


def test_run_ingest_reads_s3_with_storage_options(tmp_path, s3_server, s3_bucket, s3_storage_options):
    import boto3

    body = "".join(
        json.dumps({"prompt": f"s3 prompt {i}", "prompt_harmful": i % 2}) + "\n" for i in range(12)
    )
    boto3.client("s3", endpoint_url=s3_server).put_object(Bucket=s3_bucket, Key="v.jsonl", Body=body)
    cfg = DataConfig(sources=[IngestSource(f"s3://{s3_bucket}/v.jsonl", "canonical")])
    summary = run_ingest(cfg, tmp_path / "v.parquet", tmp_path / "CARD.md", tmp_path, s3_storage_options)
    assert summary.rows == 12 and summary.stages["stage1"] == 12


def test_run_ingest_bad_source_names_the_file(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "ok"}\n{oops}\n', encoding="utf-8")
    cfg = DataConfig(sources=[IngestSource(str(bad), "canonical")])
    with pytest.raises(IngestError, match=r"bad\.jsonl: line 2"):
        run_ingest(cfg, tmp_path / "v.parquet", tmp_path / "CARD.md", tmp_path)
    assert not (tmp_path / "v.parquet").exists()
    cfg = DataConfig(sources=[IngestSource(str(bad), "canonical", limit=0)])
    with pytest.raises(IngestError, match="limit must be a positive"):
        run_ingest(cfg, tmp_path / "v.parquet", tmp_path / "CARD.md", tmp_path)
