"""The guidance gate: rows judged safe run exactly the unguided computation; a row the gate lets in at a
refresh is guided from that step on, equal to the uncached reference with the same gate.

Same sharpened tiny models (init std 0.1) as ``test_generation.py``, where a misplaced bridge row or a
wrong position moves the logits by ~1, so the 1e-4 agreements below can tell right from wrong.
"""

from __future__ import annotations

import pytest
import torch

from svgt.decoding.loop import GenerationError
from svgt.decoding.reference import reference_guided_logits
from tests.tiny import FAMILIES
from tests.unit.decoding.test_generation import (
    ATOL,
    LAYER,
    PROMPTS,
    LinearBridge,
    generate,
    linear_inject,
    max_logit_diff,
    sharp_model,
)

STEPS = 8


class ScheduledGate:
    """Opens row i once at least ``open_at[i]`` tokens have been generated (None: never); counts calls."""

    def __init__(self, open_at: list[int | None]) -> None:
        self.open_at = open_at
        self.calls: list[int] = []  # response length seen at each call

    def __call__(self, response: torch.Tensor) -> torch.Tensor:
        t = response.shape[1]
        self.calls.append(t)
        return torch.tensor([o is not None and t >= o for o in self.open_at])


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("method", ["bridge", "inject"])
def test_closed_gate_leaves_logits_exactly_unchanged(family, method):
    bridge = LinearBridge()
    guide = {"inject_fn": linear_inject} if method == "inject" else {}
    gated = generate(family, bridge if method == "bridge" else None, gate_fn=ScheduledGate([None] * 3),
                     refresh_interval=3, max_new_tokens=STEPS, **guide)
    plain = generate(family, None, max_new_tokens=STEPS)
    open_ = generate(family, bridge if method == "bridge" else None, refresh_interval=3, max_new_tokens=STEPS, **guide)
    assert max_logit_diff(open_, plain) > 0.1  # the guidance really steers when the gate is open
    assert gated.token_ids == plain.token_ids
    for a, b in zip(gated.logits, plain.logits, strict=True):
        assert torch.equal(a, b)  # bit for bit: nothing of the guidance entered the computation
    assert gated.timing.bridge_calls == 0 and gated.timing.refreshes == 0


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize(("refresh", "momentum"), [(3, 0.8), (2, 0.0)])
def test_gate_opening_at_a_refresh_equals_the_uncached_reference(family, refresh, momentum):
    open_at = [0, refresh, None]  # guided from the prompt, from the first refresh, never
    gate = ScheduledGate(open_at)
    out = generate(family, LinearBridge(), gate_fn=gate, refresh_interval=refresh, momentum=momentum,
                   max_new_tokens=STEPS)
    plain = generate(family, None, max_new_tokens=STEPS)
    assert gate.calls[0] == 0 and gate.calls[1:] == list(range(refresh, STEPS, refresh))
    for i, prompt_ids in enumerate(out.prompt_ids):
        ref = reference_guided_logits(sharp_model(family), prompt_ids, LinearBridge(), layer=LAYER,
                                      refresh_interval=refresh, momentum=momentum, max_new_tokens=STEPS,
                                      gate_fn=ScheduledGate([open_at[i]]))
        assert out.token_ids[i] == ref.tokens
        assert (out.logits[i] - ref.logits).abs().max().item() < ATOL
    # row 2 never opened: the unguided answer (its bridge columns are masked out while rows 0-1 are guided)
    assert out.token_ids[2] == plain.token_ids[2]
    assert (out.logits[2] - plain.logits[2]).abs().max().item() < 1e-5
    # row 1 is unguided until the refresh that opens it, guided after
    assert (out.logits[1][:refresh] - plain.logits[1][:refresh]).abs().max().item() < 1e-5
    assert (out.logits[1][refresh:] - plain.logits[1][refresh:]).abs().max().item() > 0.1
    assert (out.logits[0] - plain.logits[0]).abs().max().item() > 0.1


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_gated_inject_equals_the_uncached_reference(family):
    open_at = [None, 3, 0]
    out = generate(family, None, inject_fn=linear_inject, gate_fn=ScheduledGate(open_at), refresh_interval=3,
                   max_new_tokens=STEPS)
    plain = generate(family, None, max_new_tokens=STEPS)
    for i, prompt_ids in enumerate(out.prompt_ids):
        ref = reference_guided_logits(sharp_model(family), prompt_ids, inject_fn=linear_inject, layer=LAYER,
                                      refresh_interval=3, max_new_tokens=STEPS, gate_fn=ScheduledGate([open_at[i]]))
        assert out.token_ids[i] == ref.tokens
        assert (out.logits[i] - ref.logits).abs().max().item() < ATOL
    assert torch.equal(out.logits[0], plain.logits[0]) or (out.logits[0] - plain.logits[0]).abs().max() < 1e-5
    assert (out.logits[1][3:] - plain.logits[1][3:]).abs().max().item() > 0.1


