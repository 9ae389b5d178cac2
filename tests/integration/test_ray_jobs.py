"""`svgt train` against an existing Ray cluster: stages submitted as Ray jobs (svgt.training.submit).

The integration tests start a REAL single-node cluster with `ray start --head --block` (dashboard and job
server included, token authentication on) and submit through its HTTP job server like a remote user would.
Teardown stops exactly that cluster: SIGTERM to its `ray start --block` process (Ray's own node shutdown)
and SIGKILL to whatever is left of its process group. Not `ray stop`: that kills every Ray on the machine,
and this machine is shared with other test runs.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import yaml
from ray.exceptions import AuthenticationError

from svgt.cli import build_parser, main
from svgt.core.params import RayConfig, load_params
from svgt.model import load_value_module
from svgt.training import submit
from svgt.training.ray_runner import TrainingError, ensure_ray, is_job_server
from svgt.training.step import stage_job

# ---------------------------------------------------------------- helpers


def write_params(path: Path, storage: Path, address: str | None, **stage1) -> Path:
    params = yaml.safe_load((Path(__file__).resolve().parents[2] / "params.yaml").read_text())
    params["model"].update(d_v=16, encoder_heads=2, cross_attn_heads=2)
    params["train"]["ray"].update(address=address, num_workers=1, cpus_per_worker=1, storage_path=str(storage))
    params["train"]["stage1"].update(epochs=2, batch_size=8, **stage1)
    path.write_text(yaml.safe_dump(params))
    return path


def train_argv(params: Path, root: Path, out: Path, stage: int = 1) -> list[str]:
    return [
        "--params",
        str(params),
        "train",
        "--stage",
        str(stage),
        "--backbone",
        str(root / "backbone"),
        "--data",
        str(root / "values.parquet"),
        "--hidden",
        str(root / "hidden"),
        "--out",
        str(out / "module"),
        "--metrics",
        str(out / "metrics"),
        "--plots",
        str(out / "plots"),
    ]


def stage_inputs(root: Path) -> dict:
    return {
        "hidden_dir": root / "hidden",
        "data_path": root / "values.parquet",
        "backbone_dir": root / "backbone",
        "init_module": None,
    }


# ---------------------------------------------------------------- no cluster needed


def test_address_forms(monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert submit.job_server_address(RayConfig()) is None
    assert submit.job_server_address(RayConfig(address="auto")) is None
    assert submit.job_server_address(RayConfig(address="ray://head:10001")) is None
    assert submit.job_server_address(RayConfig(address="http://head:8265")) == "http://head:8265"
    monkeypatch.setenv("RAY_ADDRESS", "https://ray.example.com")
    assert submit.job_server_address(RayConfig()) == "https://ray.example.com"
    assert submit.job_server_address(RayConfig(address="10.0.0.1:6379")) is None  # params win over the env
    assert not is_job_server("10.0.0.1:6379") and is_job_server("http://10.0.0.1:8265")
    # a job server is never ray.init()'ed: refused before Ray is touched
    with pytest.raises(ValueError, match=r"^Ray address https://ray.example.com is a job server: submit the stage"):
        ensure_ray(RayConfig())


def test_entrypoint_is_the_train_step_in_cluster(tiny_pipeline):
    argv = shlex.split(submit.entrypoint(2, **{**stage_inputs(tiny_pipeline), "init_module": Path("models/s1")}))
    assert argv[:3] == ["python", "-m", "svgt.cli"]
    args = build_parser().parse_args(argv[3:])
    assert (args.step, args.stage, args.in_cluster, args.detach, args.attach) == ("train", 2, True, False, None)
    assert args.params == submit.PARAMS_FILE
    # paths are absolute: the job's working directory is a Ray temp dir, not the submitter's cwd
    assert args.init == Path("models/s1").resolve() and args.hidden == (tiny_pipeline / "hidden").resolve()
    env = submit.runtime_env(Path("/tmp/wd"))
    assert env["working_dir"] == "/tmp/wd" and Path(env["py_modules"][0]).name == "svgt"
    assert not {"pip", "conda", "uv", "container", "image_uri"} & set(env), "the cluster brings its own packages"


def test_job_params_round_trip_to_the_same_run_name(tiny_pipeline, tmp_path, monkeypatch):
    """The job recomputes the run name (and so its export path) from the params file it is handed."""
    monkeypatch.chdir(tmp_path)
    params = load_params(write_params(tmp_path / "p.yaml", Path("relative/ray"), "http://head:8265"))
    job_params = submit.cluster_params(params)
    assert job_params.train.ray.storage_path == str(tmp_path / "relative/ray")
    (tmp_path / "job.yaml").write_text(submit.params_yaml(job_params))
    reloaded = load_params(tmp_path / "job.yaml")
    assert reloaded == job_params
    job, fingerprint = stage_job(job_params, 1, **stage_inputs(tiny_pipeline))
    again, fp_again = stage_job(reloaded, 1, **stage_inputs(tiny_pipeline))
    assert again.run_name(fp_again) == job.run_name(fingerprint)
    assert submit.attempt_id("svgt-stage1-abc", 1) == "svgt-stage1-abc"
    assert submit.attempt_id("svgt-stage1-abc", 3) == "svgt-stage1-abc-attempt3"


def test_resubmission_picks_the_latest_attempt_of_this_run():
    from types import SimpleNamespace

    class Jobs:  # stands in for JobSubmissionClient.list_jobs (the real one is used in the cluster tests below)
        def list_jobs(self):
            ids = [
                "svgt-stage1-abc-attempt10",
                "other",
                None,
                "svgt-stage1-abc",
                "svgt-stage1-abcd",
                "svgt-stage1-abc-attempt2",
            ]
            return [SimpleNamespace(submission_id=i) for i in ids]

    found = [j.submission_id for j in submit._attempts(Jobs(), "svgt-stage1-abc")]
    assert found == ["svgt-stage1-abc", "svgt-stage1-abc-attempt2", "svgt-stage1-abc-attempt10"]


def _fake_export(root: Path) -> Path:
    from svgt.model import ValueModule, ValueModuleConfig, save_value_module

    torch.manual_seed(0)
    save_value_module(
        ValueModule(ValueModuleConfig(hidden_size=32, layer=2, d_v=16, encoder_heads=2, cross_attn_heads=2)),
        root / "module",
        {"stage": 1},
    )
    (root / "metrics").mkdir()
    (root / "metrics" / "stage1.json").write_text(json.dumps({"stage": 1, "test_prompt_auroc": 0.75}))
    (root / "plots").mkdir()
    (root / "plots" / "stage1.csv").write_text("epoch,loss\n1,0.5\n")
    return root


@pytest.mark.parametrize("where", ["local", pytest.param("s3", marks=pytest.mark.integration)])  # s3: a server
def test_export_round_trip_verifies_checksums(tmp_path, where, request):
    if where == "s3":
        endpoint = request.getfixturevalue("s3_server")
        bucket = request.getfixturevalue("s3_bucket")
        mp = request.getfixturevalue("monkeypatch")
        mp.setenv("AWS_ENDPOINT_URL", endpoint)  # how a cluster points s3fs at an S3-compatible server
        storage = f"s3://{bucket}/ray"
    else:
        storage = str(tmp_path / "storage")
    uri = submit.export_uri(storage, "svgt-stage1-0123")
    assert uri == f"{storage}/svgt-stage1-0123/export"
    src = _fake_export(tmp_path / "src")
    submit.publish_export(src, uri, run_name="svgt-stage1-0123", stage=1)
    out = tmp_path / "out"
    metrics = submit.fetch_export(
        uri,
        stage=1,
        run_name="svgt-stage1-0123",
        out_dir=out / "m",
        metrics_dir=out / "metrics",
        plots_dir=out / "plots",
    )
    assert metrics == {"stage": 1, "test_prompt_auroc": 0.75}
    assert (out / "plots" / "stage1.csv").read_text() == "epoch,loss\n1,0.5\n"
    a, _ = load_value_module(src / "module")
    b, meta = load_value_module(out / "m")
    assert meta["stage"] == 1
    for (k, x), y in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        assert torch.equal(x, y), k

    with pytest.raises(TrainingError, match=r"describes stage 1 run svgt-stage1-0123, expected stage 1 run other"):
        submit.fetch_export(uri, stage=1, run_name="other", out_dir=out / "x", metrics_dir=out, plots_dir=out)
    # a file changed after publishing (partial upload, bit rot) is refused and the caller's paths stay as they were
    import fsspec

    fs, root = fsspec.core.url_to_fs(uri)
    fs.pipe_file(f"{root}/plots/stage1.csv", b"epoch,loss\n1,9.9\n")
    with pytest.raises(TrainingError, match=r"/plots/stage1.csv: checksum differs from export.json"):
        submit.fetch_export(
            uri, stage=1, run_name=None, out_dir=out / "m", metrics_dir=out / "metrics", plots_dir=out / "plots"
        )
    assert (out / "plots" / "stage1.csv").read_text() == "epoch,loss\n1,0.5\n"
    with pytest.raises(TrainingError, match=r"^stage 1: no export.json under .*/nothing/export: the job did not"):
        submit.fetch_export(
            submit.export_uri(storage, "nothing"),
            stage=1,
            run_name=None,
            out_dir=out / "y",
            metrics_dir=out,
            plots_dir=out,
        )


def test_detach_and_attach_need_a_job_server(tiny_pipeline, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    params = write_params(tmp_path / "p.yaml", tmp_path / "ray", None)
    assert main([*train_argv(params, tiny_pipeline, tmp_path), "--detach"]) == 2
    assert "--detach/--attach need a Ray job server address" in capsys.readouterr().err


def test_unreachable_job_server_is_a_clear_error(tiny_pipeline, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here once the socket is closed
    params = write_params(tmp_path / "p.yaml", tmp_path / "ray", f"http://127.0.0.1:{port}")
    assert main(train_argv(params, tiny_pipeline, tmp_path)) == 75  # a refused connection: try again later
    err = capsys.readouterr().err
    assert f"cannot reach the Ray job server at http://127.0.0.1:{port} (train.ray.address / RAY_ADDRESS)" in err


# ---------------------------------------------------------------- a real cluster


@dataclass
class Cluster:
    address: str  # the job server (dashboard) URL
    process: subprocess.Popen
    gcs_address: str  # host:port, what `train.ray.address: head:6379` names
    client_address: str  # ray://host:port (Ray Client)

    def client(self):
        from ray.job_submission import JobSubmissionClient

        return JobSubmissionClient(self.address)

    def jobs(self, storage_under: Path) -> list:
        """The svgt stage jobs whose storage path lies under ``storage_under`` (one test's jobs)."""
        jobs = self.client().list_jobs()
        return [j for j in jobs if (j.metadata or {}).get("svgt_export", "").startswith(str(storage_under))]


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _reload_ray_auth() -> None:
    """Ray reads RAY_AUTH_MODE / RAY_AUTH_TOKEN once per process and caches them: re-read after a change."""
    from ray._raylet import AuthenticationTokenLoader, Config

    Config.initialize("")
    AuthenticationTokenLoader.instance().reset_cache()


@pytest.fixture(scope="module")
def ray_cluster():
    gcs, dashboard, client, agent_http, agent_grpc = _free_ports(5)
    # token auth, as Ray 2.60 turns on by default when a token exists; the token lives in the env only
    auth = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    old = {k: os.environ.get(k) for k in (*auth, "RAY_ADDRESS")}
    os.environ.update(auth)
    os.environ.pop("RAY_ADDRESS", None)
    _reload_ray_auth()
    bindir = str(Path(sys.executable).parent)
    env = {**os.environ, "PATH": bindir + os.pathsep + os.environ.get("PATH", "")}  # the job runs `python`
    env["RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S"] = "0"  # teardown: no 30 s drain of a node about to vanish
    temp = tempfile.mkdtemp(prefix="svgtrj-", dir="/tmp")  # short: Ray puts unix sockets under it
    log = open(Path(temp) / "ray-start.log", "w")  # noqa: SIM115
    cmd = [
        str(Path(bindir) / "ray"),
        "start",
        "--head",
        "--block",
        f"--port={gcs}",
        f"--dashboard-port={dashboard}",
        "--num-cpus=2",
        "--include-dashboard=true",
        "--dashboard-host=127.0.0.1",
        f"--temp-dir={temp}",
        f"--ray-client-server-port={client}",
        f"--dashboard-agent-listen-port={agent_http}",
        f"--dashboard-agent-grpc-port={agent_grpc}",
        "--disable-usage-stats",
    ]
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    cluster = Cluster(f"http://127.0.0.1:{dashboard}", proc, f"127.0.0.1:{gcs}", f"ray://127.0.0.1:{client}")
    try:
        deadline = time.monotonic() + 90
        while True:
            if proc.poll() is not None:
                tail = (Path(temp) / "ray-start.log").read_text()[-3000:]
                pytest.fail(f"ray start exited {proc.returncode}:\n{tail}")
            try:
                cluster.client()
                break
            except AuthenticationError:
                raise  # up, but refusing us: waiting will not help
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(1)
        yield cluster
    finally:
        proc.send_signal(signal.SIGTERM)  # `ray start --block` shuts its node down on SIGTERM
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=45)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # anything of this cluster still alive
        log.close()
        shutil.rmtree(temp, ignore_errors=True)
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        _reload_ray_auth()


