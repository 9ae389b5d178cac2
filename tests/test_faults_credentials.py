"""Credentials never leak: not into artifacts, params, metrics, logs, the MLflow database or Prefect's.

The environment carries distinctive fake secrets (AWS keys, the MLflow password and token, a Hugging Face
token, a Prefect API key) while a real slice of the pipeline runs: stage 1 trained as a Ray Train job on the
tiny pipeline, its gate report written, the module registered to MLflow on SQLite (with params that even
contain a secret value and a secret-named key, as a careless params file might), and the ingest/validate
Prefect tasks run in a flow against Prefect's ephemeral server with its own PREFECT_HOME. Then every file
written (the run directory, Ray's session logs, the MLflow database and artifacts, Prefect's database) and
every captured log line is searched for each secret. Nothing is mocked.

A second test checks that URLs with inline credentials are refused with the credentials redacted in the
error (backbone.source, --module and the MLflow tracking URI), and that retry logs redact them too.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest
import yaml
from test_flows import make_checkout

from svgt.backbone.sources import BackboneError, parse_source
from svgt.config import load_params
from svgt.gates import GateReport, GateResult, write_gate_report
from svgt.registry import register_module
from svgt.registry_uri import RegistryError, mlflow_client, resolve_module_uri
from svgt.retry import RetryError, RetryPolicy, retry_call

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
REPO = Path(__file__).resolve().parents[1]

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


def scan(roots: list[Path], texts: dict[str, str]) -> list[str]:
    """Every (place, secret name) where a secret value occurs: file bytes under ``roots`` and captured texts."""
    found = []
    needles = {name: value.encode() for name, value in SECRETS.items()}
    for root in roots:
        for path in root.rglob("*"):
            if path.is_file() and not path.is_symlink():
                data = path.read_bytes()
                found += [f"{path}: {name}" for name, needle in needles.items() if needle in data]
    for where, text in texts.items():
        found += [f"{where}: {name}" for name, value in SECRETS.items() if value in text]
    return found


@pytest.mark.faults
@pytest.mark.integration
def test_secrets_in_the_environment_never_reach_files_or_logs(
    tiny_pipeline, tmp_path, repo_root, monkeypatch, caplog, capfd
):
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    ray_tmp = Path(tempfile.mkdtemp(prefix="r", dir="/tmp"))  # short: Ray's socket paths must fit 107 bytes
    monkeypatch.setenv("RAY_TMPDIR", str(ray_tmp))
    caplog.set_level(logging.DEBUG)
    params = yaml.safe_load((repo_root / "params.yaml").read_text())
    params["model"].update(d_v=16, encoder_heads=2, cross_attn_heads=2)
    params["train"]["ray"].update(num_workers=1, cpus_per_worker=1, storage_path=str(tmp_path / "ray"))
    params["train"]["stage1"].update(epochs=1, batch_size=8)
    params["registry"] = {
        "tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}",
        "model_name": "svgt-leak-check",
        "experiment": "svgt-leak-check",
    }
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    loaded = load_params(tmp_path / "params.yaml")
    try:
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
        report = GateReport(passed=True, results=[GateResult("min_stage2_auroc", 0.9, 0.7, True, False, "0.9 >= 0.7")])
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
            artifact_location=str(tmp_path / "mlartifacts"),
        )
        assert version.version == 1
        stored = mlflow_client(loaded.registry.tracking_uri).get_run(version.run_id).data.params
        assert stored["notes.comment"] == "uses ***" and stored["notes.hub_token"] == "***"

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
        assert (tmp_path / "mlflow.db").is_file() and list((tmp_path / "mlartifacts").rglob("weights.safetensors"))
        assert list(ray_tmp.rglob("*.log")) or list(ray_tmp.rglob("*.out")), "no Ray logs to scan"
        assert scan([tmp_path, ray_tmp], texts) == []
        (tmp_path / "canary.bin").write_bytes(b"x" + SECRETS["HF_TOKEN"].encode())  # the scan does see files
        assert scan([tmp_path], {}) == [f"{tmp_path / 'canary.bin'}: HF_TOKEN"]
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

    with caplog.at_level(logging.WARNING, logger="svgt.retry"), pytest.raises(RetryError) as info:
        retry_call(
            refused,
            "reading s3://KEY:inlineSecret99@bucket/x",
            RetryPolicy(attempts=2, base_delay=0),
            sleep=lambda s: None,
        )
    assert "inlineSecret99" not in str(info.value) and "http://***@minio:9000/bucket" in str(info.value)
    assert caplog.records and all("inlineSecret99" not in r.getMessage() for r in caplog.records)
