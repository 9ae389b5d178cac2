"""Faults: the S3 endpoint unreachable for a while, or for good, while a backbone is read from s3://.

A real S3-compatible server (moto's, on loopback) is stopped and started again on the same port; moto keeps
its buckets in process memory, so what was uploaded is still there when it comes back. botocore's own retry
loop is switched off in the storage options (``max_attempts: 1``) so each of our attempts is one request and
the test sees svgt.core.retry's backoff, not botocore's.
"""

from __future__ import annotations

import logging
import socket

import boto3
import fsspec
import pytest
from moto.server import ThreadedMotoServer

from svgt.backbone import build_snapshot
from svgt.core.params import BackboneConfig
from svgt.core.retry import RetryError, RetryPolicy, is_connection_error, retry_call
from tests.tiny import save_tiny_model_dir

pytestmark = pytest.mark.faults


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def storage_options(endpoint: str) -> dict:
    return {
        "client_kwargs": {"endpoint_url": endpoint},
        "key": "testing",
        "secret": "testing",
        "config_kwargs": {"retries": {"max_attempts": 1}, "connect_timeout": 2, "read_timeout": 5},
    }


@pytest.fixture
def aws_env(monkeypatch):
    for key, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }.items():
        monkeypatch.setenv(key, value)


def test_backoff_delays_and_what_is_retried():
    sleeps: list[float] = []
    calls = {"n": 0}

    def flaky() -> str:
        calls["n"] += 1
        if calls["n"] < 4:
            raise ConnectionRefusedError(111, "Connection refused")
        return "ok"

    policy = RetryPolicy(attempts=5, base_delay=0.5, max_delay=1.5)
    assert retry_call(flaky, "reading s3://b/k", policy, sleep=sleeps.append) == "ok"
    assert sleeps == [0.5, 1.0, 1.5]  # doubling, capped at max_delay

    # a missing object is an answer, not an outage: no retry
    def missing() -> None:
        calls["n"] += 1
        raise FileNotFoundError("s3://b/k")

    calls["n"], sleeps[:] = 0, []
    with pytest.raises(FileNotFoundError):
        retry_call(missing, "reading s3://b/k", policy, sleep=sleeps.append)
    assert calls["n"] == 1 and sleeps == []

    # never comes back: the error names the operation (credentials redacted) and the attempts
    with pytest.raises(RetryError) as info:
        retry_call(
            lambda: (_ for _ in ()).throw(TimeoutError("timed out")),
            "reading s3://AKIA:SeCrEt@b/k",
            RetryPolicy(attempts=3, base_delay=0),
            sleep=sleeps.append,
        )
    assert str(info.value).startswith("reading s3://***@b/k: still failing after 3 attempts over ")
    assert "(TimeoutError: timed out)" in str(info.value) and "SeCrEt" not in str(info.value)
    assert is_connection_error(info.value)  # a caller (e.g. a Prefect task) may retry the whole step later
    assert not is_connection_error(OSError(28, "No space left on device"))


def test_policy_from_environment(monkeypatch):
    monkeypatch.setenv("SVGT_RETRY_ATTEMPTS", "7")
    monkeypatch.setenv("SVGT_RETRY_BASE_DELAY", "0.25")
    assert RetryPolicy.from_env() == RetryPolicy(attempts=7, base_delay=0.25, max_delay=30.0)
    monkeypatch.setenv("SVGT_RETRY_ATTEMPTS", "0")
    with pytest.raises(ValueError, match="retry attempts must be >= 1, got 0"):
        RetryPolicy.from_env()


