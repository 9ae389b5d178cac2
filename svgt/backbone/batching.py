"""Batching token sequences for the backbone: padding, and the prefix that every sequence shares."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def pad_batch(
    sequences: Sequence[Sequence[int]], pad_id: int, padding_side: str = "right"
) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for i, seq in enumerate(sequences):
        sl = slice(width - len(seq), width) if padding_side == "left" else slice(0, len(seq))
        ids[i, sl] = torch.tensor(seq, dtype=torch.long)
        mask[i, sl] = 1
    return ids, mask


def shared_prefix_length(sequences: Sequence[Sequence[int]]) -> int:
    """Tokens at the start of every sequence that are the same in all of them (a chat template's system
    turn, say), leaving each sequence at least one token of its own."""
    limit = min(len(s) for s in sequences) - 1
    first = sequences[0]
    n = 0
    while n < limit and all(s[n] == first[n] for s in sequences):
        n += 1
    return n
