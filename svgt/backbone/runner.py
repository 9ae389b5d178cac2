"""Drive a frozen causal LM block by block, with explicit positions, masks and a KV cache.

Guided decoding needs to run the lower blocks (1..l*) and the upper blocks (l*+1..L) on *different*
sequences with different position ids, which ``model.forward`` cannot express. ``BlockRunner`` exposes
the four pieces it needs, each driven through the model's own modules (no forward is copied):

* ``embed``: the input of block 1. The model's own forward is run with the given ids and position ids
  and stopped by a pre-hook on block 1, so whatever the architecture does before its blocks (token
  embedding, GPT-2's learned ``wpe`` position embedding, embedding scaling, dropout) is applied by the
  model itself. The same capture yields the keyword arguments the model passes to its blocks: when it
  passes ``position_embeddings`` (rotary cos/sin, computed by its ``rotary_emb``) we reuse them, so RoPE
  comes from the model's rotary module for any position ids we choose.
* ``run_blocks``: a contiguous range of decoder blocks, called with keyword arguments (hidden states,
  4D mask from ``transformers.masking_utils``, position ids, rotary embeddings, a ``DynamicCache``).
* ``logits``: final norm then LM head. The final norm is found by data flow, not by name: during one
  probe forward it is the module that receives the last block's output tensor. The head is
  ``get_output_embeddings()``; the probe checks that norm + head reproduce the model's logits, so a model
  that post-processes logits (soft-capping, scaling) is refused instead of silently mis-scored.

All architecture-specific knowledge lives in ``_probe``, ``_mask_builders`` and ``_rotary_by_layer_type`` below.

Cache: a config-less ``DynamicCache`` keeps every layer as a plain, croppable ``DynamicLayer``; sliding
window attention (Mistral) is applied by the mask instead of by evicting keys, so any layer can be
cropped back to the prompt at a bridge refresh, at the cost of keeping keys beyond the window.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers import DynamicCache, PreTrainedModel
from transformers.cache_utils import DynamicLayer
from transformers.masking_utils import create_causal_mask, create_sliding_window_causal_mask

from svgt.backbone.adapter import LayerAdapter
from svgt.core.errors import BadInput

MaskBuilder = Callable[..., Any]
# rotary (cos, sin); or, for models whose layer types use different rotary bases (Gemma 3: local sliding-window
# layers and global ones), one (cos, sin) per layer type
PositionEmbeddings = tuple[torch.Tensor, ...] | dict[str, tuple[torch.Tensor, ...]] | None

# the layer kinds whose masks we know how to build; anything else (chunked, linear attention...) is refused
_MASK_BY_LAYER_TYPE: dict[str, MaskBuilder] = {
    "full_attention": create_causal_mask,
    "sliding_attention": create_sliding_window_causal_mask,
}


class RunnerError(BadInput):
    """The backbone does not fit the block-by-block runner."""


class _Stop(Exception):
    """Raised from a hook to end a forward pass early."""


def _layer_types(config: Any, num_layers: int) -> list[str]:
    text_config = config.get_text_config()
    layer_types = getattr(text_config, "layer_types", None)
    if layer_types is None:
        sliding = getattr(text_config, "sliding_window", None) is not None
        layer_types = ["sliding_attention" if sliding else "full_attention"] * num_layers
    return list(layer_types[:num_layers])


def _rotary_by_layer_type(model: nn.Module, layer_types: list[str]) -> nn.Module | None:
    """The model's rotary module when it computes different embeddings per layer type (its forward takes a
    ``layer_type``, as Gemma 3's does); None when one rotary embedding serves every block."""
    if len(set(layer_types)) < 2:
        return None
    for module in model.modules():
        if type(module).__name__.endswith("RotaryEmbedding") and \
                "layer_type" in inspect.signature(module.forward).parameters:
            return module
    return None


def _mask_builders(config: Any, num_layers: int) -> list[MaskBuilder]:
    """One masking_utils builder per decoder layer, chosen as ``create_masks_for_generate`` does.

    We cannot call ``create_masks_for_generate`` itself: the lower and upper blocks hold caches of
    different lengths, so every mask must be sized against an explicit ``layer_idx``.
    """
    layer_types = _layer_types(config, num_layers)
    unknown = sorted(set(layer_types) - set(_MASK_BY_LAYER_TYPE))
    if unknown:
        raise RunnerError(f"unsupported attention layer types {unknown}")
    return [_MASK_BY_LAYER_TYPE[t] for t in layer_types]


@dataclass(frozen=True)
class _ProbeResult:
    final_norm: nn.Module
    has_position_embeddings: bool


