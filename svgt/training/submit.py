"""Submit a curriculum stage to an existing Ray cluster as a Ray job (Ray Jobs API).

With ``train.ray.address`` (or RAY_ADDRESS) set to a Ray job server URL such as ``http://head:8265`` (the
dashboard port), ``svgt train --stage N`` does not train in its own process. It submits a Ray job whose
entrypoint is the same step, ``python -m svgt.cli --params params.yaml train --stage N --in-cluster ...``,
streams the job's logs and waits for it, so a long run survives the submitting process:

* **Submission id** = the stage's Ray Train run name (stage, params and an input fingerprint hashed), so
  resubmitting the same stage attaches to that job instead of starting a duplicate: a running job's logs
  are streamed, a succeeded job's result is reused. After a FAILED or STOPPED attempt the next one is
  submitted as ``<run>-attempt2``, ...; the Ray Train run keeps its name, so it resumes from the last
  checkpoint in the storage path.
* **Detach / attach.** Killing the submitter (or ``--detach``) leaves the job running; rerunning the same
  command, or ``svgt train --stage N --attach ID``, collects the result later.
* **runtime_env.** ``py_modules`` is this process's ``svgt`` package, so the cluster runs the submitter's
  code; ``working_dir`` holds only the params file the job runs with. Everything else must already be
  installed on every node: Python 3.11 and the project's dependencies at the ``constraints.txt`` pins
  (torch, transformers, ``ray[default]`` at the cluster's Ray version, ...), as in ``infra/docker``.
* **Inputs** (hidden states, dataset, backbone, ``--init`` module) are handed over as absolute paths
  resolved here: every node must see them at the same paths (a shared workspace, see infra/README.md).
* **Outputs.** The job exports the module directory, the stage metrics and the training curve to
  ``<train.ray.storage_path>/<run>/export/`` (a shared path or s3://) and writes ``export.json`` with
  their checksums last; the submitter downloads them into ``--out``, ``--metrics`` and ``--plots`` and
  verifies every checksum. So the submitting machine needs to read the storage path, not a node's disk.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import shlex
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import yaml

from svgt.core.io import atomic_dir, file_checksums, sha256_file, write_text_atomic
from svgt.core.params import Params, RayConfig
from svgt.training.ray_runner import TrainingError, configured_address, is_job_server, resolve_storage_path

log = logging.getLogger(__name__)

PARAMS_FILE = "params.yaml"  # the job's params, in its working_dir
EXPORT_MANIFEST = "export.json"
FAILED_STATUSES = ("FAILED", "STOPPED")
LOG_TAIL_LINES = 25


@dataclass(frozen=True)
class SubmittedStage:
    submission_id: str
    address: str
    status: str  # Ray JobStatus value
    export_uri: str
    metrics: dict[str, Any] | None  # None when detached before the job finished


def job_server_address(cfg: RayConfig) -> str | None:
    """The Ray job server URL when stages are to be submitted as Ray jobs, else None."""
    address = configured_address(cfg)
    return address if is_job_server(address) else None


def cluster_params(params: Params) -> Params:
    """``params`` as the job sees them: a relative storage path would resolve in the job's working_dir."""
    ray = dataclasses.replace(params.train.ray, storage_path=resolve_storage_path(params.train.ray.storage_path))
    return dataclasses.replace(params, train=dataclasses.replace(params.train, ray=ray))


def params_yaml(params: Params) -> str:
    """YAML that ``load_params`` reads back to equal dataclasses (tuples become lists on the way)."""
    return yaml.safe_dump(json.loads(json.dumps(dataclasses.asdict(params))), sort_keys=False)


def export_uri(storage_path: str, run_name: str) -> str:
    return f"{storage_path.rstrip('/')}/{run_name}/export"


def attempt_id(run_name: str, attempt: int) -> str:
    return run_name if attempt == 1 else f"{run_name}-attempt{attempt}"


