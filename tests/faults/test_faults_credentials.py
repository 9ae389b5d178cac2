"""Credentials never leak: not into artifacts, params, metrics, logs, the MLflow database or Prefect's.

The environment carries distinctive fake secrets (AWS keys, the MLflow password and token, a Hugging Face
token, a Prefect API key), and the pipeline really uses them: stage 1 is trained as a Ray Train job on the
tiny pipeline with its checkpoints on S3 (``train.ray.storage_path: s3://``, a moto server on loopback that
the AWS keys sign every request to), the module is registered to an MLflow tracking *server* over HTTP (the
MLflow password and token go out as auth headers) with its artifacts on that S3, downloaded again through
``models:/``, and the ingest/validate Prefect tasks run in a flow against Prefect's ephemeral server with its
own PREFECT_HOME. Then every file written (the run directory, Ray's session logs, the MLflow server's
database and log, Prefect's database), every object and key on S3 and every captured log line is searched
for each secret, verbatim and in the encoded forms a leak could take (base64 at any alignment, URL-safe
base64, percent-encoding, hex). Nothing is mocked: moto is a real S3 endpoint, it just keeps no real data.

A second test checks that URLs with inline credentials are refused with the credentials redacted in the
error (backbone.source, --module and the MLflow tracking URI), and that retry logs redact them too.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import logging
import os
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml

from svgt.backbone.sources import BackboneError, parse_source
from svgt.core.params import load_params
from svgt.core.retry import RetryError, RetryPolicy, retry_call
from svgt.eval.gates import GateReport, GateResult, write_gate_report
from svgt.registry.uri import RegistryError, mlflow_client, resolve_module_uri
from svgt.registry.versions import register_module
from tests.faults.test_faults_s3 import free_port
from tests.integration.test_flows import make_checkout

SECRETS = {
    "AWS_ACCESS_KEY_ID": "AKIASVGTFAKELEAK0001",
    "AWS_SECRET_ACCESS_KEY": "svgtFakeSecret/LeakCheck+0002",
    "AWS_SESSION_TOKEN": "svgtFakeSessionToken0003",
    "MLFLOW_TRACKING_PASSWORD": "svgt-fake-mlflow-password-0004",
    "MLFLOW_TRACKING_TOKEN": "svgt-fake-mlflow-token-0005",
    "HF_TOKEN": "hf_svgtFakeHubToken0006",
    "PREFECT_API_KEY": "pnu_svgtFakePrefectKey0007",
}
BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parents[2]

FLOW = textwrap.dedent("""
    import sys
    from prefect import flow
    from flows import tasks
    from flows.tasks import working_directory

    @flow(name="svgt-credentials-probe")
    def probe(workdir: str) -> bool:
        with working_directory(workdir):
            tasks.ingest("params.yaml")
            return tasks.validate("params.yaml")["success"]

    assert probe(sys.argv[1])