def test_a_row_stays_guided_once_the_gate_opened():
    flips = iter([torch.tensor([True, False, False]), torch.tensor([False, False, False]),
                  torch.tensor([False, False, False])])
    out = generate("llama", LinearBridge(), gate_fn=lambda r: next(flips), refresh_interval=3, max_new_tokens=STEPS)
    always = generate("llama", LinearBridge(), gate_fn=ScheduledGate([0, None, None]), refresh_interval=3,
                      max_new_tokens=STEPS)
    assert out.token_ids == always.token_ids
    assert max(torch.abs(a - b).max().item() for a, b in zip(out.logits, always.logits, strict=True)) < 1e-6


def test_gate_contract_violations_are_reported():
    with pytest.raises(GenerationError, match=r"gate_fn must return a tensor of shape \(3,\)"):
        generate("llama", LinearBridge(), gate_fn=lambda r: torch.ones(2, dtype=torch.bool))
    with pytest.raises(GenerationError, match="gate_fn must return a tensor"):
        generate("llama", LinearBridge(), gate_fn=lambda r: [True] * len(PROMPTS))


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_forced_tokens_give_the_methods_logits_along_a_given_answer(family):
    plain = generate(family, None, max_new_tokens=STEPS)
    answers = [ids[: 3 + i] for i, ids in enumerate(plain.token_ids)]  # rows of different lengths
    forced = generate(family, LinearBridge(), refresh_interval=3, forced_tokens=answers, max_new_tokens=STEPS)
    assert forced.token_ids == answers and forced.finish_reasons == ["length"] * 3
    for i, prompt_ids in enumerate(forced.prompt_ids):
        ref = reference_guided_logits(sharp_model(family), prompt_ids, LinearBridge(), layer=LAYER,
                                      refresh_interval=3, tokens=answers[i])
        assert (forced.logits[i] - ref.logits).abs().max().item() < ATOL
    with pytest.raises(GenerationError, match="one non-empty token list per prompt"):
        generate(family, None, forced_tokens=answers[:2])


def test_value_guidance_gate_guides_exactly_the_rows_scoring_above_their_threshold():
    """ValueGuidance.gate_fn: a prompt is guided where its score s > the prompt threshold; an answer in
    progress is judged (in its prompt's context) against the answer threshold; no threshold guides all."""
    import dataclasses

    from svgt.decoding.guidance import ValueGuidance
    from svgt.model import ValueModule, ValueModuleConfig

    torch.manual_seed(0)
    config = ValueModuleConfig(hidden_size=32, layer=2, d_v=16, encoder_heads=2, cross_attn_heads=2)
    module = ValueModule(config).eval()
    states, mask = torch.randn(6, 5, 32) * 3, torch.ones(6, 5, dtype=torch.bool)
    answer = torch.randn(6, 4, 32) * 3
    with torch.no_grad():
        _, prompt_s = module.score(states, mask)
        _, answer_s = module.score(answer, torch.ones(6, 4, dtype=torch.bool), states, mask)
    prompt_cut, answer_cut = prompt_s.median().item(), answer_s.median().item()
    module.config = dataclasses.replace(config, gate="fixed", gate_threshold=prompt_cut,
                                        gate_response_threshold=answer_cut)
    empty = states[:, :0]
    with torch.no_grad():
        guidance = ValueGuidance(module, states, mask)
        opened = guidance.gate_fn(empty)
        assert opened.tolist() == (prompt_s > prompt_cut).tolist() and 0 < int(opened.sum()) < 6
        assert guidance.gate_fn(answer).tolist() == (answer_s > answer_cut).tolist()
        assert ValueGuidance(module, states, mask, threshold=None).gate_fn(empty).all()
        lowered = ValueGuidance(module, states, mask, threshold=prompt_s.min().item() - 1)
        assert lowered.gate_fn(empty).all()  # a float overrides the prompt threshold
