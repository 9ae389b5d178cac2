"""Hidden-state extraction: the backbone's layer-l* states for every example, as sharded safetensors.

Each split is cut into shards of ``extract.shard_size`` rows. A shard holds, for its rows in order:

  prompt_states    [sum of prompt tokens, d]   per-token states of the templated user turn
  response_states  [sum of response tokens, d] per-token states of the response (+ EOS), if any
  pooled           [n, d]                      state of the last prompt token (what the bridge anchors on)
  prompt_offsets   [n + 1] int64               row i's prompt tokens are prompt_states[o[i]:o[i+1]]
  response_offsets [n + 1] int64               likewise for responses (empty range: no response)

``index.json`` records the backbone hash, layer, dtype, shards with checksums and row ids. Shards are
written atomically and carry a fingerprint, so a rerun skips finished shards and redoes only the rest.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from safetensors import safe_open
from transformers import DynamicCache

from svgt.backbone.adapter import LayerAdapter
from svgt.backbone.batching import pad_batch, shared_prefix_length
from svgt.backbone.runner import share_cache_rows
from svgt.backbone.snapshot import BackboneManifest
from svgt.backbone.sources import DTYPES
from svgt.backbone.text import encode_prompt, encode_response
from svgt.core.io import atomic_path, save_safetensors, sha256_file
from svgt.core.params import ExtractConfig
from svgt.data.schema import SPLITS
from svgt.extract.store import FORMAT, ExtractionError

log = logging.getLogger(__name__)

TENSOR_DOCS = {
    "prompt_states": "per-token, [sum prompt tokens, d]: the chat-templated user turn incl. generation prompt",
    "response_states": "per-token, [sum response tokens, d]: the response tokens followed by EOS",
    "pooled": "pooled, [n, d]: the last prompt token (h_v, the bridge's anchor)",
    "prompt_offsets": "[n + 1] int64 row boundaries into prompt_states",
    "response_offsets": "[n + 1] int64 row boundaries into response_states (empty range = no response)",
}


@dataclass(frozen=True)
class EncodedExample:
    prompt_ids: list[int]
    response_ids: list[int]
    prompt_truncated: bool
    response_truncated: bool


@dataclass(frozen=True)
class ShardSpec:
    split: str
    number: int
    ids: list[str]
    prompts: list[str]
    responses: list[str | None]

    @property
    def file(self) -> str:
        return f"{self.split}-{self.number:05d}.safetensors"


@dataclass
class ShardResult:
    file: str
    split: str
    n: int
    prompt_tokens: int
    response_tokens: int
    prompt_truncated: int
    response_truncated: int
    sha256: str
    skipped: bool
    seconds: float


def encode_example(tokenizer: Any, prompt: str, response: str | None, cfg: ExtractConfig) -> EncodedExample:
    """Token ids for one row, truncated by the documented rule.

    Prompts keep their *last* ``max_prompt_tokens`` tokens (the generation prompt at the end is where
    the bridge binds, so it must survive); responses keep their *first* ``max_response_tokens``.
    """
    p = encode_prompt(tokenizer, prompt, cfg.chat_template)
    r = encode_response(tokenizer, response) if response is not None else []
    return EncodedExample(
        p[-cfg.max_prompt_tokens :],
        r[: cfg.max_response_tokens],
        len(p) > cfg.max_prompt_tokens,
        len(r) > cfg.max_response_tokens,
    )


@torch.no_grad()
def batch_hidden_states(
    adapter: LayerAdapter, sequences: Sequence[Sequence[int]], layer: int, pad_id: int, padding_side: str = "right",
    min_shared_prefix: int = 8,
) -> list[torch.Tensor]:
    """Layer-``layer`` states of each sequence, unpadded: a list of [len_i, d] tensors.

    When the sequences start with at least ``min_shared_prefix`` identical tokens (every chat-templated
    prompt of a model with a default system turn does: 24 tokens for SmolLM2), that prefix runs once into
    a KV cache shared by the batch and only the rest of each sequence runs per row: under causal attention
    the prefix's states do not depend on what follows, so the result is the same.
    """
    device = next(adapter.model.parameters()).device
    shared = shared_prefix_length(sequences) if len(sequences) > 1 else 0
    if shared >= min_shared_prefix:
        return _states_with_shared_prefix(adapter, sequences, shared, layer, pad_id, device)
    ids, mask = pad_batch(sequences, pad_id, padding_side)
    hidden = adapter.hidden_states_at(ids.to(device), mask.to(device), layer)
    out = []
    for i, seq in enumerate(sequences):
        n, width = len(seq), ids.shape[1]
        rows = hidden[i, width - n :] if padding_side == "left" else hidden[i, :n]
        out.append(rows.float().cpu())
    return out


def _states_with_shared_prefix(adapter: LayerAdapter, sequences: Sequence[Sequence[int]], shared: int, layer: int,
                               pad_id: int, device: torch.device) -> list[torch.Tensor]:
    prefix = torch.tensor([list(sequences[0][:shared])], device=device)
    cache = DynamicCache()
    prefix_states = adapter.hidden_states_at(prefix, torch.ones_like(prefix), layer, cache=cache)[0]
    share_cache_rows(cache, len(sequences))
    ids, mask = pad_batch([s[shared:] for s in sequences], pad_id, "right")
    mask = torch.cat([torch.ones(len(sequences), shared, dtype=mask.dtype), mask], dim=1)
    hidden = adapter.hidden_states_at(ids.to(device), mask.to(device), layer, cache=cache)
    head = prefix_states.float().cpu()
    return [torch.cat([head, hidden[i, : len(seq) - shared].float().cpu()]) for i, seq in enumerate(sequences)]


def _fingerprint(spec: ShardSpec, manifest: BackboneManifest, layer: int, cfg: ExtractConfig) -> str:
    h = hashlib.sha256()
    meta = [
        manifest.weights_sha256,
        layer,
        cfg.dtype,
        cfg.max_prompt_tokens,
        cfg.max_response_tokens,
        cfg.chat_template,
        FORMAT,
    ]
    h.update(json.dumps(meta).encode())
    for row in zip(spec.ids, spec.prompts, spec.responses, strict=True):
        h.update(json.dumps(row).encode())
    return h.hexdigest()


def _existing_fingerprint(path: Path) -> str | None:
    try:
        with safe_open(path, framework="pt") as f:
            return (f.metadata() or {}).get("fingerprint")
    except Exception:  # unreadable or partial: recompute it
        return None


def compute_shard(
    spec: ShardSpec, adapter: LayerAdapter, tokenizer: Any, layer: int, cfg: ExtractConfig
) -> tuple[dict[str, torch.Tensor], dict[str, int]]:
    """All tensors of one shard, rows in ``spec`` order; batches sorted by length to cut padding."""
    encoded = [encode_example(tokenizer, p, r, cfg) for p, r in zip(spec.prompts, spec.responses, strict=True)]
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i].prompt_ids) + len(encoded[i].response_ids))
    states: list[torch.Tensor | None] = [None] * len(encoded)
    for start in range(0, len(order), cfg.batch_size):
        batch = order[start : start + cfg.batch_size]
        seqs = [encoded[i].prompt_ids + encoded[i].response_ids for i in batch]
        for i, h in zip(batch, batch_hidden_states(adapter, seqs, layer, pad_id), strict=True):
            states[i] = h
    dtype = DTYPES[cfg.dtype]
    prompt_parts, response_parts, pooled = [], [], []
    p_off, r_off = [0], [0]
    for i, (enc, h) in enumerate(zip(encoded, states, strict=True)):
        assert h is not None
        if not torch.isfinite(h).all():
            raise ExtractionError(f"non-finite hidden states for row id {spec.ids[i]!r} ({spec.split})")
        m = len(enc.prompt_ids)
        prompt_parts.append(h[:m])
        response_parts.append(h[m:])
        pooled.append(h[m - 1])
        p_off.append(p_off[-1] + m)
        r_off.append(r_off[-1] + len(enc.response_ids))
    d = adapter.hidden_size
    tensors = {
        "prompt_states": torch.cat(prompt_parts).to(dtype).contiguous(),
        "response_states": (torch.cat(response_parts) if response_parts else torch.zeros(0, d)).to(dtype).contiguous(),
        "pooled": torch.stack(pooled).to(dtype).contiguous(),
        "prompt_offsets": torch.tensor(p_off, dtype=torch.long),
        "response_offsets": torch.tensor(r_off, dtype=torch.long),
    }
    stats = {
        "prompt_tokens": p_off[-1],
        "response_tokens": r_off[-1],
        "prompt_truncated": sum(e.prompt_truncated for e in encoded),
        "response_truncated": sum(e.response_truncated for e in encoded),
    }
    return tensors, stats


def run_shard(
    spec: ShardSpec,
    adapter: LayerAdapter,
    tokenizer: Any,
    manifest: BackboneManifest,
    layer: int,
    cfg: ExtractConfig,
    out_dir: Path,
) -> ShardResult:
    """Compute and atomically write one shard, or skip it if an identical one is already there."""
    path = out_dir / spec.file
    fingerprint = _fingerprint(spec, manifest, layer, cfg)
    if path.exists() and _existing_fingerprint(path) == fingerprint:
        with safe_open(path, framework="pt") as f:
            meta = f.metadata()
        return ShardResult(
            spec.file,
            spec.split,
            len(spec.ids),
            int(meta["prompt_tokens"]),
            int(meta["response_tokens"]),
            int(meta["prompt_truncated"]),
            int(meta["response_truncated"]),
            sha256_file(path),
            True,
            0.0,
        )
    t0 = time.perf_counter()
    tensors, stats = compute_shard(spec, adapter, tokenizer, layer, cfg)
    seconds = time.perf_counter() - t0
    meta = {
        "fingerprint": fingerprint,
        "split": spec.split,
        "layer": str(layer),
        **{k: str(v) for k, v in stats.items()},
    }
    with atomic_path(path) as tmp:
        save_safetensors(tensors, tmp, metadata=meta)
    return ShardResult(
        spec.file,
        spec.split,
        len(spec.ids),
        stats["prompt_tokens"],
        stats["response_tokens"],
        stats["prompt_truncated"],
        stats["response_truncated"],
        sha256_file(path),
        False,
        seconds,
    )


def plan_shards(frame: pd.DataFrame, shard_size: int) -> list[ShardSpec]:
    specs = []
    for split in SPLITS:
        part = frame[frame["split"] == split]
        for number, start in enumerate(range(0, len(part), shard_size)):
            chunk = part.iloc[start : start + shard_size]
            responses = [None if pd.isna(r) else str(r) for r in chunk["response"]]
            specs.append(
                ShardSpec(
                    split, number, chunk["id"].astype(str).tolist(), chunk["prompt"].astype(str).tolist(), responses
                )
            )
    return specs
