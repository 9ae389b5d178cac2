"""What a training worker runs: the stage's loop in a session (Ray Train's worker, or a local one).

Above both stage modules (``stages`` for 1-2, ``stage3`` for 3), so neither imports the other's caller.
"""

from __future__ import annotations

import torch

from svgt.model import ValueModule
from svgt.training.job import StageJob
from svgt.training.loop import Session
from svgt.training.stage3 import behaviour_stage
from svgt.training.stages import discrimination_stage


def run_stage_in_session(job: StageJob, session: Session, progress_bar: bool = True) -> ValueModule:
    if job.stage in (1, 2):
        return discrimination_stage(job, session, progress_bar)
    return behaviour_stage(job, session, progress_bar)


def train_worker(config: dict) -> None:
    """Ray Train's ``train_loop_per_worker``."""
    from svgt.training.loop import RaySession

    torch.set_num_threads(max(1, int(config.pop("_threads", 1))))
    run_stage_in_session(StageJob(**config), RaySession())