def entrypoint(stage: int, *, hidden_dir: Path, data_path: Path, backbone_dir: Path, init_module: Path | None) -> str:
    """The job's command: ``svgt train`` with --in-cluster (``python -m`` so no console script is needed)."""
    argv = [
        "python",
        "-m",
        "svgt.cli",
        "--params",
        PARAMS_FILE,
        "train",
        "--stage",
        str(stage),
        "--in-cluster",
        "--hidden",
        str(hidden_dir.resolve()),
        "--data",
        str(data_path.resolve()),
        "--backbone",
        str(backbone_dir.resolve()),
    ]
    if init_module is not None:
        argv += ["--init", str(init_module.resolve())]
    return shlex.join(argv)


def runtime_env(working_dir: Path) -> dict[str, Any]:
    import svgt

    return {
        "working_dir": str(working_dir),
        "py_modules": [str(Path(svgt.__file__).parent)],
        "excludes": ["__pycache__", "*.pyc"],
        # unbuffered, so the submitter streams the job's progress as it happens
        "env_vars": {"PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false"},
    }


# ---------------------------------------------------------------- inside the job


def run_in_cluster(
    params: Params, stage: int, *, hidden_dir: Path, data_path: Path, backbone_dir: Path, init_module: Path | None
) -> dict[str, Any]:
    """The job's side: train on the cluster this process runs on, then publish the export."""
    from svgt.training.step import stage_job, train_stage

    job, fingerprint = stage_job(
        params, stage, hidden_dir=hidden_dir, data_path=data_path, backbone_dir=backbone_dir, init_module=init_module
    )
    run_name = job.run_name(fingerprint)
    uri = export_uri(resolve_storage_path(params.train.ray.storage_path), run_name)
    with tempfile.TemporaryDirectory(prefix="svgt-export-") as tmp:
        root = Path(tmp)
        metrics = train_stage(
            params,
            stage,
            hidden_dir=hidden_dir,
            data_path=data_path,
            backbone_dir=backbone_dir,
            init_module=init_module,
            out_dir=root / "module",
            metrics_dir=root / "metrics",
            plots_dir=root / "plots",
            in_cluster=True,
        )
        publish_export(root, uri, run_name=run_name, stage=stage)
    log.info("stage %d: exported module, metrics and curve to %s", stage, uri)
    return metrics


def publish_export(local_dir: Path, uri: str, *, run_name: str, stage: int) -> None:
    """Upload ``local_dir`` to ``uri``; the checksum manifest goes last, so a partial upload is never trusted."""
    import fsspec

    fs, root = fsspec.core.url_to_fs(uri)
    manifest = f"{root}/{EXPORT_MANIFEST}"
    if fs.exists(manifest):
        fs.rm_file(manifest)
    files = file_checksums(local_dir, exclude=(EXPORT_MANIFEST,))
    for rel in files:
        target = f"{root}/{rel}"
        fs.makedirs(target.rsplit("/", 1)[0], exist_ok=True)
        fs.put_file(str(local_dir / rel), target)
    payload = {"run_name": run_name, "stage": stage, "files": files}
    fs.pipe_file(manifest, (json.dumps(payload, indent=2, sort_keys=True) + "\n").encode())


# ---------------------------------------------------------------- the submitter's side


def fetch_export(
    uri: str, *, stage: int, run_name: str | None, out_dir: Path, metrics_dir: Path, plots_dir: Path
) -> dict[str, Any]:
    """Download a job's export into the caller's paths (checksums verified); returns the stage metrics."""
    import fsspec

    from svgt.model import load_value_module

    fs, root = fsspec.core.url_to_fs(uri)
    try:
        manifest = json.loads(fs.cat_file(f"{root}/{EXPORT_MANIFEST}"))
    except FileNotFoundError:
        raise TrainingError(
            f"stage {stage}: no {EXPORT_MANIFEST} under {uri}: the job did not publish its result "
            "(is train.ray.storage_path the same storage for this machine and the cluster?)"
        ) from None
    if manifest.get("stage") != stage or (run_name is not None and manifest.get("run_name") != run_name):
        raise TrainingError(
            f"{uri}/{EXPORT_MANIFEST} describes stage {manifest.get('stage')} run "
            f"{manifest.get('run_name')}, expected stage {stage} run {run_name}"
        )
    with tempfile.TemporaryDirectory(prefix="svgt-fetch-") as tmp:
        local = Path(tmp)
        for rel, digest in manifest["files"].items():
            target = local / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            fs.get_file(f"{root}/{rel}", str(target))
            if sha256_file(target) != digest:
                raise TrainingError(f"{uri}/{rel}: checksum differs from {EXPORT_MANIFEST} (corrupt or partial export)")
        metrics_text = (local / "metrics" / f"stage{stage}.json").read_text(encoding="utf-8")
        with atomic_dir(out_dir) as staged:
            shutil.copytree(local / "module", staged, dirs_exist_ok=True)
        write_text_atomic(metrics_dir / f"stage{stage}.json", metrics_text)
        write_text_atomic(plots_dir / f"stage{stage}.csv", (local / "plots" / f"stage{stage}.csv").read_text())
    load_value_module(out_dir)  # verifies the module's own manifest end to end
    return json.loads(metrics_text)


