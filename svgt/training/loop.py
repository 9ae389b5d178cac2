"""One training loop for every stage: epochs of batches, periodic checkpoints, exact resume.

The loop knows nothing about Ray: it talks to a ``Session`` (Ray Train's in a worker, a local
directory in unit tests), so the same code runs in one CPU process or on a GPU cluster.
Batches are a deterministic function of (seed, epoch) and the RNG is re-seeded per step, so a run
resumed from a checkpoint takes exactly the steps an uninterrupted run would have taken.
With ``LoopSpec.select`` the loop keeps the weights of the epoch with the lowest value of that validation
metric (saved in every later checkpoint, so a resumed run keeps them too) and stops once ``patience``
epochs have passed without a new best: the stage exports the best epoch, not the last.
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn
from tqdm.auto import tqdm

from svgt.core.params import ConfigError
from svgt.training.checkpoint import Progress, load_checkpoint, module_weights, save_checkpoint

log = logging.getLogger(__name__)

# set in the record of the epoch an attempt resumed in: how the run went, not what it produced (kept out of a
# module's metadata, like timings, so that a resumed run exports the same bytes as an uninterrupted one)
RESUMED_FROM_STEP = "resumed_from_step"


class Session(Protocol):
    rank: int
    world_size: int

    def latest_checkpoint(self) -> Path | None: ...

    def report(self, metrics: dict[str, Any], checkpoint: Path | None) -> None: ...


@dataclass
class LocalSession:
    """Checkpoints in a local directory (one subdirectory per report with a checkpoint)."""

    directory: Path
    rank: int = 0
    world_size: int = 1

    def __post_init__(self) -> None:
        self.directory = Path(self.directory)
        self.reports: list[dict[str, Any]] = []

    def latest_checkpoint(self) -> Path | None:
        found = sorted(self.directory.glob("checkpoint_*"))
        return found[-1] if found else None

    def report(self, metrics: dict[str, Any], checkpoint: Path | None) -> None:
        self.reports.append(dict(metrics))
        if checkpoint is not None:
            import shutil

            target = self.directory / f"checkpoint_{len(list(self.directory.glob('checkpoint_*'))):06d}"
            tmp = self.directory / f".{target.name}.tmp"
            shutil.copytree(checkpoint, tmp)
            tmp.rename(target)


class RaySession:
    """Ray Train's worker context; only rank 0 uploads checkpoints."""

    def __init__(self) -> None:
        import ray.train

        ctx = ray.train.get_context()
        self.rank, self.world_size = ctx.get_world_rank(), ctx.get_world_size()
        self._restored: tempfile.TemporaryDirectory | None = None

    def latest_checkpoint(self) -> Path | None:
        import ray.train

        ckpt = ray.train.get_checkpoint()
        if ckpt is None:
            return None
        self._restored = tempfile.TemporaryDirectory(prefix="svgt-restore-")
        return Path(ckpt.to_directory(self._restored.name))

    def report(self, metrics: dict[str, Any], checkpoint: Path | None) -> None:
        import ray.train

        clean = {k: v for k, v in metrics.items() if not (isinstance(v, float) and math.isnan(v))}
        if checkpoint is not None and self.rank == 0:
            ray.train.report(clean, checkpoint=ray.train.Checkpoint.from_directory(str(checkpoint)))
        else:
            ray.train.report(clean)


@dataclass(frozen=True)
class LoopSpec:
    epochs: int
    checkpoint_every: int
    seed: int
    desc: str = "train"
    select: str | None = None  # a metric of ``evaluate()`` to minimise: keep the best epoch's weights
    patience: int = 0  # with ``select``: stop after this many epochs without a new best (0: run every epoch)


Batch = Any


