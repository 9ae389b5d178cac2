"""Prompt passes: cutting a batch of prompts into prefill groups (a shared prefix, then left padding),
and the cache that lets several guidance methods reuse one plain pass over the same prompts."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from transformers import DynamicCache

from svgt.backbone.batching import pad_batch, shared_prefix_length
from svgt.backbone.runner import growing_cache


def left_aligned(states: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """States [B, W, d] and mask [B, W] with each row's real tokens moved to the right end (left padding),
    whatever gaps the mask has: the layout every ``prompt_fn`` is promised."""
    if bool((mask.flip(-1).cummin(-1).values == mask.flip(-1)).all()):
        return states, mask  # already left-padded
    out = states.new_zeros(states.shape)
    aligned = torch.zeros_like(mask)
    width = mask.shape[1]
    for i in range(mask.shape[0]):
        real = mask[i].nonzero().squeeze(-1)
        out[i, width - len(real):] = states[i, real]
        aligned[i, width - len(real):] = True
    return out, aligned


def pad_left(x: torch.Tensor, width: int) -> torch.Tensor:
    """[B, W, ...] -> [B, width, ...] with zeros in front (masks: False/0)."""
    pad = [0, 0] * (x.dim() - 2) + [width - x.shape[1], 0]
    return torch.nn.functional.pad(x, pad)


@dataclass
class PromptGroup:
    """Consecutive rows of a batch that are prefilled together, in ``prompt_layout``'s layout."""

    ids: torch.Tensor  # [B_g, W_g]
    mask: torch.Tensor  # [B_g, W_g]
    shared: int  # leading columns common to every row of the group
    cache: DynamicCache = field(default_factory=growing_cache)

    @property
    def positions(self) -> torch.Tensor:
        """Position ids of every column [B_g, W_g] (from the mask: padding and gaps do not count)."""
        return (self.mask.cumsum(-1) - 1).clamp(min=0)

    def with_rows(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(positions [B_g, k], 2D mask [B_g, W_g + k]) of ``k`` rows appended after each prompt (a bridge)."""
        positions = self.mask.sum(-1)[:, None] + torch.arange(k, device=self.mask.device)
        return positions, torch.cat([self.mask, self.mask.new_ones((self.mask.shape[0], k))], dim=1)


@dataclass
class PlainPass:
    """One prompt group through every block of the unmodified backbone (no bridge, no injection)."""

    cache: DynamicCache  # keys/values of every block over the group's columns
    h: torch.Tensor  # layer-l* states of the group's own columns (after the shared prefix)
    full: torch.Tensor  # layer-l* states of all its columns
    top_last: torch.Tensor  # block L's output at the last column [B_g, d]


class PromptPassCache:
    """Plain prompt passes kept by (prompt tokens, layout, l*), for reuse across guidance methods.

    Methods that leave the backbone's blocks unmodified (unguided, SVGT, SVGT-Inject, and methods that
    only edit the LM head's input) compute the same keys/values on the prompt: the bridge and the
    injected delta come after it. Passing one cache to each of them runs every prompt once. Do not pass
    it while a method changes the blocks (hooks, LoRA): the entries would be reused as if unchanged.
    Entries hold every block's keys/values of the prompts (~46 KB per token for SmolLM2-135M): call
    ``clear`` when done.
    """

    def __init__(self) -> None:
        self._entries: dict[tuple, PlainPass] = {}
        self.hits = 0

    def __len__(self) -> int:
        return len(self._entries)

    def clear(self) -> None:
        self._entries.clear()

    def get(self, key: tuple) -> PlainPass | None:
        found = self._entries.get(key)
        self.hits += found is not None
        return found

    def put(self, key: tuple, entry: PlainPass) -> PlainPass:
        self._entries[key] = entry
        return entry

    @staticmethod
    def key(group: PromptGroup, split: int) -> tuple:
        return (split, group.shared, tuple(map(tuple, group.ids.tolist())), tuple(map(tuple, group.mask.tolist())))


PREFILL_PADDING_SLACK = 1.25  # a prefill group's padded size stays within this factor of its real tokens


def prompt_groups(prompt_ids: Sequence[Sequence[int]], pad_id: int, min_shared: int | None = 8,
                  max_tokens: int | None = None, device: torch.device | str = "cpu") -> list[PromptGroup]:
    """Cut the batch (in its order) into prefill groups of consecutive rows.

    ``max_tokens`` None: one group. Otherwise a group grows while its padded size (rows x longest) stays
    within ``max_tokens`` and within ``PREFILL_PADDING_SLACK`` x its real tokens (a longer single row gets
    a group of its own). The prefill is compute-bound, so padding costs what real tokens cost; with the
    rows sorted by length (the caller's choice) the groups waste little. Decoding still runs all rows
    as one batch.
    """
    cuts: list[list[int]] = []
    for i, ids in enumerate(prompt_ids):
        cur = cuts[-1] if cuts else None
        if cur is not None and max_tokens is not None:
            longest = max(len(ids), *(len(prompt_ids[j]) for j in cur))
            real = len(ids) + sum(len(prompt_ids[j]) for j in cur)
            padded = (len(cur) + 1) * longest
            if padded > max_tokens or padded > PREFILL_PADDING_SLACK * real:
                cur = None
        if cur is None:
            cuts.append([i])
        else:
            cur.append(i)
    groups = []
    for rows in cuts:
        ids, mask, shared = prompt_layout([prompt_ids[j] for j in rows], pad_id, min_shared)
        groups.append(PromptGroup(ids.to(device), mask.to(device), shared))
    return groups


def prompt_layout(prompt_ids: Sequence[Sequence[int]], pad_id: int, min_shared: int | None = 8
                  ) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(ids, mask, P): the batch as [shared prefix of P columns | left-padded rest of each prompt].

    P is the longest token prefix common to every prompt (each keeps at least one token of its own); it
    is used only when the batch has several rows and P >= ``min_shared`` (None: never). Otherwise P = 0
    and the layout is plain left padding. Positions follow the mask, so the gap changes nothing.
    """
    shared = shared_prefix_length(prompt_ids) if len(prompt_ids) > 1 and min_shared is not None else 0
    shared = shared if min_shared is not None and shared >= min_shared else 0
    ids, mask = pad_batch([p[shared:] for p in prompt_ids], pad_id, padding_side="left")
    if shared:
        ids = torch.cat([torch.tensor([list(prompt_ids[0][:shared])]).expand(len(prompt_ids), -1), ids], dim=1)
        mask = torch.cat([torch.ones(len(prompt_ids), shared, dtype=mask.dtype), mask], dim=1)
    return ids, mask, shared