def submit_stage(
    params: Params,
    stage: int,
    *,
    hidden_dir: Path,
    data_path: Path,
    backbone_dir: Path,
    init_module: Path | None,
    out_dir: Path,
    metrics_dir: Path,
    plots_dir: Path,
    detach: bool = False,
    stream: TextIO | None = None,
    poll_seconds: float = 1.0,
) -> SubmittedStage:
    """Submit the stage as a Ray job (or attach to the one already submitted); wait and collect its result.

    Raises TrainingError naming the job id, its status, Ray's message and the last log lines when the job
    fails, or when the job server cannot be reached.
    """
    from svgt.training.step import stage_job

    address = job_server_address(params.train.ray)
    if address is None:
        raise ValueError(
            "submit_stage needs a Ray job server address (http://HEAD:8265) in train.ray.address or RAY_ADDRESS"
        )
    params = cluster_params(params)
    job, fingerprint = stage_job(
        params, stage, hidden_dir=hidden_dir, data_path=data_path, backbone_dir=backbone_dir, init_module=init_module
    )
    run_name = job.run_name(fingerprint)
    export = export_uri(params.train.ray.storage_path, run_name)
    client = _client(address)
    attempts = _attempts(client, run_name)
    if attempts and str(attempts[-1].status) not in FAILED_STATUSES:
        submission_id = attempts[-1].submission_id
        log.info(
            "stage %d: Ray job %s already submitted (%s): attaching instead of submitting again",
            stage,
            submission_id,
            attempts[-1].status,
        )
    else:
        submission_id = attempt_id(run_name, len(attempts) + 1)
        if attempts:
            log.info(
                "stage %d: previous attempt %s ended %s; submitting %s (resumes from the last checkpoint)",
                stage,
                attempts[-1].submission_id,
                attempts[-1].status,
                submission_id,
            )
        command = entrypoint(
            stage, hidden_dir=hidden_dir, data_path=data_path, backbone_dir=backbone_dir, init_module=init_module
        )
        with tempfile.TemporaryDirectory(prefix="svgt-job-") as workdir:
            (Path(workdir) / PARAMS_FILE).write_text(params_yaml(params), encoding="utf-8")
            # submit_job uploads working_dir and py_modules before it returns
            client.submit_job(
                entrypoint=command,
                submission_id=submission_id,
                runtime_env=runtime_env(Path(workdir)),
                metadata={"svgt_stage": str(stage), "svgt_run": run_name, "svgt_export": export},
            )
        log.info("stage %d: submitted Ray job %s to %s: %s", stage, submission_id, address, command)
    if detach:
        status = str(client.get_job_status(submission_id))
        return SubmittedStage(submission_id, address, status, export, None)
    return _collect(
        client,
        address,
        submission_id,
        stage=stage,
        run_name=run_name,
        export=export,
        out_dir=out_dir,
        metrics_dir=metrics_dir,
        plots_dir=plots_dir,
        stream=stream,
        poll_seconds=poll_seconds,
    )


