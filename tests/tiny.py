"""Tiny randomly initialised decoders and an offline tokenizer for unit tests (no hub)."""

from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    AutoModelForCausalLM,
    Gemma3TextConfig,
    GPT2Config,
    LlamaConfig,
    MistralConfig,
    PreTrainedTokenizerFast,
    Qwen2Config,
)

CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
CORPUS = [
    "How do I bake bread at home? Mix flour, water, salt and yeast, then knead and bake.",
    "Explain photosynthesis in simple words. Plants turn light, water and air into sugar.",
    "Tell me how to pick a lock. I can't help with that, but a locksmith can.",
    "Write a haiku about the sea. Waves fold into foam, the gulls call, the tide goes out.",
    "What is 12 times 7? It is 84. The capital of France is Paris.",
]


def make_tokenizer(chat_template: bool = True) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    special = ["<unk>", "<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=special,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", eos_token="<|im_end|>",
                                   pad_token="<|endoftext|>", bos_token="<|im_start|>")
    if chat_template:
        fast.chat_template = CHAT_TEMPLATE
    return fast


def tiny_config(family: str, vocab_size: int, num_layers: int = 4):
    common = dict(vocab_size=vocab_size)
    if family == "gpt2":
        return GPT2Config(n_embd=32, n_layer=num_layers, n_head=4, n_positions=512, **common)
    if family == "gemma3":  # sliding-window and global layers with different rotary bases; a 4-token window
        types = ["sliding_attention", "full_attention"] * (num_layers // 2) + ["sliding_attention"] * (num_layers % 2)
        return Gemma3TextConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=num_layers,
                                num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=512,
                                sliding_window=4, layer_types=types, tie_word_embeddings=False, **common)
    cls = {"llama": LlamaConfig, "qwen2": Qwen2Config, "mistral": MistralConfig}[family]
    return cls(hidden_size=32, intermediate_size=64, num_hidden_layers=num_layers, num_attention_heads=4,
               num_key_value_heads=2, max_position_embeddings=512, tie_word_embeddings=False, **common)


FAMILIES = ("llama", "qwen2", "mistral", "gpt2")
# a decoder whose layer types differ in attention window and rotary base (Gemma 3): the runner's own tests
EXTRA_FAMILIES = ("gemma3",)


def make_model(family: str, vocab_size: int, num_layers: int = 4, seed: int = 0):
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(tiny_config(family, vocab_size, num_layers), dtype=torch.float32)
    return model.eval()


def save_tiny_model_dir(path: Path, family: str = "llama", num_layers: int = 4,
                        chat_template: bool = True) -> Path:
    """A local Hugging Face directory (safetensors) holding a tiny random model and our tokenizer."""
    tok = make_tokenizer(chat_template)
    model = make_model(family, len(tok), num_layers)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path, safe_serialization=True)
    tok.save_pretrained(path)
    return path


def canonical_frame(n: int = 24, seed: int = 0):
    """A small canonical value dataset: prompt-only rows and prompt-response pairs in all splits."""
    import random

    import pandas as pd

    rng = random.Random(seed)
    topics = ["bread", "the sea", "locks", "tax forms", "python lists", "volcanoes", "chess", "tea"]
    rows = []
    for i in range(n):
        harmful = i % 3 == 0
        prompt = f"Question {i}: tell me about {rng.choice(topics)}" + " please" * rng.randint(0, 6)
        has_response = i % 2 == 0
        rows.append({
            "id": f"row-{i:04d}",
            "prompt": prompt,
            "response": (("I can't help with that." if harmful else "Sure, here is some help. " * rng.randint(1, 4))
                         if has_response else None),
            "prompt_harmful": int(harmful),
            "response_harmful": 0 if has_response else None,
            "response_refusal": int(harmful) if has_response else None,
            "category": "test",
            "source": "unit-test",
            "license": "CC0-1.0",
            "split": ("train", "val", "test")[i % 3],
        })
    frame = pd.DataFrame(rows)
    for col in ("prompt_harmful", "response_harmful", "response_refusal"):
        frame[col] = frame[col].astype("Int8")
    return frame


@torch.no_grad()
def sharpen_attention(model, factor: float = 12.0, first_block: int = 0):
    """Scale the attention query and key projections of blocks ``first_block``.. so attention is peaked rather
    than near-uniform.

    A freshly initialised tiny model (std 0.02) attends almost uniformly, so a position off by one, or rows
    in the wrong order, moves its loss by ~1e-6: below any sensible tolerance. Equality tests of position
    bookkeeping run on a sharpened model, where such a bug moves the loss by orders of magnitude more.
    ``first_block`` = l* leaves the blocks below the value layer (and so stored hidden states) as they were.
    """
    import re

    scaled = 0
    for name, module in model.named_modules():
        block = re.search(r"\.(?:layers|h)\.(\d+)\.", name)
        if block is None or int(block.group(1)) < first_block:
            continue
        if name.endswith(("q_proj", "k_proj")):
            module.weight.mul_(factor)
            scaled += 1
        elif name.endswith("c_attn"):  # GPT-2: q, k and v in one Conv1D [d, 3d]; scale the q and k thirds
            d = module.weight.shape[0]
            module.weight[:, : 2 * d].mul_(factor)
            scaled += 1
    if not scaled:
        raise ValueError(f"no attention projections from block {first_block} in {type(model).__name__}")
    return model
