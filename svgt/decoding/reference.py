"""The uncached reference for guided decoding: every token recomputed from scratch through the model's own
forward, with block l*'s output replaced. Slow and simple; the cached loop is tested equal to it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from transformers import PreTrainedModel

from svgt.backbone.adapter import LayerAdapter
from svgt.decoding.loop import GateFn, GuidanceCalls, GuidanceSchedule, PromptFn, StateFn


@dataclass
class ReferenceOutput:
    tokens: list[int]
    logits: torch.Tensor  # [T, V]
    bridge_calls: int


@torch.no_grad()
def _forward_with_layer_output(model: PreTrainedModel, layer: int, replacement: torch.Tensor,
                               position_ids: torch.Tensor) -> torch.Tensor:
    """The model's own forward with block ``layer``'s output replaced; returns the last row's logits.

    Blocks 1..layer run on dummy tokens whose results are discarded, so ``position_ids`` only act on the
    upper blocks (through the model's own mask and rotary code).
    """
    block = LayerAdapter(model).decoder_layers()[layer - 1]

    def hook(_m: torch.nn.Module, _args: tuple, output: Any) -> Any:
        return (replacement, *output[1:]) if isinstance(output, tuple) else replacement

    ids = torch.zeros(replacement.shape[:2], dtype=torch.long, device=replacement.device)
    handle = block.register_forward_hook(hook)
    try:
        out = model(input_ids=ids, attention_mask=torch.ones_like(ids), position_ids=position_ids, use_cache=False)
    finally:
        handle.remove()
    return out.logits[0, -1]


def reference_guided_logits(
    model: PreTrainedModel,
    prompt_ids: Sequence[int],
    bridge_fn: StateFn | None = None,
    *,
    inject_fn: StateFn | None = None,
    layer: int,
    num_bridge_tokens: int | None = None,
    refresh_interval: int = 5,
    momentum: float = 0.8,
    max_new_tokens: int = 16,
    tokens: Sequence[int] | None = None,
    prompt_fn: PromptFn | None = None,
    gate_fn: GateFn | None = None,
) -> ReferenceOutput:
    """Uncached, single-row ground truth: every step recomputes the whole sequence from scratch.

    Layer-l* states come from the model's own forward on the plain tokens (``hidden_states_at``); the
    upper blocks run inside the model's own forward with block l*'s output replaced by
    [H_prompt; B; H_y] (or H + delta for SVGT-Inject) and the shifted position ids. Greedy unless
    ``tokens`` is given, in which case those tokens are teacher-forced and their logits returned.
    Nothing here shares code with the cached decoder except the schedule.
    """
    guidance = GuidanceCalls(bridge_fn, inject_fn, num_bridge_tokens, GuidanceSchedule(refresh_interval, momentum),
                         prompt_fn, gate_fn)
    adapter = LayerAdapter(model)
    device = next(model.parameters()).device
    m = len(prompt_ids)
    steps = len(tokens) if tokens is not None else max_new_tokens
    generated: list[int] = []
    all_logits = []
    bridge: torch.Tensor | None = None
    active = guidance.gate_fn is None
    opened_at = 0  # the step whose prediction first saw the guidance
    for s in range(steps):
        ids = torch.tensor([list(prompt_ids) + generated], device=device)
        h = adapter.hidden_states_at(ids, torch.ones_like(ids), layer)  # [1, m + s, d]
        if s == 0 and prompt_fn is not None:
            prompt_fn(h[:, :m].detach(), torch.ones(1, m, dtype=torch.bool, device=device))
        newly = False
        if guidance.method != "none" and guidance.gate_fn is not None and (s == 0 or guidance.schedule.refresh_due(s)):
            judged = bool(guidance.gate(h[:, m:])[0])
            newly, active = judged and not active, active or judged
            opened_at = s if newly else opened_at
        if guidance.method == "bridge" and active:
            if bridge is None or newly:
                if s == 0 or guidance.schedule.refresh_due(s):
                    bridge = guidance.bridge(h[:, -1])
            elif guidance.schedule.refresh_due(s):
                bridge = guidance.schedule.blend(bridge, guidance.bridge(h[:, -1]))
        if guidance.method == "bridge" and bridge is not None:
            k = bridge.shape[1]
            hidden = torch.cat([h[:, :m], bridge, h[:, m:]], dim=1)
            positions = torch.cat([torch.arange(m + k), m + k + torch.arange(s)]).to(device)
        else:
            hidden = h.clone()
            if guidance.method == "inject" and active:
                # every position from the last prompt token on predicts a generated token; a gated row gets
                # its delta from the step its gate opened
                first = m - 1 + opened_at
                hidden[0, first:] += guidance.delta(h[0, first:])
            positions = torch.arange(m + s, device=device)
        logits = _forward_with_layer_output(model, layer, hidden, positions[None])
        all_logits.append(logits.float().cpu())
        generated.append(int(tokens[s]) if tokens is not None else int(logits.argmax()))
    return ReferenceOutput(generated, torch.stack(all_logits), guidance.bridge_calls)