def attach_stage(
    address: str,
    submission_id: str,
    *,
    stage: int,
    out_dir: Path,
    metrics_dir: Path,
    plots_dir: Path,
    stream: TextIO | None = None,
    poll_seconds: float = 1.0,
) -> SubmittedStage:
    """Wait for an already submitted stage job and collect its result (``svgt train --attach ID``)."""
    client = _client(address)
    try:
        info = client.get_job_info(submission_id)
    except RuntimeError as err:
        raise TrainingError(f"no Ray job {submission_id} at {address}: {_first_line(str(err))}") from None
    meta = info.metadata or {}
    if "svgt_export" not in meta:
        raise TrainingError(f"Ray job {submission_id} at {address} was not submitted by svgt train")
    if meta.get("svgt_stage") != str(stage):
        raise TrainingError(f"Ray job {submission_id} trains stage {meta.get('svgt_stage')}, not stage {stage}")
    return _collect(
        client,
        address,
        submission_id,
        stage=stage,
        run_name=meta.get("svgt_run"),
        export=meta["svgt_export"],
        out_dir=out_dir,
        metrics_dir=metrics_dir,
        plots_dir=plots_dir,
        stream=stream,
        poll_seconds=poll_seconds,
    )


def _collect(
    client: Any,
    address: str,
    submission_id: str,
    *,
    stage: int,
    run_name: str | None,
    export: str,
    out_dir: Path,
    metrics_dir: Path,
    plots_dir: Path,
    stream: TextIO | None,
    poll_seconds: float,
) -> SubmittedStage:
    try:
        status = _wait(client, submission_id, stream or sys.stderr, poll_seconds)
    except KeyboardInterrupt:
        raise TrainingError(
            f"stopped waiting; Ray job {submission_id} keeps running on {address}: collect it with "
            f"`svgt train --stage {stage} --attach {submission_id}` (or `ray job stop` it)"
        ) from None
    if status != "SUCCEEDED":
        raise TrainingError(_failure_message(client, address, submission_id, stage, status))
    metrics = fetch_export(
        export, stage=stage, run_name=run_name, out_dir=out_dir, metrics_dir=metrics_dir, plots_dir=plots_dir
    )
    log.info("stage %d: Ray job %s SUCCEEDED; module in %s", stage, submission_id, out_dir)
    return SubmittedStage(submission_id, address, status, export, metrics)


def _client(address: str) -> Any:
    from ray.job_submission import JobSubmissionClient

    try:
        return JobSubmissionClient(address)
    except (ConnectionError, RuntimeError) as err:
        # Ray's message already names missing auth tokens and the like; keep it, on one line
        raise TrainingError(
            f"cannot reach the Ray job server at {address} (train.ray.address / RAY_ADDRESS): {_first_line(str(err))}"
        ) from err


def _attempts(client: Any, run_name: str) -> list[Any]:
    def number(sid: str) -> int:
        return 1 if sid == run_name else int(sid.rsplit("-attempt", 1)[1])

    mine = [
        j
        for j in client.list_jobs()
        if j.submission_id == run_name or (j.submission_id or "").startswith(f"{run_name}-attempt")
    ]
    return sorted(mine, key=lambda j: number(j.submission_id))


def _wait(client: Any, submission_id: str, stream: TextIO, poll_seconds: float) -> str:
    if not client.get_job_status(submission_id).is_terminal():
        try:
            asyncio.run(_tail(client, submission_id, stream))
        except (RuntimeError, OSError) as err:  # the log socket dropped: the job is unaffected, keep polling
            log.warning("log stream of Ray job %s ended early (%s); polling its status", submission_id, err)
    while not (status := client.get_job_status(submission_id)).is_terminal():
        time.sleep(poll_seconds)
    return str(status)


async def _tail(client: Any, submission_id: str, stream: TextIO) -> None:
    async for chunk in client.tail_job_logs(submission_id):
        stream.write(chunk)
        stream.flush()


def _failure_message(client: Any, address: str, submission_id: str, stage: int, status: str) -> str:
    info = client.get_job_info(submission_id)
    lines = client.get_job_logs(submission_id).rstrip().splitlines()[-LOG_TAIL_LINES:]
    return (
        f"stage {stage}: Ray job {submission_id} at {address} ended {status}: "
        f"{_first_line(info.message or 'no message')}\n"
        f"--- last {len(lines)} log lines of {submission_id} ---\n" + "\n".join(lines) + "\n"
        f"--- (full log: `ray job logs --address {address} {submission_id}`; rerunning the same command "
        "submits a new attempt that resumes from the last checkpoint)"
    )


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else text
