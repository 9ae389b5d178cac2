"""Where the baselines hook in, found structurally, and hook helpers that always clean up.

Decoder blocks come from ``LayerAdapter`` (the ModuleList as long as the layer count) and the LM head from
``get_output_embeddings()``. Inside a block, the attention output projection (its input: the heads'
outputs, concatenated) and the MLP output projection (its input: the MLP's neuron activations) are
resolved by ``block_parts`` from a short table of the standard Hugging Face layouts, the one place that
knows submodule names; an unknown layout raises instead of guessing.

Hooks are module hooks, so they fire both under ``model(...)`` and under ``BlockRunner``, which calls the
same block, projection and head modules.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedModel

from svgt.backbone.adapter import LayerAdapter
from svgt.baselines.base import BaselineError

# (attention output projection, MLP output projection) as paths inside one decoder block
BLOCK_LAYOUTS: tuple[tuple[str, str], ...] = (
    ("self_attn.o_proj", "mlp.down_proj"),  # Llama, Mistral, Qwen2 and most decoders since
    ("attn.c_proj", "mlp.c_proj"),  # GPT-2
)

TensorFn = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class BlockParts:
    attn_out: nn.Module  # input: [.., heads * head_dim]
    mlp_out: nn.Module  # input: [.., intermediate] neuron activations


def block_parts(block: nn.Module) -> BlockParts:
    """The attention and MLP output projections of one decoder block (see ``BLOCK_LAYOUTS``)."""
    for attn, mlp in BLOCK_LAYOUTS:
        try:
            return BlockParts(block.get_submodule(attn), block.get_submodule(mlp))
        except AttributeError:
            continue
    known = "; ".join(f"{a} + {m}" for a, m in BLOCK_LAYOUTS)
    raise BaselineError(
        f"unknown decoder block layout {type(block).__name__}: expected one of [{known}] "
        "(add the layout to svgt.baselines.hooks.BLOCK_LAYOUTS)"
    )


def decoder_blocks(model: PreTrainedModel) -> nn.ModuleList:
    return LayerAdapter(model).decoder_layers()


def lm_head(model: PreTrainedModel) -> nn.Module:
    head = model.get_output_embeddings()
    if head is None:
        raise BaselineError(f"{type(model).__name__} has no output embeddings (LM head)")
    return head


def module_path(model: nn.Module, module: nn.Module) -> str:
    for name, candidate in model.named_modules():
        if candidate is module:
            return name
    raise BaselineError(f"{type(module).__name__} is not a submodule of {type(model).__name__}")


def _first_tensor_key(args: tuple, kwargs: dict) -> tuple[str, int | str]:
    if args and isinstance(args[0], torch.Tensor):
        return "args", 0
    for key, value in kwargs.items():
        if isinstance(value, torch.Tensor):
            return "kwargs", key
    raise BaselineError("hooked module was called without a tensor input")


def edit_input(stack: contextlib.ExitStack, module: nn.Module, fn: TensorFn) -> None:
    """Replace ``module``'s first tensor input x by ``fn(x)`` until ``stack`` closes."""

    def hook(_m: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        where, key = _first_tensor_key(args, kwargs)
        if where == "args":
            return (fn(args[0]), *args[1:]), kwargs
        return args, {**kwargs, key: fn(kwargs[key])}

    stack.callback(module.register_forward_pre_hook(hook, with_kwargs=True).remove)


def edit_output(stack: contextlib.ExitStack, module: nn.Module, fn: TensorFn) -> None:
    """Replace ``module``'s (first) output tensor h by ``fn(h)`` until ``stack`` closes."""

    def hook(_m: nn.Module, _args: tuple, output: Any) -> Any:
        if isinstance(output, tuple):
            return (fn(output[0]), *output[1:])
        return fn(output)

    stack.callback(module.register_forward_hook(hook).remove)


def add_at(x: torch.Tensor, index: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """x with ``values`` added to the last-dimension entries ``index`` only; every other entry is x's own."""
    out = x.clone()
    out[..., index] += values.to(device=x.device, dtype=x.dtype)
    return out