def _first_tensor(args: tuple, kwargs: dict) -> torch.Tensor | None:
    for value in (*args, *kwargs.values()):
        if isinstance(value, torch.Tensor):
            return value
    return None


@torch.no_grad()
def _probe(model: PreTrainedModel, layers: nn.ModuleList, device: torch.device) -> _ProbeResult:
    """One 2-token forward that discovers the final norm and whether blocks receive rotary embeddings."""
    inside_blocks = {id(m) for m in layers.modules()}
    ancestors = {id(m) for m in model.modules() if any(c is layers for c in m.modules())}
    candidates = [m for m in model.modules() if id(m) not in inside_blocks and id(m) not in ancestors]
    seen: dict[str, Any] = {"receivers": []}

    def on_first_block(_m: nn.Module, _args: tuple, kwargs: dict) -> None:
        seen["block_kwargs"] = set(kwargs)

    def on_last_block(_m: nn.Module, _args: tuple, output: Any) -> None:
        seen["last"] = output[0] if isinstance(output, tuple) else output

    def make_receiver_hook(module: nn.Module) -> Callable:
        def hook(_m: nn.Module, args: tuple, kwargs: dict) -> None:
            # identity, not equality: the norm is the module that consumes the very tensor block L returned
            if "last" in seen and _first_tensor(args, kwargs) is seen["last"]:
                seen["receivers"].append(module)
        return hook

    handles = [layers[0].register_forward_pre_hook(on_first_block, with_kwargs=True),
               layers[-1].register_forward_hook(on_last_block)]
    handles += [m.register_forward_pre_hook(make_receiver_hook(m), with_kwargs=True) for m in candidates]
    ids = torch.zeros((1, 2), dtype=torch.long, device=device)
    try:
        out = model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False)
    finally:
        for h in handles:
            h.remove()
    if not seen["receivers"]:
        raise RunnerError(f"{type(model).__name__}: no module consumes the last block's output directly")
    norm = seen["receivers"][0]  # pre-hooks fire outermost first: a wrapper around the norm would come first
    head = model.get_output_embeddings()
    if head is None:
        raise RunnerError(f"{type(model).__name__} has no output embeddings (LM head)")
    if not torch.allclose(head(norm(seen["last"])).float(), out.logits.float(), atol=1e-4, rtol=1e-4):
        raise RunnerError(f"{type(model).__name__} post-processes its logits beyond norm + LM head")
    return _ProbeResult(final_norm=norm, has_position_embeddings="position_embeddings" in seen["block_kwargs"])


def share_cache_rows(cache: DynamicCache, rows: int) -> None:
    """Make a one-row cache (a prefix common to every row) serve ``rows`` rows without copying it; the
    first append of each layer then materialises the batch."""
    for layer in cache.layers:
        layer.keys = layer.keys.expand(rows, -1, -1, -1)
        layer.values = layer.values.expand(rows, -1, -1, -1)


class GrowingLayer(DynamicLayer):
    """A cache layer whose keys/values are views of buffers with room to grow.

    ``DynamicLayer`` appends by ``torch.cat``, copying the whole cache at every decode step; for a batch of
    long prompts that copy costs as much as the attention that reads it. Here an append writes into spare
    capacity (``HEADROOM`` positions, enough for the decode steps and bridge rows of a typical request;
    beyond it the buffer is reallocated). Cropping keeps a prefix view, so a later append overwrites the
    dropped positions. Anything that replaced ``keys`` (a row-shared expand, a selection) is copied into a
    fresh buffer on the next append. In-place writes: for decoding under ``torch.no_grad`` only.
    """

    HEADROOM = 64

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any, **kwargs: Any
               ) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        n, add = self.get_seq_length(), key_states.shape[-2]
        if not self._has_room(key_states, n + add):
            self._reallocate(key_states, n, n + add)
        self._key_buffer[..., n : n + add, :] = key_states
        self._value_buffer[..., n : n + add, :] = value_states
        self.keys, self.values = self._key_buffer[..., : n + add, :], self._value_buffer[..., : n + add, :]
        return self.keys, self.values

    def _has_room(self, like: torch.Tensor, length: int) -> bool:
        buffers = getattr(self, "_key_buffer", None), getattr(self, "_value_buffer", None)
        if buffers[0] is None or length > buffers[0].shape[-2] or buffers[0].shape[:2] != like.shape[:2]:
            return False
        # keys/values must still be prefix views of the buffers (a crop keeps them so, a replacement does not)
        return all(t.data_ptr() == b.data_ptr() and t.stride() == b.stride() and t.shape[:2] == b.shape[:2]
                   for t, b in zip((self.keys, self.values), buffers, strict=True))

    def _reallocate(self, like: torch.Tensor, kept: int, length: int) -> None:
        shape = (*like.shape[:2], length + self.HEADROOM, like.shape[-1])
        keys, values = like.new_empty(shape), like.new_empty(shape)
        if kept:
            keys[..., :kept, :] = self.keys
            values[..., :kept, :] = self.values
        self._key_buffer, self._value_buffer = keys, values


