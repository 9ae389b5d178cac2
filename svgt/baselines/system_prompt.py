"""System prompt: a safety instruction as the chat template's system message (no training, no hooks).

Without a chat template the instruction is prepended to the prompt as plain text (``encode_prompt``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from transformers import PreTrainedModel

from svgt.backbone.text import encode_prompt
from svgt.baselines.base import Baseline, BaselineError


@dataclass
class SystemPromptBaseline(Baseline):
    method: ClassVar[str] = "system-prompt"
    text: str

    def __post_init__(self) -> None:
        if not self.text.strip():
            raise BaselineError("system-prompt: the system prompt text is empty")

    def prompt_ids(self, tokenizer: Any, prompts: Sequence[str], chat_template: bool = True) -> list[list[int]]:
        return [encode_prompt(tokenizer, p, chat_template, system_prompt=self.text) for p in prompts]

    def install(self, model: PreTrainedModel, stack: contextlib.ExitStack) -> None:
        return None  # the prompt carries the whole method

    def config_dict(self) -> dict[str, Any]:
        return {"text": self.text}

    @classmethod
    def from_saved(cls, config: dict[str, Any], tensors: dict[str, torch.Tensor]) -> SystemPromptBaseline:
        return cls(text=str(config["text"]))