def run_loop(module: nn.Module, optimizer: torch.optim.Optimizer, spec: LoopSpec,
             make_batches: Callable[[int], list[Batch]], train_step: Callable[[Batch], dict[str, float]],
             evaluate: Callable[[], dict[str, float]], session: Session, progress_bar: bool = True) -> Progress:
    """Train ``spec.epochs`` epochs, resuming from the session's latest checkpoint if there is one."""
    progress = Progress()
    latest = session.latest_checkpoint()
    resumed_from_step = None
    best: dict[str, torch.Tensor] | None = None
    if latest is not None:
        progress = load_checkpoint(latest, module, optimizer)
        best = module_weights(latest) if progress.best_epoch else None
        resumed_from_step = progress.step
        log.info("%s: resumed from the step-%d checkpoint (epoch %d, batch %d)", spec.desc, progress.step,
                 progress.epoch + 1, progress.batch_in_epoch)
    for epoch in range(progress.epoch, spec.epochs):
        if spec.select and spec.patience and progress.best_epoch and epoch - progress.best_epoch >= spec.patience:
            log.info("%s: stopped after epoch %d: %s has not improved on epoch %d's %.4f for %d epoch(s)", spec.desc,
                     epoch, spec.select, progress.best_epoch, progress.best_value, spec.patience)
            break
        batches = make_batches(epoch)
        module.train()
        sums: dict[str, float] = defaultdict(float, progress.epoch_sums)
        bar = tqdm(total=len(batches), initial=progress.batch_in_epoch, desc=f"{spec.desc} epoch {epoch + 1}",
                   disable=not progress_bar or session.rank != 0, leave=False)
        for i in range(progress.batch_in_epoch, len(batches)):
            torch.manual_seed(spec.seed * 1_000_003 + progress.step)  # dropout identical on resume
            for key, value in train_step(batches[i]).items():
                sums[key] += value
            progress.step += 1
            progress.batch_in_epoch = i + 1
            progress.epoch_sums = dict(sums)
            bar.update(1)
            _maybe_die(progress.step)
            if progress.step % spec.checkpoint_every == 0 and i + 1 < len(batches):
                _report(session, module, optimizer, progress, {"step": progress.step, "epoch": epoch + 1}, best)
        bar.close()
        progress.epoch, progress.batch_in_epoch, progress.epoch_sums = epoch + 1, 0, {}
        module.eval()
        record = {"epoch": epoch + 1, "step": progress.step,
                  **{f"train_{k}": v / max(len(batches), 1) for k, v in sums.items()}, **evaluate()}
        if resumed_from_step is not None:  # the epoch this attempt started in says where it picked up
            record[RESUMED_FROM_STEP], resumed_from_step = resumed_from_step, None
        if spec.select:
            value = record.get(spec.select)
            if value is None or not math.isfinite(value):
                known = sorted(k for k in record if k.startswith("val_"))
                raise ConfigError(f"{spec.desc}: the selection metric {spec.select!r} is {value!r} after epoch "
                                  f"{epoch + 1} (the validation metrics are {known})")
            if progress.best_value is None or value < progress.best_value:
                progress.best_epoch, progress.best_value = epoch + 1, float(value)
                best = {k: v.detach().clone() for k, v in module.state_dict().items()}
            record["best_epoch"] = progress.best_epoch
        progress.history.append(record)
        _report(session, module, optimizer, progress, record, best)
    return progress


def _maybe_die(step: int) -> None:
    """Fault injection for the fault-tolerance tests: SVGT_FAULT_KILL_AT_STEP="N:/path/marker" makes the
    process exit hard (like an OOM kill) the first time step N is reached; the marker file makes it
    happen once, so the restarted worker carries on."""
    spec = os.environ.get("SVGT_FAULT_KILL_AT_STEP")
    if not spec:
        return
    at, _, marker = spec.partition(":")
    if step == int(at) and marker and not os.path.exists(marker):
        open(marker, "w").close()
        os._exit(137)


def _report(session: Session, module: nn.Module, optimizer: torch.optim.Optimizer, progress: Progress,
            metrics: dict[str, Any], best: dict[str, torch.Tensor] | None = None) -> None:
    with tempfile.TemporaryDirectory(prefix="svgt-ckpt-") as tmp:
        if session.rank == 0:
            save_checkpoint(tmp, module, optimizer, progress, best)
        session.report(metrics, Path(tmp) if session.rank == 0 else None)
