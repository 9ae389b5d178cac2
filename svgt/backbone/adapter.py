"""Architecture access through one small adapter, so nothing else touches model internals.

The decoder blocks are found structurally (the ModuleList whose length equals the config's layer
count), never by model name, so any ``AutoModelForCausalLM`` decoder works.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedModel

from svgt.core.errors import BadInput


class LayerError(BadInput):
    """The requested layer does not fit the backbone."""


class _StopForward(Exception):
    """Raised from a hook to stop the forward pass once the wanted layer has run."""


def default_layer(num_layers: int) -> int:
    """l* per the authors' rule: the middle layer for deep models, else three from the top."""
    return num_layers // 2 if num_layers > 20 else num_layers - 3


def resolve_layer(layer: int | None, num_layers: int) -> int:
    """Validate l* (1-based: the output of block ``layer``); ``None`` picks the default rule."""
    if layer is None:
        layer = default_layer(num_layers)
    if not 1 <= layer < num_layers:
        # the output of the last block is followed only by the final norm: no room for a bridge
        raise LayerError(
            f"extract.layer={layer} does not fit a backbone with {num_layers} layers (allowed 1..{num_layers - 1})"
        )
    return layer


@dataclass
class LayerAdapter:
    model: PreTrainedModel

    @property
    def num_layers(self) -> int:
        return int(self.model.config.num_hidden_layers)

    @property
    def hidden_size(self) -> int:
        return int(self.model.config.hidden_size)

    def decoder_layers(self) -> nn.ModuleList:
        n = self.num_layers
        candidates = [m for m in self.model.modules() if isinstance(m, nn.ModuleList) and len(m) == n]
        if len(candidates) != 1:
            raise LayerError(
                f"cannot identify the decoder blocks of {type(self.model).__name__}: "
                f"{len(candidates)} module lists of length {n}"
            )
        return candidates[0]

    def resolve_layer(self, layer: int | None) -> int:
        return resolve_layer(layer, self.num_layers)

    @torch.no_grad()
    def hidden_states_at(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, layer: int, *,
                         cache: Any | None = None) -> torch.Tensor:
        """Output of block ``layer`` for a padded batch, running only blocks 1..layer.

        Position ids follow the attention mask so left- and right-padded rows get the same positions
        as when run alone. With a ``cache`` (a ``DynamicCache`` holding earlier positions of every row),
        ``attention_mask`` covers the cached positions plus ``input_ids`` and blocks 1..layer append to it.
        """
        block = self.decoder_layers()[layer - 1]
        captured: list[torch.Tensor] = []

        def hook(_module: nn.Module, _args: tuple, output: torch.Tensor | tuple) -> None:
            captured.append(output[0] if isinstance(output, tuple) else output)
            raise _StopForward

        position_ids = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)[:, -input_ids.shape[1]:]
        handle = block.register_forward_hook(hook)
        try:
            self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                       past_key_values=cache, use_cache=cache is not None)
        except _StopForward:
            pass
        finally:
            handle.remove()
        if not captured:
            raise LayerError(f"block {layer} never ran during the forward pass")
        return captured[0]
