"""The threshold-only bound on hand-made generations: separable prompt scores meet issue 17's two targets at
some threshold; scores that rank sensitive prompts with the harmful ones cannot, whatever the threshold."""

from frontier_bound import bound


def rows(harmful_scores, sensitive_scores, guided_sensitive_refuses):
    """none answers every harmful prompt and refuses no sensitive one; the gated method guided the sensitive
    prompts scoring above 0 and refused those with ``guided_sensitive_refuses``."""
    none = {"harmful": [{"refusal": False} for _ in harmful_scores], "harmful_heldout": [],
            "sensitive": [{"refusal": False} for _ in sensitive_scores]}
    svgt = {"harmful": [{"prompt_score": s, "refusal": s > 0, "guided": s > 0} for s in harmful_scores],
            "harmful_heldout": [],
            "sensitive": [{"prompt_score": s, "guided": s > 0, "refusal": s > 0 and guided_sensitive_refuses}
                          for s in sensitive_scores]}
    return {"none": none, "svgt": svgt}


def test_separable_scores_meet_both_targets():
    b = bound(rows([2.0, 3.0, 4.0, 5.0, 6.0], [-3.0, -2.0, -1.0, 1.0], True), "svgt")
    assert b["feasible"] and b["best_cut_within_5_points"]["cut"] == 1.0
    assert b["bridge_refusal_on_guided_sensitive"] == 1.0 and b["guided_sensitive_n"] == 1


def test_overlapping_scores_cannot_meet_both_targets():
    # 10 harmful prompts, 10 sensitive ones whose scores sit among the harmful ones'; every guided one is refused
    harmful = [float(s) for s in range(10)]
    sensitive = [s + 0.5 for s in range(-3, 7)]
    b = bound(rows(harmful, sensitive, True), "svgt")
    assert not b["feasible"]
    at80 = b["least_extra_refusal_at_80_cut"]
    assert at80["cut"] >= 0.8 and at80["extra_over_refusal"] > 0.05
    # the largest cut that keeps over-refusal within 5 points: no sensitive prompt above the threshold
    assert b["best_cut_within_5_points"]["threshold"] >= 6.5 and b["best_cut_within_5_points"]["cut"] < 0.8
