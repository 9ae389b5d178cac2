"""Prompt and response tokenisation shared by extraction, training and generation.

User text is always tokenised with special-token parsing off, so a prompt that contains the chat
template's control strings (``<|im_start|>``, ``</s>``...) is treated as text, never as control tokens.
"""

from __future__ import annotations

from typing import Any

_SLOT = "\ue000svgt-user-content\ue001"  # private-use characters never occur in real prompts


def _text_ids(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"])


def _template_ids(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def uses_chat_template(tokenizer: Any, requested: bool) -> bool:
    return requested and bool(getattr(tokenizer, "chat_template", None))


def encode_prompt(
    tokenizer: Any, prompt: str, chat_template: bool = True, system_prompt: str | None = None
) -> list[int]:
    """Token ids of a user turn ready for the assistant's answer.

    With a chat template the template is rendered around a placeholder and only the template's own
    text is parsed for special tokens; without one, the prompt is encoded as plain text (with the
    tokenizer's BOS if it defines one).
    """
    if uses_chat_template(tokenizer, chat_template):
        messages = [{"role": "user", "content": _SLOT}]
        if system_prompt is not None:
            messages.insert(0, {"role": "system", "content": system_prompt})
        rendered = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        if rendered.count(_SLOT) != 1:
            raise ValueError("the chat template does not render the user message exactly once")
        head, tail = rendered.split(_SLOT)
        return _template_ids(tokenizer, head) + _text_ids(tokenizer, prompt) + _template_ids(tokenizer, tail)
    bos = [tokenizer.bos_token_id] if getattr(tokenizer, "bos_token_id", None) is not None else []
    prefix = f"{system_prompt}\n\n" if system_prompt else ""
    return bos + _text_ids(tokenizer, prefix + prompt)


def encode_messages(tokenizer: Any, messages: list[dict[str, str]], chat_template: bool = True,
                    system_prompt: str | None = None) -> list[int]:
    """Token ids of a conversation (``{"role", "content"}`` dicts) ready for the assistant's next answer.

    As ``encode_prompt`` does for one user turn: the template is rendered around one placeholder per
    message, its own text parsed for special tokens and each message's content encoded as plain text.
    ``system_prompt`` goes first (before any system message of the conversation). Without a chat template
    the contents are joined by blank lines after the tokenizer's BOS.
    """
    if system_prompt is not None:
        messages = [{"role": "system", "content": system_prompt}, *messages]
    if not uses_chat_template(tokenizer, chat_template):
        bos = [tokenizer.bos_token_id] if getattr(tokenizer, "bos_token_id", None) is not None else []
        return bos + _text_ids(tokenizer, "\n\n".join(m["content"] for m in messages))
    slots = [f"{_SLOT}{i}\ue002" for i in range(len(messages))]
    rendered = tokenizer.apply_chat_template([{"role": m["role"], "content": slot} for m, slot in
                                              zip(messages, slots, strict=True)],
                                             tokenize=False, add_generation_prompt=True)
    ids: list[int] = []
    for message, slot in zip(messages, slots, strict=True):
        if rendered.count(slot) != 1:
            raise ValueError("the chat template does not render each message exactly once")
        head, rendered = rendered.split(slot)
        ids += _template_ids(tokenizer, head) + _text_ids(tokenizer, message["content"])
    return ids + _template_ids(tokenizer, rendered)


def encode_response(tokenizer: Any, response: str, add_eos: bool = True) -> list[int]:
    """Token ids of an assistant answer, ending with EOS so a model trained on it learns to stop."""
    ids = _text_ids(tokenizer, response)
    if add_eos and tokenizer.eos_token_id is not None:
        ids.append(int(tokenizer.eos_token_id))
    return ids
