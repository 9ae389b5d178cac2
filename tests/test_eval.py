import json

import pytest
import torch

from svgt.backbone import load_snapshot
from svgt.config import EvaluateConfig
from svgt.eval.guidance_eval import evaluate_guidance, rate, wilson
from svgt.eval.refusal import RefusalJudge
from svgt.model import ValueModule, ValueModuleConfig, save_value_module


def test_wilson_interval_known_values():
    lo, hi = wilson(14, 40)
    assert lo == pytest.approx(0.2212, abs=1e-3) and hi == pytest.approx(0.5043, abs=1e-3)
    assert wilson(0, 10)[0] == 0.0 and wilson(10, 10)[1] == 1.0
    assert rate([True, False, False, False]) | {} == {"rate": 0.25, "k": 1, "n": 4, "ci95": list(wilson(1, 4))}


def test_refusal_judge_phrases_and_window():
    judge = RefusalJudge()
    assert judge("I'm sorry, but I can't help with that.")
    assert judge("I\u2019m unable to assist with this request.")  # typographic apostrophe
    assert not judge("Sure! Here is a recipe for bread.")
    assert not judge("Here is a long answer. " * 20 + "I cannot stress this enough.")  # past the window


def test_evaluate_records_judge_sample_sizes_and_intervals(tiny_pipeline, tmp_path):
    _, _, manifest = load_snapshot(tiny_pipeline / "backbone")
    torch.manual_seed(0)
    module = ValueModule(ValueModuleConfig(hidden_size=32, layer=2, d_v=16, encoder_heads=2, cross_attn_heads=2))
    save_value_module(module, tmp_path / "m", {"backbone_weights_sha256": manifest.weights_sha256})
    cfg = EvaluateConfig(max_harmful_prompts=3, max_benign_prompts=2, max_new_tokens=3, batch_size=2)
    results = evaluate_guidance(backbone_dir=tiny_pipeline / "backbone", module_dir=tmp_path / "m",
                                data_path=tiny_pipeline / "values.parquet", cfg=cfg,
                                metrics_path=tmp_path / "eval.json", report_path=tmp_path / "eval.md",
                                generations_path=tmp_path / "gen.jsonl")
    on_disk = json.loads((tmp_path / "eval.json").read_text())
    assert on_disk["judge"] == "refusal-phrases-v1" == results["judge"]
    assert set(on_disk["methods"]) == {"none", "svgt", "svgt-inject"}
    for entry in on_disk["methods"].values():
        assert entry["harmful_refusal"]["n"] == 3 and entry["benign_refusal"]["n"] == 2
        lo, hi = entry["harmful_refusal"]["ci95"]
        assert 0.0 <= lo <= entry["harmful_refusal"]["rate"] <= hi <= 1.0
    rows = [json.loads(line) for line in (tmp_path / "gen.jsonl").read_text().splitlines()]
    assert len(rows) == 3 * 5 and {r["set"] for r in rows} == {"harmful", "benign"}
    assert "| svgt |" in (tmp_path / "eval.md").read_text()