""")


def encodings(value: str) -> list[bytes]:
    """``value`` as it would appear if leaked verbatim or encoded: base64 (standard and URL-safe, at each of the
    three alignments it can have inside a longer encoded blob, e.g. a basic-auth header), percent-encoded, hex."""
    raw = value.encode()
    forms = {raw, raw.hex().encode(), *(quote(value, safe=safe).encode() for quote in
                                        (urllib.parse.quote, urllib.parse.quote_plus) for safe in ("", "/"))}
    for encode in (base64.b64encode, base64.urlsafe_b64encode):
        for shift in range(3):
            text = encode(b"\0" * shift + raw)
            # drop the characters that mix in the unknown neighbours: ceil(4 * shift / 3) at the start, and
            # the last group (padding or the next byte)
            forms.add(text[-(-4 * shift // 3): -4])
    return sorted(forms)


NEEDLES = {name: encodings(value) for name, value in SECRETS.items()}


def leaks_in(data: bytes) -> list[str]:
    return [name for name, forms in NEEDLES.items() if any(form in data for form in forms)]


def scan(roots: list[Path], texts: dict[str, str], blobs: dict[str, bytes] | None = None) -> list[str]:
    """Every (place, secret name) where a secret occurs in any of its forms: file bytes under ``roots``,
    captured texts and other blobs (S3 objects)."""
    found = []
    for root in roots:
        for path in root.rglob("*"):
            if path.is_file() and not path.is_symlink():
                found += [f"{path}: {name}" for name in leaks_in(path.read_bytes())]
    for where, data in {**{k: v.encode() for k, v in texts.items()}, **(blobs or {})}.items():
        found += [f"{where}: {name}" for name in leaks_in(data)]
    return found


def s3_objects(endpoint: str, bucket: str) -> dict[str, bytes]:
    import boto3

    client = boto3.client("s3", endpoint_url=endpoint)
    keys = [o["Key"] for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket)
            for o in page.get("Contents", [])]
    return {f"s3://{bucket}/{k}": k.encode() + b"\n" + client.get_object(Bucket=bucket, Key=k)["Body"].read()
            for k in keys}


@contextlib.contextmanager
def mlflow_server(root: Path):
    """``mlflow server`` on loopback (SQLite backend; clients write artifacts straight to S3)."""
    port = free_port()
    log = (root / "mlflow-server.log").open("wb")
    proc = subprocess.Popen(
        [str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{root / 'mlflow-server.db'}", "--default-artifact-root",
         str(root / "unused-artifacts")],
        stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if urllib.request.urlopen(f"{url}/health", timeout=2).status == 200:
                    break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"mlflow server did not start: {(root / 'mlflow-server.log').read_text()[-2000:]}")
            time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()


@pytest.mark.faults
@pytest.mark.integration
def test_secrets_in_the_environment_never_reach_files_or_logs(
    tiny_pipeline, tmp_path, repo_root, monkeypatch, caplog, capfd, s3_server, s3_bucket
):
    for name, value in SECRETS.items():  # the S3 server signs with these from now on
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server)  # boto3, s3fs and Ray's pyarrow filesystem
    monkeypatch.setenv("MLFLOW_S3_ENDPOINT_URL", s3_server)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "svgt-leak-check")
    ray_tmp = Path(tempfile.mkdtemp(prefix="r", dir="/tmp"))  # short: Ray's socket paths must fit 107 bytes
    monkeypatch.setenv("RAY_TMPDIR", str(ray_tmp))
    caplog.set_level(logging.DEBUG)
    params = yaml.safe_load((repo_root / "params.yaml").read_text())
    params["model"].update(d_v=16, encoder_heads=2, cross_attn_heads=2)
    params["train"]["ray"].update(num_workers=1, cpus_per_worker=1, storage_path=f"s3://{s3_bucket}/ray")
    params["train"]["stage1"].update(epochs=1, batch_size=8)
    try:
        with mlflow_server(tmp_path) as tracking_uri:
            params["registry"] = {"tracking_uri": tracking_uri, "model_name": "svgt-leak-check",
                                  "experiment": "svgt-leak-check"}
            (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
            loaded = load_params(tmp_path / "params.yaml")
            from svgt.training.step import train_stage

            metrics = train_stage(
                loaded,
                1,
                hidden_dir=tiny_pipeline / "hidden",
                data_path=tiny_pipeline / "values.parquet",
                backbone_dir=tiny_pipeline / "backbone",
                init_module=None,
                out_dir=tmp_path / "models/stage1",
                metrics_dir=tmp_path / "metrics",
                plots_dir=tmp_path / "plots",
            )
            assert metrics["epochs"] == 1
            stored = s3_objects(s3_server, s3_bucket)
            # Ray Train really kept its run state and checkpoints on S3 (train.ray.storage_path: s3://)
            assert any("/checkpoint_" in k and k.endswith("state.safetensors") for k in stored), sorted(stored)
            report = GateReport(passed=True,
                                results=[GateResult("min_stage2_auroc", 0.9, 0.7, True, False, "0.9 >= 0.7")])
            write_gate_report(report, tmp_path / "metrics/gates.json")
            # a careless params dict: a secret value in free text and a secret-named key
            logged = {
                **dataclasses.asdict(loaded),
                "notes": {"comment": f"uses {SECRETS['AWS_SECRET_ACCESS_KEY']}", "hub_token": SECRETS["HF_TOKEN"]},
            }
            version = register_module(
                tmp_path / "models/stage1",
                report,
                loaded.registry,
                params=logged,
                git_commit=None,
                artifact_location=f"s3://{s3_bucket}/mlartifacts",
            )
            assert version.version == 1
            client = mlflow_client(tracking_uri)
            stored_params = client.get_run(version.run_id).data.params
            assert stored_params["notes.comment"] == "uses ***" and stored_params["notes.hub_token"] == "***"
            downloaded = resolve_module_uri("models:/svgt-leak-check/1", tracking_uri)  # HTTP + S3 again
            assert (downloaded / "weights.safetensors").read_bytes() == (
                tmp_path / "models/stage1/weights.safetensors").read_bytes()
        assert (tmp_path / "mlflow-server.db").is_file()

        checkout = make_checkout(tmp_path / "checkout")
        (tmp_path / "flow.py").write_text(FLOW)
        env = {
            **os.environ,
            "PREFECT_HOME": str(tmp_path / "prefect-home"),
            "PYTHONPATH": str(REPO),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "PREFECT_SERVER_ALLOW_EPHEMERAL_MODE": "true",
            # a busy 2-core machine needs more than the default 20 s to start the ephemeral server
            "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180",
            "GX_ANALYTICS_ENABLED": "false",
            "HF_HUB_OFFLINE": "1",
        }
        env.pop("PREFECT_API_URL", None)
        flow = subprocess.run(
            [sys.executable, str(tmp_path / "flow.py"), str(checkout)],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert flow.returncode == 0, flow.stdout[-2000:] + flow.stderr[-3000:]
        assert list((tmp_path / "prefect-home").rglob("*.db")), "Prefect wrote no database to scan"

        out, err = capfd.readouterr()
        texts = {
            "log records": "\n".join(r.getMessage() for r in caplog.records),
            "stdout": out,
            "stderr": err,
            "flow output": flow.stdout + flow.stderr,
        }
        objects = s3_objects(s3_server, s3_bucket)
        assert any(k.endswith("weights.safetensors") and "/mlartifacts/" in k for k in objects)
        assert list(ray_tmp.rglob("*.log")) or list(ray_tmp.rglob("*.out")), "no Ray logs to scan"
        assert scan([tmp_path, ray_tmp], texts, objects) == []
        # the scan does see what it looks for: a file, an S3 object, base64 inside a header-like blob
        (tmp_path / "canary.bin").write_bytes(b"x" + SECRETS["HF_TOKEN"].encode())
        basic = base64.b64encode(f"svgt-leak-check:{SECRETS['MLFLOW_TRACKING_PASSWORD']}".encode())
        assert scan([tmp_path], {"header": "Authorization: Basic " + basic.decode()},
                    {"s3://b/k": b"k\n" + urllib.parse.quote(SECRETS["AWS_SECRET_ACCESS_KEY"]).encode()}) == [
            f"{tmp_path / 'canary.bin'}: HF_TOKEN", "header: MLFLOW_TRACKING_PASSWORD",
            "s3://b/k: AWS_SECRET_ACCESS_KEY"]
    finally:
        import shutil

        shutil.rmtree(ray_tmp, ignore_errors=True)


@pytest.mark.faults
def test_inline_url_credentials_are_refused_and_redacted(caplog):
    with pytest.raises(BackboneError) as info:
        parse_source("s3://AKIAINLINE:inlineSecret99@bucket/models/tiny")
    assert str(info.value).startswith(
        "backbone.source s3://***@bucket/models/tiny: credentials inside the URL are refused"
    )
    with pytest.raises(ValueError) as info:
        resolve_module_uri("s3://AKIAINLINE:inlineSecret99@bucket/modules/m")
    assert str(info.value).startswith("--module s3://***@bucket/modules/m: credentials inside the URL are refused")
    with pytest.raises(RegistryError) as info:
        mlflow_client("http://alice:inlineSecret99@mlflow.internal:5000")  # what register/promote/load all use
    assert str(info.value).startswith(
        "tracking URI http://***@mlflow.internal:5000: credentials inside the URI are "
        "refused; set MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD"
    )

    # an error text that carries a URL with credentials (e.g. from a library) is redacted in retry logs/errors
    def refused() -> None:
        raise ConnectionRefusedError(111, "cannot reach http://bob:inlineSecret99@minio:9000/bucket")

    with caplog.at_level(logging.WARNING, logger="svgt.core.retry"), pytest.raises(RetryError) as info:
        retry_call(
            refused,
            "reading s3://KEY:inlineSecret99@bucket/x",
            RetryPolicy(attempts=2, base_delay=0),
            sleep=lambda s: None,
        )
    assert "inlineSecret99" not in str(info.value) and "http://***@minio:9000/bucket" in str(info.value)
    assert caplog.records and all("inlineSecret99" not in r.getMessage() for r in caplog.records)
