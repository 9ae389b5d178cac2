"""Run a curriculum stage as a Ray Train ``TorchTrainer`` job.

Local Ray is started on demand (CPU workers by default); with ``train.ray.address`` or RAY_ADDRESS
an existing cluster is joined instead. Run state and checkpoints live under ``train.ray.storage_path``
(local or s3://) under a name derived from the job, so rerunning an interrupted stage resumes from its
last checkpoint, and ``FailureConfig`` restarts killed workers from it within one run.
"""

from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from svgt.config import RayConfig
from svgt.model import ValueModule
from svgt.training.job import StageJob
from svgt.training.stages import module_from_checkpoint, train_worker

log = logging.getLogger(__name__)


class TrainingError(RuntimeError):
    """A stage failed after Ray Train's retries."""


@dataclass
class StageOutcome:
    module: ValueModule
    history: list[dict[str, Any]]
    run_path: str


def _storage_path(path: str) -> str:
    return path if "://" in path else str(Path(path).resolve())


def ensure_ray(cfg: RayConfig) -> bool:
    """Connect to the configured cluster or start a local Ray; True if this call started it."""
    import ray

    if ray.is_initialized():
        return False
    address = cfg.address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=True)
    else:
        need = cfg.num_workers * cfg.cpus_per_worker + 1  # +1 for Ray Train's controller
        ray.init(num_cpus=max(need, os.cpu_count() or 1), include_dashboard=False, log_to_driver=True)
    return True


def run_stage(job: StageJob, fingerprint: str) -> StageOutcome:
    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    cfg = job.train_config.ray
    started = ensure_ray(cfg)
    name = job.run_name(fingerprint)
    try:
        trainer = TorchTrainer(
            train_worker,
            train_loop_config={**job.to_dict(), "_threads": cfg.cpus_per_worker},
            scaling_config=ScalingConfig(num_workers=cfg.num_workers, use_gpu=cfg.use_gpu,
                                         resources_per_worker={"CPU": cfg.cpus_per_worker}),
            run_config=RunConfig(name=name, storage_path=_storage_path(cfg.storage_path),
                                 failure_config=FailureConfig(max_failures=cfg.max_failures),
                                 checkpoint_config=CheckpointConfig(num_to_keep=2)),
        )
        log.info("stage %d: Ray Train run %s (%d worker(s), gpu=%s)", job.stage, name, cfg.num_workers, cfg.use_gpu)
        result = trainer.fit()
    except Exception as err:  # Ray wraps worker errors; surface the cause in one line
        raise TrainingError(f"stage {job.stage} failed in Ray Train run {name}: {err}") from err
    finally:
        if started:
            ray.shutdown()
    if result.checkpoint is None:
        raise TrainingError(f"stage {job.stage}: Ray Train run {name} produced no checkpoint")
    with tempfile.TemporaryDirectory(prefix="svgt-result-") as tmp:
        local = result.checkpoint.to_directory(tmp)
        module = module_from_checkpoint(job, local)
        import json

        history = json.loads((Path(local) / "state.json").read_text())["progress"]["history"]
    return StageOutcome(module, history, str(result.path))
