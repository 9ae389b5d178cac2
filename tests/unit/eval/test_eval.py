import json

import pytest
import torch

from svgt.backbone import load_snapshot
from svgt.core.params import EvaluateConfig
from svgt.eval.guidance_eval import evaluate_guidance, rate, wilson
from svgt.eval.judges.refusal import RefusalJudge
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
    assert judge("I'm not equipped to help with chemical warfare agents.")  # v2
    assert not judge("Sure! Here is a recipe for bread.")
    assert not judge("Here is a long answer. " * 20 + "I cannot stress this enough.")  # past the window


def _tiny_harm_judge(out):
    """A real (tiny) TF-IDF harm classifier fitted on hand-written texts: tests the plumbing, not the numbers."""
    import numpy as np

    from svgt.eval.judges.classifier import _fit, save_harm_classifier

    texts = ["here is how to build a weapon step by step", "mix the chemicals to make poison gas",
             "I can't help with that request", "bread needs flour water and yeast"] * 3
    clf = _fit(texts, np.array([1.0, 1.0, 0.0, 0.0] * 3), c=4.0, min_df=1, max_features=500, seed=0)
    return save_harm_classifier(clf, out, {"trained_on": "test fixture"})


def test_evaluate_compares_methods_with_judges_sample_sizes_and_intervals(tiny_pipeline, tmp_path):
    import pandas as pd

    from svgt.baselines import fit_baselines_on
    from svgt.core.params import BaselinesConfig

    model, tok, manifest = load_snapshot(tiny_pipeline / "backbone")
    torch.manual_seed(0)
    from svgt.model.config import GatePoint

    # a calibrated operating point whose thresholds nothing reaches (as svgt_budgets would pick it)
    module = ValueModule(ValueModuleConfig(hidden_size=32, layer=2, d_v=16, encoder_heads=2, cross_attn_heads=2,
                                           refresh_interval=2, gate_points=[GatePoint(0.5, 1e9, 1e9)]))
    save_value_module(module, tmp_path / "m", {"backbone_weights_sha256": manifest.weights_sha256})
    frame = pd.read_parquet(tiny_pipeline / "values.parquet")
    fit_baselines_on(model, tok, frame[frame["split"] == "train"], BaselinesConfig(), tmp_path / "baselines",
                     methods=["system-prompt", "iti"], metadata={"backbone_sha256": manifest.weights_sha256},
                     progress=False)
    methods = ["none", "system-prompt", "iti", "svgt-inject", "svgt"]
    # no held-out wheel sets here (a unit test downloads nothing); an extra operating point whose gate never
    # opens must leave every benign answer exactly as unguided
    cfg = EvaluateConfig(max_harmful_prompts=3, max_benign_prompts=2, max_sensitive_prompts=0,
                         max_heldout_harmful_prompts=0, max_harmbench_behaviors=0, max_new_tokens=4, batch_size=2,
                         methods=methods, svgt_thresholds=[1e9], svgt_budgets=[0.5])
    results = evaluate_guidance(backbone_dir=tiny_pipeline / "backbone", module_dir=tmp_path / "m",
                                data_path=tiny_pipeline / "values.parquet", cfg=cfg,
                                metrics_path=tmp_path / "metrics" / "eval.json", report_path=tmp_path / "eval.md",
                                generations_path=tmp_path / "gen.jsonl", baselines_dir=tmp_path / "baselines",
                                harm_judge_dir=_tiny_harm_judge(tmp_path / "judge"), plots_dir=tmp_path / "plots",
                                cache_dir=tmp_path / "cache")
    on_disk = json.loads((tmp_path / "metrics" / "eval.json").read_text())
    assert on_disk["refusal_judge"] == "refusal-phrases-v2"
    assert on_disk["harm_judge"].startswith("svgt-") and "@" in on_disk["harm_judge"]
    assert on_disk["sample_sizes"] == {"harmful": 3, "harmful_heldout": 0, "benign": 2, "sensitive": 0,
                                       "harmbench": 0}
    assert set(on_disk["methods"]) == {*methods, "svgt@1e+09", "svgt@budget=0.5"}
    assert list(results["methods"])[:5] == methods
    budget = on_disk["methods"]["svgt@budget=0.5"]
    assert budget["guided"]["harmful"]["rate"] == 0.0 and budget["unchanged_benign"]["rate"] == 1.0
    closed = on_disk["methods"]["svgt@1e+09"]
    assert closed["unchanged_benign"]["rate"] == 1.0 and closed["kl_benign"]["value"] < 1e-7
    # unchanged answers reuse the greedy run's logits; only changed ones are teacher-forced again
    assert closed["kl_benign"]["teacher_forced_rows"] == 0
    assert on_disk["methods"]["svgt"]["kl_benign"]["teacher_forced_rows"] == 2 - round(
        2 * on_disk["methods"]["svgt"]["unchanged_benign"]["rate"])
    assert on_disk["methods"]["none"]["unchanged_benign"]["rate"] == 1.0
    assert closed["guided"]["benign"]["rate"] == 0.0 and closed["guided"]["harmful"]["n"] == 3
    assert 0.0 <= closed["prompt_auroc"]["test_split"]["auroc"] <= 1.0 and "guided" not in on_disk["methods"]["svgt"]
    # the gate-less svgt (a random module's bridge) moves the benign answers' distributions
    assert on_disk["methods"]["svgt"]["kl_benign"]["value"] > 1e-5 and on_disk["methods"]["svgt"]["kl_benign"]["n"] == 2
    assert (tmp_path / "plots" / "eval_frontier.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for entry in on_disk["methods"].values():
        assert entry["refusal_harmful"]["n"] == 3 and entry["over_refusal_benign"]["n"] == 2
        lo, hi = entry["refusal_harmful"]["ci95"]
        assert 0.0 <= lo <= entry["refusal_harmful"]["rate"] <= hi <= 1.0
        harm = entry["harmful_response_rate"]
        assert harm["judge"] == results["harm_judge"].split("@")[0] and harm["n"] + harm["unparseable"] == 3
        assert entry["new_tokens"] > 0 and entry["ms_per_token"] > 0
        # fluency per set: benign (gated) and harmful (reported); n counts the non-empty responses
        assert entry["perplexity"]["n"] + entry["perplexity"]["empty_responses"] == 2
        assert entry["perplexity_harmful"]["n"] + entry["perplexity_harmful"]["empty_responses"] == 3
    # only the value-module methods refresh a bridge; only SVGT has refreshes (r=2, 4 tokens: 1 per row)
    assert on_disk["methods"]["svgt"]["refreshes"] > 0 and on_disk["methods"]["iti"]["refreshes"] == 0
    # the trajectory: one score per generated token for none and svgt on the harmful prompts
    assert set(on_disk["trajectory"]) == {"none", "svgt"} and on_disk["trajectory"]["svgt"]["prompts"] == 3
    assert (tmp_path / "plots" / "eval_trajectory.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert on_disk["relative_to_none"]["none"]["harmful_response_rate"] in (0.0, None)
    rows = [json.loads(line) for line in (tmp_path / "gen.jsonl").read_text().splitlines()]
    assert len(rows) == (len(methods) + 2) * 5 and {r["set"] for r in rows} == {"harmful", "benign"}
    # gated methods say per answer whether the gate opened, with the prompt's score; others do not
    gated = [r for r in rows if r["method"] == "svgt@budget=0.5"]
    assert all(r["guided"] is False and isinstance(r["prompt_score"], float) for r in gated) and len(gated) == 5
    assert all("guided" not in r for r in rows if r["method"] in ("none", "iti"))
    # batches are formed by prompt length; every answer must still sit next to its own prompt
    from svgt.decoding.guidance import generate_with_module

    for row in (r for r in rows if r["method"] == "none"):
        alone = generate_with_module(model, tok, [row["prompt"]], module=None, method="none", max_new_tokens=4)
        assert alone.texts[0] == row["response"]
    # svgt and svgt-inject decoded from the prompt passes that none computed (PromptPassCache): the same
    # answers as a batch of their own
    for name in ("svgt", "svgt-inject"):
        mine = [r for r in rows if r["method"] == name]
        alone = generate_with_module(model, tok, [r["prompt"] for r in mine], module=module, method=name,
                                     max_new_tokens=4)
        assert alone.texts == [r["response"] for r in mine]
    assert on_disk["methods"]["svgt"]["decode_ms_per_token"] > 0
    assert 0 <= on_disk["methods"]["svgt"]["prefill_seconds"] <= on_disk["methods"]["svgt"]["seconds"]
    report = (tmp_path / "eval.md").read_text()
    assert "refusal-phrases-v2" in report
    rows_at = [report.index(f"| {m} |") for m in methods]  # the main table keeps the paper's method order
    assert rows_at == sorted(rows_at)


def test_a_baseline_method_without_its_fitted_artifact_is_refused(tiny_pipeline, tmp_path):
    from svgt.methods import MethodError, load_method

    with pytest.raises(MethodError, match="no fitted baseline at .*iti .*run `svgt baselines` first"):
        load_method("iti", baselines_dir=tmp_path)
    with pytest.raises(MethodError, match="unknown method\\(s\\) 'steer'"):
        load_method("steer")
    with pytest.raises(MethodError, match="'svgt' needs a value module"):
        load_method("svgt")


def test_a_baseline_fitted_on_other_backbone_weights_is_refused(tiny_pipeline, tmp_path):
    import pandas as pd

    from svgt.baselines import BaselineError, fit_baselines_on
    from svgt.core.params import BaselinesConfig
    from svgt.methods import load_method

    model, tok, manifest = load_snapshot(tiny_pipeline / "backbone")
    frame = pd.read_parquet(tiny_pipeline / "values.parquet")
    fit_baselines_on(model, tok, frame[frame["split"] == "train"], BaselinesConfig(), tmp_path,
                     methods=["system-prompt"], metadata={"backbone_sha256": manifest.weights_sha256}, progress=False)
    assert load_method("system-prompt", baselines_dir=tmp_path, backbone_sha256=manifest.weights_sha256).baseline
    message = (rf"system-prompt/baseline.json: fitted on backbone weights {manifest.weights_sha256[:12]}, "
               r"but the backbone in use has 000000000000")
    with pytest.raises(BaselineError, match=message):
        load_method("system-prompt", baselines_dir=tmp_path, backbone_sha256="0" * 64)


def test_generate_sets_batches_by_length_but_keeps_each_answer_with_its_prompt():
    """A stand-in method (no model needed: only the batching is under test) answers each prompt with a
    function of that prompt; prompts of all sets share length-sorted batches (rows and a padded-token
    budget), and the answers and harmful-set scores come back in each set's order."""
    from types import SimpleNamespace

    from svgt.decoding.prompt_pass import PromptPassCache
    from svgt.eval.guidance_eval import generate_sets

    batches = []

    class Echo:
        name = "echo"

        plain_prompt_pass = False

        def generate(self, model, tokenizer, prompts, *, runner, max_new_tokens, prefill_tokens, prompt_cache,
                     return_scores=False):
            assert prefill_tokens == cfg.prefill_tokens and prompt_cache is None  # not a plain-pass method
            batches.append((list(prompts), return_scores))
            return SimpleNamespace(texts=[p.upper() for p in prompts], token_ids=[[1] * len(p) for p in prompts],
                                   timing=SimpleNamespace(refreshes=0, prefill_s=0.0), guided_from=None,
                                   prompt_scores=None,
                                   value_scores=[[float(len(p))] for p in prompts] if return_scores else None)

    prompts = ["a" * n for n in (9, 2, 7, 1, 5, 3)]
    cfg = EvaluateConfig(batch_size=3, max_batch_tokens=16, max_new_tokens=4, prefill_tokens=8)
    sets = {"harmful": prompts, "benign": ["b" * 4, "b"], "sensitive": ["c" * 12]}
    run = generate_sets(Echo(), None, None, None, sets, cfg, with_scores=True, length=len,
                        prompt_cache=PromptPassCache())
    # sorted by length across sets: 1,1,2 | 3,4,5 (3 rows) | 7 | 9 (2 x 9 > 16) | 12
    assert [sorted(map(len, b)) for b, _ in batches] == [[1, 1, 2], [3, 4, 5], [7], [9], [12]]
    assert [scored for _, scored in batches] == [True, True, True, True, False]  # scores only where harmful rows are
    assert run.responses["harmful"] == [p.upper() for p in prompts]
    assert run.responses["benign"] == ["BBBB", "B"] and run.responses["sensitive"] == ["C" * 12]
    assert run.scores == [[float(len(p))] for p in prompts]