def growing_cache() -> DynamicCache:
    """A config-less ``DynamicCache`` of ``GrowingLayer`` layers (appends in place; no autograd)."""
    cache = DynamicCache()
    cache.layer_class_to_replicate = GrowingLayer
    return cache


def clone_cache(cache: DynamicCache) -> DynamicCache:
    """A cache with the same keys/values in new layer objects: appending to or cropping the clone leaves
    ``cache`` as it was (its keys/values are copied into the clone's own buffers)."""
    out = growing_cache()
    for idx, layer in enumerate(cache.layers):
        out.update(layer.keys, layer.values, idx)
    return out


def select_cache_rows(cache: DynamicCache, rows: torch.Tensor) -> DynamicCache:
    """A new cache holding the given batch rows of ``cache`` (repeats allowed), in that order."""
    out = DynamicCache()
    for idx, layer in enumerate(cache.layers):
        out.update(layer.keys.index_select(0, rows), layer.values.index_select(0, rows), idx)
    return out


def merge_left_padded(caches: list[DynamicCache]) -> DynamicCache:
    """One cache for the rows of several left-padded caches, in order: every layer's keys and values are
    left-padded with zeros to the longest cache of that layer and stacked along the batch. The padded
    columns must be masked out by the caller (they are its padding)."""
    if len(caches) == 1:
        return caches[0]
    merged = growing_cache()
    for idx in range(len(caches[0].layers)):
        layers = [c.layers[idx] for c in caches]
        width = max(layer.keys.shape[-2] for layer in layers)

        def stacked(parts: list[torch.Tensor], width: int = width) -> torch.Tensor:
            return torch.cat([nn.functional.pad(t, (0, 0, width - t.shape[-2], 0)) for t in parts])

        merged.update(stacked([layer.keys for layer in layers]), stacked([layer.values for layer in layers]), idx)
    return merged


