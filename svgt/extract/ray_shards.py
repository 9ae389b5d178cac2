"""The Ray Data path of extraction: shards spread over ``extract.workers`` Ray actors.

Each actor loads the snapshot once and writes its shards straight into ``out_dir``, so on a real
cluster ``out_dir`` and the snapshot must sit on storage every node sees (a shared volume).
Ray is started locally on demand, or joined at ``extract.ray_address`` / ``RAY_ADDRESS``.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import ray
import ray.data
from ray.data import ActorPoolStrategy

from svgt.core.params import ExtractConfig
from svgt.extract.shards import ShardResult, ShardSpec, run_shard


class _ShardWorker:
    def __init__(self, snapshot_dir: str, layer: int, cfg: dict[str, Any], out_dir: str):
        import torch

        from svgt.backbone.adapter import LayerAdapter
        from svgt.backbone.snapshot import load_snapshot

        torch.set_num_threads(1)  # one core per actor; the pool provides the parallelism
        self.cfg = ExtractConfig(**cfg)
        model, self.tokenizer, self.manifest = load_snapshot(snapshot_dir, device=self.cfg.device)
        self.adapter = LayerAdapter(model)
        self.layer = layer
        self.out_dir = Path(out_dir)

    def __call__(self, row: dict[str, Any]) -> dict[str, Any]:
        spec = ShardSpec(**row["spec"])
        result = run_shard(spec, self.adapter, self.tokenizer, self.manifest, self.layer, self.cfg, self.out_dir)
        return {"result": dataclasses.asdict(result)}


def run_shards_on_ray(
    specs: list[ShardSpec], snapshot_dir: Path, layer: int, cfg: ExtractConfig, out_dir: Path
) -> list[ShardResult]:
    address = cfg.ray_address or os.environ.get("RAY_ADDRESS")
    started_here = not ray.is_initialized()
    if started_here:
        ray.init(
            address=address, num_cpus=None if address else cfg.workers, include_dashboard=False, log_to_driver=False
        )
    try:
        items = [{"spec": dataclasses.asdict(s)} for s in specs]
        ds = ray.data.from_items(items, override_num_blocks=len(items)).map(
            _ShardWorker,
            compute=ActorPoolStrategy(size=cfg.workers),
            fn_constructor_kwargs={
                "snapshot_dir": str(Path(snapshot_dir).resolve()),
                "layer": layer,
                "cfg": dataclasses.asdict(cfg),
                "out_dir": str(out_dir.resolve()),
            },
            num_cpus=1,
            num_gpus=1 if cfg.device.startswith("cuda") else 0,
        )
        by_file = {r["result"]["file"]: ShardResult(**r["result"]) for r in ds.take_all()}
    finally:
        if started_here:
            ray.shutdown()
    return [by_file[s.file] for s in specs]
