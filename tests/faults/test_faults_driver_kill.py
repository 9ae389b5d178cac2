"""Faults: the driver (`svgt train --stage 1`, which owns the local Ray cluster) is SIGKILLed mid-stage.

Nothing is mocked: the real CLI runs a real Ray Train job on the tiny pipeline. The test kills the driver's
whole process tree (driver, Ray's GCS/raylet, the Train controller and worker) as soon as the first
checkpoint of the run appears in ``train.ray.storage_path``, then runs the *same command* again. Ray Train
finds the run (same name: it is derived from the job and its inputs) and its checkpoint-manager snapshot in
storage, and the worker resumes from the latest checkpoint the snapshot registered.

What is asserted:
* the rerun resumes *at* that checkpoint's step S: the fault hook ``SVGT_FAULT_KILL_AT_STEP=S:marker`` is set
  for the rerun, and the marker never appears, so step S was not run again (a rerun from scratch would run it);
* the exported module equals an uninterrupted run of the same job (an in-process ``LocalSession`` with the
  worker's thread count) to 1e-6: the loop re-seeds per step and batches are a function of (seed, epoch), so a
  resumed run takes exactly the remaining steps. 1e-6, not bit equality, because the reference runs in
  another process, where float reductions may be ordered differently.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch
import yaml

from svgt.core.params import load_params
from svgt.model import load_value_module
from svgt.training.job import job_from_params
from svgt.training.loop import LocalSession
from svgt.training.worker import run_stage_in_session

pytestmark = [pytest.mark.faults, pytest.mark.integration]

BIN = Path(sys.executable).parent
# 54 training prompts in batches of 8: 7 steps an epoch, 28 in all, a checkpoint every 3 steps
EPOCHS, EVERY, STEPS = 4, 3, 28


def write_params(repo_root: Path, tmp_path: Path) -> Path:
    params = yaml.safe_load((repo_root / "params.yaml").read_text())
    params["model"].update(d_v=16, encoder_heads=2, cross_attn_heads=2)
    params["train"]["checkpoint_every"] = EVERY
    params["train"]["ray"].update(num_workers=1, cpus_per_worker=1, storage_path=str(tmp_path / "ray"), max_failures=2)
    params["train"]["stage1"].update(epochs=EPOCHS, batch_size=8, lr=3e-3)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


def kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL the driver and every process it started (by pid), as a machine failure would."""
    try:
        children = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        children = []
    for p in [psutil.Process(proc.pid), *children]:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    psutil.wait_procs(children, timeout=30)


def registered_checkpoint(storage: Path) -> tuple[str, int] | None:
    """The run's latest checkpoint as Ray Train's snapshot records it: (dir name, training step)."""
    for snapshot in storage.glob("*/checkpoint_manager_snapshot.json"):
        try:
            state = json.loads(snapshot.read_text())
        except (json.JSONDecodeError, OSError):
            return None  # being written
        latest = (state.get("latest_checkpoint_result") or {}).get("checkpoint_dir_name")
        if latest:
            progress = json.loads((snapshot.parent / latest / "state.json").read_text())["progress"]
            return latest, int(progress["step"])
    return None


def test_driver_killed_mid_stage_rerun_resumes(tiny_pipeline, tmp_path, repo_root):
    params_path = write_params(repo_root, tmp_path)
    argv = [
        str(BIN / "svgt"),
        "--params",
        str(params_path),
        "train",
        "--stage",
        "1",
        "--backbone",
        str(tiny_pipeline / "backbone"),
        "--data",
        str(tiny_pipeline / "values.parquet"),
        "--hidden",
        str(tiny_pipeline / "hidden"),
        "--out",
        str(tmp_path / "m1"),
        "--metrics",
        str(tmp_path / "metrics"),
        "--plots",
        str(tmp_path / "plots"),
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "RAY_DEDUP_LOGS": "0"}
    env.pop("SVGT_FAULT_KILL_AT_STEP", None)

    log = open(tmp_path / "first.log", "w")  # noqa: SIM115 (closed below; the child writes to it)
    first = subprocess.Popen(argv, cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + 240
    try:
        while registered_checkpoint(tmp_path / "ray") is None:
            assert first.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "no checkpoint within 240 s"
            time.sleep(0.05)
    finally:
        kill_tree(first)
        log.close()
    assert not (tmp_path / "m1").exists()  # killed mid-stage: nothing exported
    checkpoint, step = registered_checkpoint(tmp_path / "ray")
    assert 0 < step < STEPS, (checkpoint, step)

    marker = tmp_path / "step-rerun"
    second = subprocess.run(
        argv,
        cwd=tmp_path,
        env={**env, "SVGT_FAULT_KILL_AT_STEP": f"{step}:{marker}"},
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert second.returncode == 0, second.stdout[-2000:] + second.stderr[-3000:]
    assert not marker.exists(), f"the rerun ran step {step} again instead of resuming after it"
    resumed, meta = load_value_module(tmp_path / "m1")
    assert [h["epoch"] for h in meta["history"]] == list(range(1, EPOCHS + 1))
    assert meta["history"][-1]["step"] == STEPS

    # the same job, uninterrupted, in this process (the worker's single thread)
    params = load_params(params_path)
    job = job_from_params(
        1,
        params.model,
        params.train,
        hidden_dir=str(tiny_pipeline / "hidden"),
        data_path=str(tiny_pipeline / "values.parquet"),
        backbone_dir=str(tiny_pipeline / "backbone"),
        init_module=None,
    )
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        clean = run_stage_in_session(job, LocalSession(tmp_path / "local"), progress_bar=False)
    finally:
        torch.set_num_threads(threads)
    for (k, a), b in zip(resumed.state_dict().items(), clean.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0, msg=k)