def _wait_terminal(cluster: Cluster, submission_id: str, timeout: float = 120) -> str:
    client = cluster.client()
    deadline = time.monotonic() + timeout
    while not (status := client.get_job_status(submission_id)).is_terminal():
        assert time.monotonic() < deadline, f"{submission_id} still {status} after {timeout}s"
        time.sleep(1)
    return str(status)


@pytest.mark.integration
def test_stage_runs_as_ray_job_that_outlives_its_submitter(ray_cluster, tiny_pipeline, tmp_path, caplog):
    params = write_params(tmp_path / "cluster.yaml", tmp_path / "ray-cluster", ray_cluster.address)
    argv = train_argv(params, tiny_pipeline, tmp_path / "submitted")
    submitter = subprocess.Popen(
        [sys.executable, "-m", "svgt.cli", *argv], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + 60
    while not ray_cluster.jobs(tmp_path):
        assert submitter.poll() is None, f"the submitter exited {submitter.returncode} before submitting"
        assert time.monotonic() < deadline, "no job submitted within 60 s"
        time.sleep(0.5)
    submitter.kill()  # SIGKILL: no chance to clean anything up
    submitter.wait()
    (job,) = ray_cluster.jobs(tmp_path)
    assert not job.status.is_terminal(), f"the job finished before the submitter was killed: {job.status}"
    assert job.metadata["svgt_stage"] == "1" and job.entrypoint.split()[:3] == ["python", "-m", "svgt.cli"]
    assert "--in-cluster" in shlex.split(job.entrypoint)

    # meanwhile, the reference: the same stage on a local Ray in this process
    local_params = write_params(tmp_path / "local.yaml", tmp_path / "ray-local", None)
    assert main(train_argv(local_params, tiny_pipeline, tmp_path / "local")) == 0

    assert _wait_terminal(ray_cluster, job.submission_id) == "SUCCEEDED"
    assert not (tmp_path / "submitted").exists()  # the killed submitter never collected anything

    # the same command again attaches to the finished job and collects its export; no second job
    with caplog.at_level("INFO", logger="svgt.training.submit"):
        assert main(argv) == 0
    assert f"Ray job {job.submission_id} already submitted (SUCCEEDED): attaching" in caplog.text
    assert [j.submission_id for j in ray_cluster.jobs(tmp_path)] == [job.submission_id]
    assert job.submission_id == submit.attempt_id(job.metadata["svgt_run"], 1)

    local = json.loads((tmp_path / "local/metrics/stage1.json").read_text())
    remote = json.loads((tmp_path / "submitted/metrics/stage1.json").read_text())
    for key in [k for k in local if k.startswith(("test_", "final_"))]:
        assert remote[key] == pytest.approx(local[key], abs=1e-6), key
    assert "test_prompt_auroc" in remote and remote["epochs"] == local["epochs"] == 2
    a, _ = load_value_module(tmp_path / "local/module")
    b, meta = load_value_module(tmp_path / "submitted/module")
    for (k, x), y in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        torch.testing.assert_close(x, y, atol=1e-6, rtol=0, msg=k)
    assert (tmp_path / "ray-cluster" / meta["ray_run"]).is_dir()  # the cluster's checkpoints, not the local ones
    assert (tmp_path / "submitted/plots/stage1.csv").read_text() == (tmp_path / "local/plots/stage1.csv").read_text()

    # --attach by id collects the same job's outputs somewhere else
    assert main([*train_argv(params, tiny_pipeline, tmp_path / "attached"), "--attach", job.submission_id]) == 0
    assert json.loads((tmp_path / "attached/metrics/stage1.json").read_text()) == remote


@pytest.mark.integration
def test_failing_job_reports_id_status_and_log_tail_then_a_rerun_submits_attempt2(ray_cluster, tiny_pipeline,
                                                                                    tmp_path, capsys, caplog):
    # d_v=16 with 3 encoder heads passes the params schema; the value module refuses it on the worker
    params = write_params(tmp_path / "bad.yaml", tmp_path / "ray-bad", ray_cluster.address)
    raw = yaml.safe_load(params.read_text())
    raw["model"]["encoder_heads"] = 3
    raw["train"]["ray"]["max_failures"] = 0
    params.write_text(yaml.safe_dump(raw))
    assert main(train_argv(params, tiny_pipeline, tmp_path / "out")) == 1
    err = capsys.readouterr().err
    (job,) = ray_cluster.jobs(tmp_path)
    assert str(job.status) == "FAILED"
    head = f"svgt train: TrainingError: stage 1: Ray job {job.submission_id} at {ray_cluster.address} ended FAILED: "
    assert head + "Job entrypoint command failed with exit code 1" in err
    assert f" log lines of {job.submission_id} ---\n" in err
    assert "d_v=16 is not divisible by encoder_heads=3" in err  # the cause, from the job's log tail
    assert f"`ray job logs --address {ray_cluster.address} {job.submission_id}`" in err
    assert not (tmp_path / "out" / "module").exists()

    # the same command again: the failed attempt is not reattached; a second attempt is submitted under
    # <run>-attempt2 (same Ray Train run name, so it would resume from that run's last checkpoint)
    with caplog.at_level("INFO", logger="svgt.training.submit"):
        assert main(train_argv(params, tiny_pipeline, tmp_path / "out")) == 1
    again = sorted((j for j in ray_cluster.jobs(tmp_path)), key=lambda j: j.start_time or 0)
    assert [j.submission_id for j in again] == [job.submission_id, f"{job.submission_id}-attempt2"]
    assert (f"previous attempt {job.submission_id} ended FAILED; submitting {job.submission_id}-attempt2 "
            "(resumes from the last checkpoint)") in caplog.text
    assert again[1].metadata["svgt_run"] == job.metadata["svgt_run"]


@pytest.mark.integration
@pytest.mark.parametrize("form", ["gcs_address", "client_address"])
def test_stage_joins_a_running_cluster(ray_cluster, tiny_pipeline, tmp_path, form):
    """`train.ray.address: head:6379` makes this process a driver on that cluster, `ray://head:10001` drives it
    through Ray Client (ray.init never starts a cluster when given an address); the stage runs there.
    `auto` takes the first path (ray.init("auto")), with Ray finding the address on the node itself."""
    from ray.util.state import list_jobs

    params = write_params(tmp_path / "join.yaml", tmp_path / "ray-join", getattr(ray_cluster, form))
    before = {j.job_id for j in list_jobs(address=ray_cluster.address)}
    assert main(train_argv(params, tiny_pipeline, tmp_path / "joined")) == 0
    drivers = [j for j in list_jobs(address=ray_cluster.address) if j.job_id not in before and j.type == "DRIVER"]
    assert len(drivers) == 1 and str(drivers[0].status) == "SUCCEEDED"  # this run's driver, on that cluster
    module, meta = load_value_module(tmp_path / "joined/module")
    assert (tmp_path / "ray-join" / meta["ray_run"]).is_dir() and meta["stage"] == 1