@pytest.mark.integration  # starts its own S3 server
def test_s3_backbone_survives_an_outage_then_loads(tmp_path, aws_env, monkeypatch, caplog):
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket="outage")
    fs = fsspec.filesystem("s3", skip_instance_cache=True, **storage_options(endpoint))
    for f in save_tiny_model_dir(tmp_path / "tiny").iterdir():
        fs.put(str(f), f"outage/models/tiny/{f.name}")
    server.stop()  # the endpoint goes away...

    restarted = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)

    class ComesBackAfterTwoFailures(logging.Handler):
        """...and comes back while svgt waits after its 2nd failed attempt (deterministic, unlike a timer)."""

        def emit(self, record: logging.LogRecord) -> None:
            if "retrying in" in record.getMessage() and sum("retrying in" in m for m in messages) == 1:
                restarted.start()
            messages.append(record.getMessage())

    messages: list[str] = []
    handler = ComesBackAfterTwoFailures()
    logging.getLogger("svgt.core.retry").addHandler(handler)
    monkeypatch.setenv("SVGT_RETRY_ATTEMPTS", "6")
    monkeypatch.setenv("SVGT_RETRY_BASE_DELAY", "0.5")
    try:
        manifest = build_snapshot(
            BackboneConfig(source="s3://outage/models/tiny", cache_dir=str(tmp_path / "c")),
            tmp_path / "snap",
            storage_options=storage_options(endpoint),
        )
    finally:
        logging.getLogger("svgt.core.retry").removeHandler(handler)
        restarted.stop()
    assert len(messages) == 2  # two failed attempts, success on the third
    assert messages[0].startswith("listing s3://outage/models/tiny failed (EndpointConnectionError: ")
    assert messages[0].endswith("retrying in 0.5s (attempt 1/6)")
    assert messages[1].endswith("retrying in 1.0s (attempt 2/6)")
    assert manifest.num_layers == 4 and (tmp_path / "snap" / "model.safetensors").is_file()
    assert not list((tmp_path / "c").glob("svgt-backbone-*"))  # the scratch download is gone


@pytest.mark.integration  # starts its own S3 server
def test_s3_backbone_endpoint_never_returns(tmp_path, aws_env, monkeypatch):
    endpoint = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    monkeypatch.setenv("SVGT_RETRY_ATTEMPTS", "3")
    monkeypatch.setenv("SVGT_RETRY_BASE_DELAY", "0.1")
    (tmp_path / "c").mkdir()
    with pytest.raises(RetryError) as info:
        build_snapshot(
            BackboneConfig(source="s3://gone/models/tiny", cache_dir=str(tmp_path / "c")),
            tmp_path / "snap",
            storage_options=storage_options(endpoint),
        )
    message = str(info.value)
    assert message.startswith("listing s3://gone/models/tiny: still failing after 3 attempts over ")
    assert "EndpointConnectionError" in message and endpoint in message
    # nothing half-written: no snapshot, no scratch download, no temp dirs beside the destination
    assert not (tmp_path / "snap").exists()
    assert list((tmp_path / "c").iterdir()) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c"]


def test_download_retries_each_file_on_its_own_and_fails_at_once_when_denied(tmp_path, monkeypatch):
    """The remote-directory download (s3://, gs://, ...): a connection error on one file repeats that file
    only (the listing and the files already fetched are not redone); a denied request is an answer, not an
    outage, so it fails at once with the URL. The transport is fsspec's memory filesystem with injected
    errors (s3fs raises the same PermissionError for AccessDenied and OSErrors for dropped connections)."""
    import fsspec

    from svgt.backbone.sources import BackboneError, _download_dir

    fs = fsspec.filesystem("memory")
    for name in ("config.json", "model.safetensors", "tokenizer.json"):
        fs.pipe(f"/svgt-dl/{name}", name.encode())
    calls: list[str] = []
    original = type(fs).get
    failures = {"model.safetensors": [ConnectionResetError(104, "Connection reset by peer")] * 2}

    def flaky_get(self, rpath, lpath, **kwargs):
        name = rpath.rsplit("/", 1)[-1]
        calls.append(name)
        if failures.get(name):
            raise failures[name].pop(0)
        return original(self, rpath, lpath, **kwargs)

    monkeypatch.setattr(type(fs), "get", flaky_get)
    policy = RetryPolicy(attempts=3, base_delay=0)
    _download_dir("memory://svgt-dl", tmp_path / "ok", {}, policy)
    assert sorted(p.name for p in (tmp_path / "ok").iterdir()) == ["config.json", "model.safetensors",
                                                                  "tokenizer.json"]
    assert calls.count("model.safetensors") == 3 and calls.count("config.json") == calls.count("tokenizer.json") == 1

    calls.clear()
    failures["model.safetensors"] = [PermissionError(13, "Access Denied")]
    with pytest.raises(BackboneError, match=r"^backbone.source memory://svgt-dl: cannot download model.safetensors "
                                            r"\(\[Errno 13\] Access Denied\)$"):
        _download_dir("memory://svgt-dl", tmp_path / "denied", {}, policy)
    assert calls.count("model.safetensors") == 1  # no second try
    with pytest.raises(BackboneError, match="memory://nothing-here: no files found"):
        _download_dir("memory://nothing-here", tmp_path / "empty", {}, policy)
