"""Faults: `dvc repro` SIGKILLed in the middle of the extract stage, then rerun.

The scratch repository is test_dvc_pipeline's (a copy of this repo's dvc.yaml and code, a tiny random backbone,
60 local rows), with small shards so that extraction writes 15 files and can be caught halfway. The whole
process group (dvc and the `svgt extract` it runs) is SIGKILLed as soon as the first shard is in place, like a
machine that loses power. Nothing is mocked.

What happens (asserted):
* at the kill, every shard file under its final name is complete (shards are written to a temporary name and
  renamed), no ``index.json`` exists and dvc.lock has no entry for extract: nothing claims the stage finished;
* DVC's own run lock names a dead process, which DVC detects: the rerun needs no manual cleanup;
* the rerun (`dvc repro extract`) runs only extract (the stages before it were recorded as they finished),
  exits 0; `dvc status extract` (extract and everything upstream) is then clean, and every file of the outputs
  hashes to what dvc.lock and the cache's ``.dir`` listing record; no temporary file is left in them.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest
import yaml
from safetensors import safe_open

from tests.integration.test_dvc_pipeline import BIN, run, scratch_repo  # noqa: F401 (scratch_repo is a fixture)

pytestmark = [pytest.mark.faults, pytest.mark.integration]


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL dvc and every process it started (by pid)."""
    try:
        procs = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        procs = []
    for p in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    psutil.wait_procs(procs, timeout=30)


def lock_stages(repo: Path) -> dict:
    path = repo / "dvc.lock"
    return yaml.safe_load(path.read_text())["stages"] if path.exists() else {}


def check_outputs_match_lock(repo: Path, stage: str) -> None:
    """Each output of ``stage`` hashes to what dvc.lock records (directories: file by file, via the .dir)."""
    for out in lock_stages(repo)[stage]["outs"]:
        path = repo / out["path"]
        if out["md5"].endswith(".dir"):
            digest = out["md5"][: -len(".dir")]
            listing = json.loads((repo / ".dvc/cache/files/md5" / digest[:2] / (digest[2:] + ".dir")).read_text())
            assert sorted(e["relpath"] for e in listing) == sorted(
                str(p.relative_to(path)) for p in path.rglob("*") if p.is_file()
            ), f"{path}: files differ from the lock"
            for entry in listing:
                assert md5(path / entry["relpath"]) == entry["md5"], path / entry["relpath"]
        else:
            assert md5(path) == out["md5"], path


def test_dvc_repro_killed_mid_extract_then_rerun(scratch_repo):  # noqa: F811
    repo = scratch_repo
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["extract"]["shard_size"] = 4  # 60 rows -> 15 shards
    (repo / "params.yaml").write_text(yaml.safe_dump(params))
    env = {
        "PATH": f"{BIN}:/usr/bin:/bin",
        "HOME": str(repo),
        "HF_HUB_OFFLINE": "1",
        "GX_ANALYTICS_ENABLED": "false",
        "DVC_NO_ANALYTICS": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    hidden = repo / "data/hidden"

    log = open(repo.parent / "first.log", "w")  # noqa: SIM115 (closed below)
    first = subprocess.Popen(
        ["dvc", "repro", "extract"], cwd=repo, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    deadline = time.monotonic() + 300
    try:
        while not list(hidden.glob("*.safetensors")):
            assert first.poll() is None, (repo.parent / "first.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "extraction did not start within 300 s"
            time.sleep(0.02)
    finally:
        kill_group(first)
        log.close()

    # at the kill: complete shards only, no index, extract not recorded
    assert not (hidden / "index.json").exists(), "the kill came too late: extract had finished"
    shards = sorted(hidden.glob("*.safetensors"))
    assert 1 <= len(shards) < 15
    for shard in shards:
        with safe_open(shard, framework="pt") as f:  # a truncated file would not open
            assert f.metadata()["fingerprint"] and set(f.keys()) >= {"pooled", "prompt_states"}
    assert "extract" not in lock_stages(repo)
    assert {"ingest", "validate", "backbone"} <= set(lock_stages(repo))
    temporaries = [p.name for p in hidden.iterdir() if p.name.startswith(".")]  # a SIGKILL skips cleanup

    second = run(["dvc", "repro", "extract"], repo)
    assert second.returncode == 0, second.stdout[-2000:] + second.stderr[-3000:]
    assert "Running stage 'extract'" in second.stdout
    for done in ("ingest", "validate", "backbone"):  # ingest always runs; its output did not change
        assert f"Running stage '{done}'" not in second.stdout or done == "ingest"
    status = json.loads(run(["dvc", "status", "extract", "--json"], repo).stdout)  # extract and its upstream
    assert status == {}, status
    index = json.loads((hidden / "index.json").read_text())
    assert sum(index["splits"][s]["n"] for s in ("train", "val", "test")) == 60
    for stage in ("validate", "backbone", "extract"):
        check_outputs_match_lock(repo, stage)
    assert not [p.name for p in hidden.rglob(".*")], f"temporary files left (after the kill: {temporaries})"
