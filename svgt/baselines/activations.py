"""One batched forward pass per batch that records everything the probe-based baselines fit on.

For each (prompt, response) row, with the prompt cut to its last and the response to its first N tokens
(the response ends with EOS, as in extraction), at the row's last token:

* ``block_out``  [N, L, d]  the output of every decoder block (ConVA's probes, NeVA's leakage read-out)
* ``attn_in``    [N, L, A]  the input of every attention output projection, all heads (ITI)
* ``mlp_in``     [N, L, I]  the input of every MLP output projection, the neuron activations (NeVA)

and ``head_in``: per row, the LM head's input at every position from the last prompt token to the last
response token, [T_i + 1, d] (RE-Control's state trajectories). Rows without a response are recorded at
their last prompt token. The forward stops at the LM head (no vocabulary projection is computed).
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm
from transformers import PreTrainedModel

from svgt.backbone.batching import pad_batch
from svgt.backbone.text import encode_prompt, encode_response
from svgt.baselines.hooks import block_parts, decoder_blocks, lm_head

PARTS = ("block_out", "attn_in", "mlp_in", "head_in")


class _Stop(Exception):
    """Raised at the LM head: nothing after it is needed."""


@dataclass
class Activations:
    block_out: torch.Tensor | None = None
    attn_in: torch.Tensor | None = None
    mlp_in: torch.Tensor | None = None
    head_in: list[torch.Tensor] = field(default_factory=list)


@dataclass(frozen=True)
class Encoding:
    """Token budget and template, shared by every fitted baseline."""

    max_prompt_tokens: int = 96
    max_response_tokens: int = 64
    chat_template: bool = True
    system_prompt: str | None = None

    def encode(self, tokenizer: Any, prompt: str, response: str | None) -> tuple[list[int], list[int]]:
        p = encode_prompt(tokenizer, prompt, self.chat_template, system_prompt=self.system_prompt)
        r = encode_response(tokenizer, response) if response is not None else []
        return p[-self.max_prompt_tokens :], r[: self.max_response_tokens]


def _rows_at(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """x[b, index[b]] for x [B, T, D] -> [B, D], as float32 on the CPU."""
    return x[torch.arange(x.shape[0], device=x.device), index.to(x.device)].detach().float().cpu()


@torch.no_grad()
def collect_activations(
    model: PreTrainedModel,
    tokenizer: Any,
    prompts: Sequence[str],
    responses: Sequence[str | None],
    encoding: Encoding,
    *,
    parts: Sequence[str] = PARTS,
    batch_size: int = 8,
    progress: bool = False,
    desc: str = "activations",
) -> Activations:
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        raise ValueError(f"unknown activation parts {unknown} (known: {', '.join(PARTS)})")
    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
    encoded = [encoding.encode(tokenizer, p, r) for p, r in zip(prompts, responses, strict=True)]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    device = next(model.parameters()).device
    blocks = decoder_blocks(model)
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i][0]) + len(encoded[i][1]))
    per_row: dict[str, list[Any]] = {k: [None] * len(encoded) for k in parts}
    state: dict[str, Any] = {}

    def on_block(i: int):
        def hook(_m: nn.Module, _a: tuple, out: Any) -> None:
            state["block_out"][i] = _rows_at(out[0] if isinstance(out, tuple) else out, state["last"])

        return hook

    def on_input(name: str, i: int):
        def hook(_m: nn.Module, args: tuple, kwargs: dict) -> None:
            x = args[0] if args else next(v for v in kwargs.values() if isinstance(v, torch.Tensor))
            state[name][i] = _rows_at(x, state["last"])

        return hook

    def on_head(_m: nn.Module, args: tuple, kwargs: dict) -> None:
        if "head_in" in parts:
            x = args[0] if args else next(v for v in kwargs.values() if isinstance(v, torch.Tensor))
            state["head_in"] = [x[b, s:e].detach().float().cpu() for b, (s, e) in enumerate(state["spans"])]
        raise _Stop

    with contextlib.ExitStack() as stack:
        for i, block in enumerate(blocks):
            if "block_out" in parts:
                stack.callback(block.register_forward_hook(on_block(i)).remove)
            if "attn_in" in parts or "mlp_in" in parts:
                bp = block_parts(block)
                for name, module in (("attn_in", bp.attn_out), ("mlp_in", bp.mlp_out)):
                    if name in parts:
                        stack.callback(module.register_forward_pre_hook(on_input(name, i), with_kwargs=True).remove)
        stack.callback(lm_head(model).register_forward_pre_hook(on_head, with_kwargs=True).remove)
        starts = range(0, len(order), batch_size)
        for start in tqdm(starts, desc=desc, disable=not progress, leave=False):
            batch = order[start : start + batch_size]
            seqs = [encoded[i][0] + encoded[i][1] for i in batch]
            ids, mask = pad_batch(seqs, int(pad), padding_side="right")
            state["last"] = mask.sum(-1) - 1
            state["spans"] = [(len(encoded[i][0]) - 1, len(s)) for i, s in zip(batch, seqs, strict=True)]
            for name in ("block_out", "attn_in", "mlp_in"):
                state[name] = [None] * len(blocks)
            with contextlib.suppress(_Stop):
                model(input_ids=ids.to(device), attention_mask=mask.to(device), use_cache=False)
            for name in ("block_out", "attn_in", "mlp_in"):
                if name in parts:
                    stacked = torch.stack(state[name], dim=1)  # [B, L, D]
                    for j, i in enumerate(batch):
                        per_row[name][i] = stacked[j]
            if "head_in" in parts:
                for j, i in enumerate(batch):
                    per_row["head_in"][i] = state["head_in"][j]
    out = Activations()
    for name in ("block_out", "attn_in", "mlp_in"):
        if name in parts:
            setattr(out, name, torch.stack(per_row[name]))
    if "head_in" in parts:
        out.head_in = per_row["head_in"]
    return out
