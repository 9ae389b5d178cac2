"""Run a curriculum stage as a Ray Train ``TorchTrainer`` run.

Where it runs depends on the address (``train.ray.address``, else RAY_ADDRESS):

=====================================  ==============================================================
address                                what ``svgt train`` does
=====================================  ==============================================================
unset                                  starts a local Ray for this process and stops it afterwards
``http://head:8265`` (``https://``)    the Ray job server (dashboard port): the stage is submitted as
                                       a Ray job (:mod:`svgt.training.submit`) that outlives this process
``auto`` or ``host:6379``              joins the cluster as a driver; run it on a cluster node
``ray://head:10001``                   Ray Client: this process drives the run remotely and must stay
                                       up; it must see the workspace at the nodes' paths
=====================================  ==============================================================

Inside a submitted job (``svgt train --in-cluster``) the address is the RAY_ADDRESS that Ray's job
supervisor sets, whatever params.yaml says. Run state and checkpoints live under
``train.ray.storage_path`` (local or s3://) under a name derived from the job, so rerunning an
interrupted stage resumes from its last checkpoint, and ``FailureConfig`` restarts killed workers from
it within one run.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from svgt.core.errors import SvgtError
from svgt.core.params import RayConfig
from svgt.model import ValueModule
from svgt.training.job import StageJob
from svgt.training.stages import module_from_checkpoint
from svgt.training.worker import train_worker

log = logging.getLogger(__name__)


class TrainingError(SvgtError, RuntimeError):
    """A stage failed after Ray Train's retries."""


@dataclass
class StageOutcome:
    module: ValueModule
    history: list[dict[str, Any]]
    run_path: str


def resolve_storage_path(path: str) -> str:
    """A local storage path made absolute (Ray workers do not share the driver's cwd); URLs unchanged."""
    return path if "://" in path else str(Path(path).resolve())


def configured_address(cfg: RayConfig) -> str | None:
    """``train.ray.address``, else RAY_ADDRESS, else None (local Ray)."""
    return cfg.address or os.environ.get("RAY_ADDRESS") or None


def is_job_server(address: str | None) -> bool:
    """True for a Ray job server (dashboard) URL, where stages are submitted as Ray jobs."""
    return address is not None and address.startswith(("http://", "https://"))


def ensure_ray(cfg: RayConfig, *, in_cluster: bool = False) -> bool:
    """Connect to the configured cluster or start a local Ray; True if this call started it.

    ``in_cluster``: this process is a submitted job's driver; it joins the cluster it runs on.
    """
    import ray

    if ray.is_initialized():
        return False
    if in_cluster:
        # the job supervisor sets RAY_ADDRESS to the cluster's GCS; params may name the job server instead
        env = os.environ.get("RAY_ADDRESS")
        ray.init(address=env if env and not is_job_server(env) else "auto", log_to_driver=True)
        return True
    address = configured_address(cfg)
    if is_job_server(address):
        raise ValueError(
            f"Ray address {address} is a job server: submit the stage as a Ray job "
            "(svgt.training.submit.submit_stage, which `svgt train` uses) or run it with --in-cluster"
        )
    if address:
        ray.init(address=address, log_to_driver=True)
    else:
        need = cfg.num_workers * cfg.cpus_per_worker + 1  # +1 for Ray Train's controller
        _drop_token_auth_notice()
        # one machine that svgt owns for the stage: no node can be preempted, so no watcher (whose actor Ray's
        # core logs at error level for keeping restartable constructor arguments in the object store)
        os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
        # with the dashboard: Ray's state API needs it, and without it Ray Train's placement-group cleaner warns
        # every second that it cannot query the controller (it costs ~3 s per stage; the port is a free one)
        ray.init(num_cpus=max(need, os.cpu_count() or 1), include_dashboard=True, dashboard_host="127.0.0.1",
                 dashboard_port=_free_port(), log_to_driver=True)
    return True


class _TokenAuthNotice(logging.Filter):
    """Ray 2.60 turns token authentication on for every local cluster it starts, and says so as a WARNING; on a
    cluster svgt starts for one stage that is the expected state, not a problem (a disabled one still warns)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Token authentication is enabled for this Ray cluster")


def _drop_token_auth_notice() -> None:
    target = logging.getLogger("ray._private.authentication.authentication_token_setup")
    if not any(isinstance(f, _TokenAuthNotice) for f in target.filters):
        target.addFilter(_TokenAuthNotice())


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_exists(storage: str, name: str) -> bool:
    """True if the local ``storage/name`` already holds a Ray Train run. Remote storage (s3://...) is not
    probed, to add no network round trip; Ray itself logs the restore there."""
    return "://" not in storage and (Path(storage) / name).is_dir()


def run_stage(job: StageJob, fingerprint: str, *, in_cluster: bool = False) -> StageOutcome:
    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    cfg = job.train_config.ray
    started = ensure_ray(cfg, in_cluster=in_cluster)
    name = job.run_name(fingerprint)
    storage = resolve_storage_path(cfg.storage_path)
    if run_exists(storage, name):
        # the name is stage + params + inputs: the same run, interrupted or finished, so it is not trained twice
        log.info("stage %d: Ray Train run %s already exists under %s: resuming from its last checkpoint "
                 "(a finished run returns its final checkpoint without training)", job.stage, name, storage)
    try:
        trainer = TorchTrainer(
            train_worker,
            train_loop_config={**job.to_dict(), "_threads": cfg.cpus_per_worker},
            scaling_config=ScalingConfig(
                num_workers=cfg.num_workers, use_gpu=cfg.use_gpu, resources_per_worker={"CPU": cfg.cpus_per_worker}
            ),
            run_config=RunConfig(
                name=name,
                storage_path=storage,
                failure_config=FailureConfig(max_failures=cfg.max_failures),
                checkpoint_config=CheckpointConfig(num_to_keep=2),
            ),
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
        history = json.loads((Path(local) / "state.json").read_text())["progress"]["history"]
    return StageOutcome(module, history, str(result.path))
