"""The extract step: plan the shards of every split, compute the missing ones (here or on Ray Data
workers), and write the store's ``index.json``. The shard format is described in :mod:`svgt.extract.shards`."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
from tqdm.auto import tqdm

from svgt.backbone.adapter import LayerAdapter, resolve_layer
from svgt.backbone.snapshot import BackboneManifest, load_snapshot
from svgt.core.io import sha256_file, write_json_atomic
from svgt.core.params import ExtractConfig
from svgt.data.schema import SPLITS
from svgt.extract.shards import TENSOR_DOCS, ShardResult, ShardSpec, plan_shards, run_shard
from svgt.extract.store import FORMAT, INDEX

log = logging.getLogger(__name__)



@dataclass
class ExtractionSummary:
    layer: int
    hidden_size: int
    dtype: str
    examples: dict[str, int] = field(default_factory=dict)
    tokens: int = 0  # computed in this run (reused shards excluded)
    tokens_total: int = 0  # in every shard of the store, computed now or reused
    shards_written: int = 0
    shards_skipped: int = 0
    prompt_truncated: int = 0
    response_truncated: int = 0
    wall_seconds: float = 0.0
    compute_seconds: float = 0.0

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.compute_seconds if self.compute_seconds else 0.0


def extract_hidden_states(
    snapshot_dir: str | Path, data_path: str | Path, cfg: ExtractConfig, out_dir: str | Path, progress: bool = True
) -> ExtractionSummary:
    """Extract layer-l* states for every split of the canonical dataset into ``out_dir``."""
    t_start = time.perf_counter()
    snapshot_dir, out_dir = Path(snapshot_dir), Path(out_dir)
    manifest = BackboneManifest.read(snapshot_dir)
    layer = resolve_layer(cfg.layer, manifest.num_layers)
    frame = pd.read_parquet(data_path)
    specs = plan_shards(frame, cfg.shard_size)
    out_dir.mkdir(parents=True, exist_ok=True)
    expected = {s.file for s in specs}
    for stale in out_dir.glob("*.safetensors"):  # shards of an older plan would confuse readers
        if stale.name not in expected:
            stale.unlink()
    log.info(
        "extracting layer %d of %d (%s, width %d) for %d rows in %d shards",
        layer,
        manifest.num_layers,
        manifest.architecture,
        manifest.hidden_size,
        len(frame),
        len(specs),
    )
    if cfg.workers > 1:
        from svgt.extract.ray_shards import run_shards_on_ray

        results = run_shards_on_ray(specs, snapshot_dir, layer, cfg, out_dir)
    else:
        model, tokenizer, _ = load_snapshot(snapshot_dir, device=cfg.device)
        adapter = LayerAdapter(model)
        results = [
            run_shard(spec, adapter, tokenizer, manifest, layer, cfg, out_dir)
            for spec in tqdm(specs, desc="extract shards", unit="shard", disable=not progress)
        ]
    summary = _summarise(results, layer, manifest, cfg, time.perf_counter() - t_start)
    _write_index(out_dir, specs, results, manifest, layer, cfg, data_path, frame, summary)
    log.info(
        "extracted %d tokens in %.1fs compute (%.0f tokens/s); %d shards written, %d skipped",
        summary.tokens,
        summary.compute_seconds,
        summary.tokens_per_second,
        summary.shards_written,
        summary.shards_skipped,
    )
    return summary


def _summarise(
    results: list[ShardResult], layer: int, manifest: BackboneManifest, cfg: ExtractConfig, wall: float
) -> ExtractionSummary:
    s = ExtractionSummary(layer=layer, hidden_size=manifest.hidden_size, dtype=cfg.dtype, wall_seconds=wall)
    for r in results:
        s.examples[r.split] = s.examples.get(r.split, 0) + r.n
        s.shards_skipped += r.skipped
        s.shards_written += not r.skipped
        s.prompt_truncated += r.prompt_truncated
        s.response_truncated += r.response_truncated
        s.tokens_total += r.prompt_tokens + r.response_tokens
        if not r.skipped:
            s.tokens += r.prompt_tokens + r.response_tokens
            s.compute_seconds += r.seconds
    return s


def _write_index(
    out_dir: Path,
    specs: list[ShardSpec],
    results: list[ShardResult],
    manifest: BackboneManifest,
    layer: int,
    cfg: ExtractConfig,
    data_path: str | Path,
    frame: pd.DataFrame,
    summary: ExtractionSummary,
) -> None:
    splits: dict[str, Any] = {s: {"n": 0, "prompt_tokens": 0, "response_tokens": 0, "shards": []} for s in SPLITS}
    for spec, res in zip(specs, results, strict=True):
        entry = splits[spec.split]
        entry["n"] += res.n
        entry["prompt_tokens"] += res.prompt_tokens
        entry["response_tokens"] += res.response_tokens
        entry["shards"].append({"file": res.file, "n": res.n, "sha256": res.sha256, "ids": spec.ids})
    index = {
        "format": FORMAT,
        "backbone": {
            "source": manifest.source,
            "weights_sha256": manifest.weights_sha256,
            "architecture": manifest.architecture,
            "num_layers": manifest.num_layers,
        },
        "layer": layer,
        "layer_semantics": "output of decoder block `layer` (1-based), before later blocks and the final norm",
        "hidden_size": manifest.hidden_size,
        "dtype": cfg.dtype,
        "chat_template": cfg.chat_template and manifest.has_chat_template,
        "truncation": {
            "rule": "prompts keep their last max_prompt_tokens, responses their first max_response_tokens",
            "max_prompt_tokens": cfg.max_prompt_tokens,
            "max_response_tokens": cfg.max_response_tokens,
            "prompts_truncated": summary.prompt_truncated,
            "responses_truncated": summary.response_truncated,
        },
        "data": {"path": str(data_path), "sha256": sha256_file(data_path), "rows": len(frame)},
        "tensors": TENSOR_DOCS,
        "splits": splits,
    }  # only what the store holds: this run's timings and reuse counts go to the metrics, so that
    # rerunning extraction on the same inputs writes the same bytes and DVC stops the rerun here
    write_json_atomic(out_dir / INDEX, index)
