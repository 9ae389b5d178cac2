"""Plug a trained ValueModule into guided decoding: the bridge, inject and score callables.

What the value module judges at each point of decoding:
* the first bridge (after the prompt) comes from the prompt as a whole: z = E(H_prompt), the stage-1
  view, and h_v = the last prompt token's state (exactly what stage 3 trained the bridge on);
* a refresh at generated token t judges that token in the context of its prompt:
  z = E([h_t] | H_prompt) through the conditional path (the stage-2 view), and h_v = h_t.
SVGT-Inject and the per-token trajectory scores use the same per-token judgement.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from transformers import PreTrainedModel

from svgt.backbone.adapter import LayerAdapter
from svgt.backbone.runner import BlockRunner
from svgt.backbone.text import encode_prompt
from svgt.extract import pad_batch
from svgt.generation import GenerationOutput, guided_generate
from svgt.model import ValueModule

Method = Literal["none", "svgt", "svgt-inject"]
METHODS: tuple[str, ...] = ("none", "svgt", "svgt-inject")


@dataclass
class ValueGuidance:
    """Callables for one batch of prompts (rows are independent; the batch order is fixed).

    The prompt context (layer-l* states of the left-padded prompts, last ``window`` tokens as stage 1
    trained on) is given at construction or, in generation, handed over by the decode loop's prefill
    through ``observe_prompt`` so no second forward pass over the prompts is needed.
    """

    module: ValueModule
    prompt_states: torch.Tensor | None = None  # [B, M, d] layer-l* states of the (left-padded) prompts
    prompt_mask: torch.Tensor | None = None  # [B, M] bool, True = real token
    window: int = 128
    _bridges_made: int = field(default=0, init=False)

    def observe_prompt(self, states: torch.Tensor, mask: torch.Tensor) -> None:
        """``prompt_fn`` for ``guided_generate``: keep the prefill's layer-l* prompt states."""
        self.prompt_states = states[:, -self.window:].float()
        self.prompt_mask = mask[:, -self.window:].bool()

    def _context(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.prompt_states is None or self.prompt_mask is None:
            raise RuntimeError("ValueGuidance has no prompt states: pass them or use it as guided_generate's prompt_fn")
        return self.prompt_states, self.prompt_mask

    def _token_z(self, h: torch.Tensor) -> torch.Tensor:
        ones = torch.ones(h.shape[0], 1, dtype=torch.bool, device=h.device)
        z, _ = self.module.score(h[:, None, :], ones, *self._context())
        return z

    def bridge_fn(self, h: torch.Tensor) -> torch.Tensor:
        if self._bridges_made == 0:
            z, _ = self.module.score(*self._context())
        else:
            z = self._token_z(h)
        self._bridges_made += 1
        return self.module.bridge_tokens(h, z)

    def inject_fn(self, h: torch.Tensor) -> torch.Tensor:
        return self.module.inject_delta(self._token_z(h), dtype=h.dtype)

    def score_fn(self, h: torch.Tensor) -> torch.Tensor:
        ones = torch.ones(h.shape[0], 1, dtype=torch.bool, device=h.device)
        _, s = self.module.score(h[:, None, :], ones, *self._context())
        return s


def prompt_states(model: PreTrainedModel, tokenizer: Any, prompts: Sequence[str], layer: int,
                  chat_template: bool = True, window: int = 128) -> tuple[torch.Tensor, torch.Tensor]:
    """Layer-l* states of the prompts (the last ``window`` tokens, as stage 1 trained on), left-padded."""
    ids = [encode_prompt(tokenizer, p, chat_template) for p in prompts]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    input_ids, mask = pad_batch(ids, int(pad), padding_side="left")
    device = next(model.parameters()).device
    with torch.no_grad():
        h = LayerAdapter(model).hidden_states_at(input_ids.to(device), mask.to(device), layer)
    return h[:, -window:].float(), mask[:, -window:].bool().to(device)


def generate_with_module(model: PreTrainedModel, tokenizer: Any, prompts: Sequence[str], *,
                         module: ValueModule | None, method: Method, runner: BlockRunner | None = None,
                         refresh_interval: int | None = None, momentum: float | None = None,
                         return_scores: bool = False, **kwargs: Any) -> GenerationOutput:
    """``none``: unguided; ``svgt``: bridge tokens; ``svgt-inject``: the residual-stream ablation."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r} (choose from {', '.join(METHODS)})")
    if method == "none" and not return_scores:
        return guided_generate(model, tokenizer, list(prompts), runner=runner, **kwargs)
    if module is None:
        raise ValueError(f"method {method!r} needs a value module")
    cfg = module.config
    guidance = ValueGuidance(module)
    return guided_generate(
        model, tokenizer, list(prompts),
        bridge_fn=guidance.bridge_fn if method == "svgt" else None,
        inject_fn=guidance.inject_fn if method == "svgt-inject" else None,
        score_fn=guidance.score_fn if return_scores else None, return_scores=return_scores,
        prompt_fn=guidance.observe_prompt,
        layer=cfg.layer, num_bridge_tokens=cfg.num_bridge_tokens if method == "svgt" else None,
        refresh_interval=refresh_interval or cfg.refresh_interval,
        momentum=cfg.momentum if momentum is None else momentum, runner=runner, **kwargs)
