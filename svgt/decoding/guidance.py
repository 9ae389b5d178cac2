"""Plug a trained ValueModule into guided decoding: the gate, bridge, inject and score callables.

What the value module judges at each point of decoding:
* the gate (``ValueModuleConfig.gate``): after the prompt, s = D(E(H_prompt)) (the stage-1 view); at each
  refresh, s = D(E(H_response so far | H_prompt)) (the stage-2 view). A row is guided once s exceeds the
  threshold; until then the backbone runs exactly as unguided (see ``guided_generate``);
* the first bridge (after the prompt) comes from the prompt as a whole: z = E(H_prompt), and h_v = the
  last prompt token's state (exactly what stage 3 trained the bridge on);
* a refresh at generated token t, ``refresh_context="token"``: z = E([h_t] | H_prompt) and h_v = h_t;
  ``"response"`` (the paper): z = E(H_response so far | H_prompt) and h_v stays the last prompt state.
SVGT-Inject and the per-token trajectory scores use the per-token judgement.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from transformers import PreTrainedModel

from svgt.backbone.adapter import LayerAdapter
from svgt.backbone.batching import pad_batch
from svgt.backbone.runner import BlockRunner
from svgt.backbone.text import encode_prompt
from svgt.core.method_names import MODULE_METHODS
from svgt.decoding.loop import GenerationOutput, guided_generate
from svgt.model import ValueModule

METHODS: tuple[str, ...] = ("none", *MODULE_METHODS)  # what this module generates with
Method = Literal[METHODS]


@dataclass
class ValueGuidance:
    """Callables for one batch of prompts (rows are independent; the batch order is fixed).

    The prompt context (layer-l* states of the left-padded prompts, last ``window`` tokens as stage 1
    trained on) is given at construction or, in generation, handed over by the decode loop's prefill
    through ``observe_prompt`` so no second forward pass over the prompts is needed. ``threshold``
    overrides the module's gate (``"module"``: its own; None: every row guided; a float: the prompt threshold,
    a prompt being guided where s > threshold, while answers keep the module's calibrated answer threshold).
    """

    module: ValueModule
    prompt_states: torch.Tensor | None = None  # [B, M, d] layer-l* states of the (left-padded) prompts
    prompt_mask: torch.Tensor | None = None  # [B, M] bool, True = real token
    window: int = 128
    threshold: float | None | Literal["module"] = "module"
    gate_scores: list[torch.Tensor] = field(default_factory=list, init=False)  # s at each gate call
    _response: torch.Tensor | None = field(default=None, init=False)  # [B, t, d] generated so far (from the gate)
    _bridges_made: int = field(default=0, init=False)

    @property
    def gate_threshold(self) -> float | None:
        return self.module.config.threshold if self.threshold == "module" else self.threshold  # type: ignore[return-value]

    @property
    def response_threshold(self) -> float | None:
        """The threshold for an answer in progress: the module's own (its gate off: the prompt threshold)."""
        if self.threshold is None:
            return None
        own = self.module.config.response_threshold
        return own if own is not None else self.gate_threshold

    def observe_prompt(self, states: torch.Tensor, mask: torch.Tensor) -> None:
        """``prompt_fn`` for ``guided_generate``: keep the prefill's layer-l* prompt states."""
        self.prompt_states = states[:, -self.window:].float()
        self.prompt_mask = mask[:, -self.window:].bool()
        self._response, self._bridges_made = None, 0

    def _context(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.prompt_states is None or self.prompt_mask is None:
            raise RuntimeError("ValueGuidance has no prompt states: pass them or use it as guided_generate's prompt_fn")
        return self.prompt_states, self.prompt_mask

    def _token_z(self, h: torch.Tensor) -> torch.Tensor:
        ones = torch.ones(h.shape[0], 1, dtype=torch.bool, device=h.device)
        z, _ = self.module.score(h[:, None, :], ones, *self._context())
        return z

    def _judge(self, response: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """(z, s) of the prompt alone (``response`` None or empty) or of the response so far in its context."""
        if response is None or response.shape[1] == 0:
            return self.module.score(*self._context())
        response = response[:, -self.window:].float()
        ones = torch.ones(response.shape[:2], dtype=torch.bool, device=response.device)
        return self.module.score(response, ones, *self._context())

    def gate_fn(self, response: torch.Tensor) -> torch.Tensor:
        """``gate_fn`` for ``guided_generate``: which rows are judged harmful now (s > threshold)."""
        self._response = response
        threshold = self.gate_threshold if response.shape[1] == 0 else self.response_threshold
        _, s = self._judge(response)
        self.gate_scores.append(s.detach())
        return torch.ones_like(s, dtype=torch.bool) if threshold is None else s > threshold

    def bridge_fn(self, h: torch.Tensor) -> torch.Tensor:
        # without a gate nothing reports the response: the first bridge is the one after the prompt
        after_prompt = self._bridges_made == 0 if self._response is None else self._response.shape[1] == 0
        self._bridges_made += 1
        if after_prompt:
            z, _ = self.module.score(*self._context())
            h_v = h
        elif self.module.config.refresh_context == "response":
            z, _ = self._judge(self._response)
            h_v = self._context()[0][:, -1].to(h.dtype)  # left-padded: the last column is the last prompt token
        else:
            z, h_v = self._token_z(h), h
        return self.module.bridge_tokens(h_v, z).to(h.dtype)

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
                         return_scores: bool = False, threshold: float | None | Literal["module"] = "module",
                         **kwargs: Any) -> GenerationOutput:
    """``none``: unguided; ``svgt``: bridge tokens; ``svgt-inject``: the residual-stream ablation.

    ``threshold``: the module's own gate (``"module"``), None (guide every row) or a score threshold."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r} (choose from {', '.join(METHODS)})")
    if method == "none" and not return_scores:
        return guided_generate(model, tokenizer, list(prompts), runner=runner, **kwargs)
    if module is None:
        raise ValueError(f"method {method!r} needs a value module")
    cfg = module.config
    guidance = ValueGuidance(module, threshold=threshold)
    gated = guidance.gate_threshold is not None or cfg.refresh_context == "response"
    out = guided_generate(
        model, tokenizer, list(prompts),
        bridge_fn=guidance.bridge_fn if method == "svgt" else None,
        inject_fn=guidance.inject_fn if method == "svgt-inject" else None,
        score_fn=guidance.score_fn if return_scores else None, return_scores=return_scores,
        prompt_fn=guidance.observe_prompt, gate_fn=guidance.gate_fn if gated else None,
        layer=cfg.layer, num_bridge_tokens=cfg.num_bridge_tokens if method == "svgt" else None,
        refresh_interval=refresh_interval or cfg.refresh_interval,
        momentum=cfg.momentum if momentum is None else momentum, runner=runner, **kwargs)
    if guidance.gate_scores:
        out.prompt_scores = [float(x) for x in guidance.gate_scores[0]]
    return out