class BlockRunner:
    """Embed, run decoder block ranges with a shared ``DynamicCache``, and project to logits.

    Block indices are 0-based and half-open (``run_blocks(h, 0, l)`` runs blocks 1..l). ``attention_mask``
    is always the 2D padding mask over *everything the block range sees*: cached keys plus the new
    queries, shape [B, cache_len + q_len]; the causal, padding and sliding-window structure is then
    built by transformers for the model's attention implementation.
    """

    def __init__(self, model: PreTrainedModel) -> None:
        self.model = model
        self.adapter = LayerAdapter(model)
        self.layers = self.adapter.decoder_layers()
        self.num_layers = self.adapter.num_layers
        self.hidden_size = self.adapter.hidden_size
        self.config = model.config.get_text_config()
        self.device = next(model.parameters()).device
        self.dtype = next(model.parameters()).dtype
        self._mask_builders = _mask_builders(model.config, self.num_layers)
        self._layer_types = _layer_types(model.config, self.num_layers)
        self._typed_rotary = _rotary_by_layer_type(model, self._layer_types)
        probe = _probe(model, self.layers, self.device)
        self.final_norm = probe.final_norm
        self.lm_head = model.get_output_embeddings()
        self.uses_position_embeddings = probe.has_position_embeddings

    @staticmethod
    def new_cache() -> DynamicCache:
        return DynamicCache()

    @torch.no_grad()
    def prologue(self, input_ids: torch.Tensor, position_ids: torch.Tensor) -> tuple[torch.Tensor, PositionEmbeddings]:
        """Run the model's own forward up to block 1; return block 1's input and its rotary embeddings.

        Pass the rotary embeddings on to ``run_blocks`` for the same positions to save a second pass.
        """
        captured: dict[str, Any] = {}

        def hook(_m: nn.Module, args: tuple, kwargs: dict) -> None:
            captured["hidden"] = args[0] if args else kwargs["hidden_states"]
            captured["pe"] = kwargs.get("position_embeddings")
            raise _Stop

        handle = self.layers[0].register_forward_pre_hook(hook, with_kwargs=True)
        try:
            # an all-ones mask: padding is irrelevant to embeddings and silences the padding warning
            self.model(input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
                       position_ids=position_ids, use_cache=False)
        except _Stop:
            pass
        finally:
            handle.remove()
        if "hidden" not in captured:
            raise RunnerError("block 1 never ran during the embedding pass")
        if self._typed_rotary is not None and captured["pe"] is not None:
            # block 1 received its own layer type's embeddings; blocks of another type need theirs
            captured["pe"] = {t: self._typed_rotary(captured["hidden"], position_ids, t)
                              for t in sorted(set(self._layer_types))}
        return captured["hidden"], captured["pe"]

    def embed(self, input_ids: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
        """Input of block 1 for tokens at the given (lower-block) positions: [B, T, d]."""
        return self.prologue(input_ids, position_ids)[0]

    def position_embeddings(self, position_ids: torch.Tensor) -> PositionEmbeddings:
        """Rotary (cos, sin) for arbitrary position ids, from the model's rotary module; None without RoPE."""
        if not self.uses_position_embeddings:
            return None
        # token ids do not influence rotary embeddings, any valid id will do
        return self.prologue(torch.zeros_like(position_ids), position_ids)[1]

    def _mask(self, builder: MaskBuilder, hidden: torch.Tensor, attention_mask: torch.Tensor,
              cache: DynamicCache | None, position_ids: torch.Tensor, layer_idx: int) -> Any:
        return builder(config=self.config, inputs_embeds=hidden, attention_mask=attention_mask,
                       past_key_values=cache, position_ids=position_ids, layer_idx=layer_idx)

    def run_blocks(self, hidden: torch.Tensor, start: int, stop: int, *, position_ids: torch.Tensor,
                   attention_mask: torch.Tensor, cache: DynamicCache | None = None,
                   position_embeddings: PositionEmbeddings = None) -> torch.Tensor:
        """Run blocks ``start..stop-1`` (0-based) on ``hidden`` [B, q, d]; the cache is appended in place.

        Gradients flow when the caller enables them (stage 3 trains the bridge through the upper blocks);
        decoding runs under ``torch.no_grad``.
        """
        if not 0 <= start <= stop <= self.num_layers:
            raise RunnerError(f"block range {start}..{stop} outside 0..{self.num_layers}")
        if position_embeddings is None:
            position_embeddings = self.position_embeddings(position_ids)
        masks: dict[MaskBuilder, Any] = {}
        for i in range(start, stop):
            builder = self._mask_builders[i]
            if builder not in masks:
                # built before block i appends to its cache, so it is sized for this block range
                masks[builder] = self._mask(builder, hidden, attention_mask, cache, position_ids, i)
            kwargs: dict[str, Any] = {"attention_mask": masks[builder], "position_ids": position_ids,
                                      "past_key_values": cache, "use_cache": cache is not None}
            if isinstance(position_embeddings, dict):
                kwargs["position_embeddings"] = position_embeddings[self._layer_types[i]]
            elif position_embeddings is not None:
                kwargs["position_embeddings"] = position_embeddings
            out = self.layers[i](hidden, **kwargs)
            hidden = out[0] if isinstance(out, tuple) else out
        return hidden

    def run_shared_prefix(self, prefix_ids: torch.Tensor, rows: int, cache: DynamicCache, split: int) -> torch.Tensor:
        """Run a token prefix [1, P] common to ``rows`` sequences through every block into ``cache`` once and
        share its keys/values with all rows; returns the output of block ``split`` (1-based count of
        blocks run first; 0: the embeddings) for the prefix, [1, P, d].

        Under causal attention a prefix's states do not depend on what follows it, so the rows can then
        run only their own tokens (2D masks and positions covering the prefix columns too).
        """
        positions = torch.arange(prefix_ids.shape[1], device=prefix_ids.device)[None]
        ones = torch.ones_like(prefix_ids)
        embedded, rotary = self.prologue(prefix_ids, positions)
        h = self.run_blocks(embedded, 0, split, position_ids=positions, attention_mask=ones, cache=cache,
                            position_embeddings=rotary)
        self.run_blocks(h, split, self.num_layers, position_ids=positions, attention_mask=ones, cache=cache,
                        position_embeddings=rotary)
        share_cache_rows(cache, rows)
        return h

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """Final norm + LM head on the output of the last block."""
        return self.lm_head(self.final_norm(hidden))

    def crop_layers(self, cache: DynamicCache, start: int, length: int) -> None:
        """Crop the caches of blocks ``start..L-1`` back to their first ``length`` positions."""
        for layer in cache.layers[start:]:
            excess = layer.get_seq_length() - length
            if excess > 0:
                layer.crop(-excess)  # transformers 5: a negative count of tokens to drop
