"""Integration: the real DVC pipeline up to `extract` on a tiny backbone and a small local dataset.

Runs `dvc repro` in a scratch git repository holding a copy of this repo's dvc.yaml and code, with
params pointing at a tiny random model and a local JSONL file. Checks the validation gate stops the
pipeline on bad data and leaves downstream outputs untouched.
"""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.tiny import canonical_frame, save_tiny_model_dir

pytestmark = pytest.mark.integration

BIN = Path(sys.executable).parent


def run(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {"PATH": f"{BIN}:/usr/bin:/bin", "HOME": str(cwd), "HF_HUB_OFFLINE": "1",
           "GX_ANALYTICS_ENABLED": "false", "DVC_NO_ANALYTICS": "1", "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=env, timeout=600)


def write_rows(path: Path, frame) -> None:
    path.write_text("".join(json.dumps({k: (None if v != v else v) for k, v in row.items()}) + "\n"
                            for row in frame.astype(object).to_dict(orient="records")))


@pytest.fixture
def scratch_repo(tmp_path, repo_root):
    repo = tmp_path / "repo"
    repo.mkdir()
    shutil.copytree(repo_root / "svgt", repo / "svgt", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(repo_root / "dvc.yaml", repo / "dvc.yaml")
    params = yaml.safe_load((repo_root / "params.yaml").read_text())
    params["backbone"]["source"] = str(save_tiny_model_dir(tmp_path / "tiny-model"))
    params["data"]["sources"] = [{"path": str(tmp_path / "values.jsonl"), "adapter": "canonical"}]
    params["validate"].update(min_rows=30, stage1={"min_rows": 10, "min_class_fraction": 0.2},
                              stage2={"min_rows": 5, "min_class_fraction": 0.0},
                              stage3={"min_rows": 5, "min_class_fraction": 0.0})
    params["extract"]["shard_size"] = 16
    (repo / "params.yaml").write_text(yaml.safe_dump(params))
    write_rows(tmp_path / "values.jsonl", canonical_frame(60).drop(columns=["split"]))
    for cmd in (["git", "init", "-q"], ["dvc", "init", "-q"]):
        assert run(cmd, repo).returncode == 0
    return repo


@pytest.mark.faults
def test_dvc_repro_extract_and_validation_gate(scratch_repo, tmp_path):
    first = run(["dvc", "repro", "extract"], scratch_repo)
    assert first.returncode == 0, first.stderr[-3000:]
    index = json.loads((scratch_repo / "data/hidden/index.json").read_text())
    assert index["layer"] == 1 and sum(index["splits"][s]["n"] for s in ("train", "val", "test")) == 60
    assert (scratch_repo / "reports/validation/validation_summary.json").exists()
    assert (scratch_repo / "metrics/extract.json").exists()
    assert "Stage 'extract' didn't change" in run(["dvc", "repro", "extract"], scratch_repo).stdout

    before = (scratch_repo / "data/hidden/index.json").read_bytes()

    # data the adapters already refuse (a whitespace-only prompt): ingest stops the pipeline
    frame = canonical_frame(60).drop(columns=["split"])
    frame.loc[7, "prompt"] = "   "
    write_rows(tmp_path / "values.jsonl", frame)
    second = run(["dvc", "repro", "extract"], scratch_repo)
    assert second.returncode != 0
    assert "svgt ingest" in second.stderr and "column 'prompt'" in second.stderr
    assert (scratch_repo / "data/hidden/index.json").read_bytes() == before

    # well-formed rows that fail the gate (stage 1 has a single class): validate stops the pipeline
    frame = canonical_frame(60).drop(columns=["split"])
    frame["prompt_harmful"] = 0
    write_rows(tmp_path / "values.jsonl", frame)
    third = run(["dvc", "repro", "extract"], scratch_repo)
    assert third.returncode != 0
    assert "validation of data/values/values.parquet failed" in third.stderr
    assert "stage1" in third.stderr and "prompt_harmful" in third.stderr
    assert (scratch_repo / "data/hidden/index.json").read_bytes() == before
    summary = json.loads((scratch_repo / "reports/validation/validation_summary.json").read_text())
    assert summary["success"] is False
    assert (scratch_repo / "reports/validation/data_docs/index.html").exists()


def _committed_placeholder_repo(tmp_path: Path, repo_root: Path) -> Path:
    """A copy of svgt/, dvc.yaml, params.yaml and .dvcignore with every stage recorded as up to date
    (`dvc commit` over placeholder outputs, so nothing is trained)."""
    repo = tmp_path / "repo"
    repo.mkdir()
    shutil.copytree(repo_root / "svgt", repo / "svgt", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("dvc.yaml", "params.yaml", ".dvcignore"):
        shutil.copy(repo_root / name, repo / name)
    stages = yaml.safe_load((repo / "dvc.yaml").read_text())["stages"]
    for stage in stages.values():
        for entry in [*stage.get("deps", []), *stage.get("outs", []), *stage.get("metrics", []),
                      *stage.get("plots", [])]:
            path = repo / (next(iter(entry)) if isinstance(entry, dict) else entry)
            if not path.exists():
                target = path / "placeholder" if "." not in path.name else path
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text("placeholder")
    for cmd in (["git", "init", "-q"], ["dvc", "init", "-q"], ["dvc", "commit", "-f", "-q"]):
        assert run(cmd, repo).returncode == 0
    status = json.loads(run(["dvc", "status", "--json"], repo).stdout)
    assert set(status) == {"ingest"}  # ingest always re-reads its sources; everything else is up to date
    return repo


@pytest.mark.parametrize(("key", "old", "new", "changed"), [
    ("train.stage3.lr", 2.0e-3, 1.0e-3, {"stage3"}),
    ("train.stage3.benign_target", "backbone", "dataset", {"stage3"}),
    ("train.stage1.epochs", 4, 5, {"stage1"}),
    ("extract.batch_size", 8, 4, {"extract"}),
    ("evaluate.max_new_tokens", 24, 32, {"evaluate"}),
    ("gates.min_stage2_auroc", 0.7, 0.8, {"register"}),
    ("baselines.iti.max_kl", 0.1, 0.2, {"baselines"}),
    ("model.d_v", 128, 64, {"stage1", "stage2", "stage3"}),
])
def test_a_param_change_invalidates_exactly_the_stages_that_read_it(tmp_path, repo_root, key, old, new, changed):
    """Real DVC on the real dvc.yaml: record every stage as up to date, change one param, and ask
    `dvc status` what changed. Stages further down then rerun only if the changed stage's outputs change."""
    repo = _committed_placeholder_repo(tmp_path, repo_root)
    params = yaml.safe_load((repo / "params.yaml").read_text())
    node = params
    *parents, leaf = key.split(".")
    for part in parents:
        node = node[part]
    assert node[leaf] == old
    node[leaf] = new
    (repo / "params.yaml").write_text(yaml.safe_dump(params))
    status = json.loads(run(["dvc", "status", "--json"], repo).stdout)
    assert set(status) - {"ingest"} == changed


def test_python_bytecode_next_to_the_code_changes_no_stage(tmp_path, repo_root):
    """Running svgt or the tests from a checkout writes __pycache__/*.pyc into svgt/ (unless
    PYTHONDONTWRITEBYTECODE is set); .dvcignore must keep that from invalidating every stage."""
    repo = _committed_placeholder_repo(tmp_path, repo_root)
    for package in ("backbone", "training", "eval"):
        cache = repo / "svgt" / package / "__pycache__"
        cache.mkdir(exist_ok=True)
        (cache / "runner.cpython-311.pyc").write_bytes(b"\xa7\r\r\n bytecode")
    status = json.loads(run(["dvc", "status", "--json"], repo).stdout)
    assert set(status) == {"ingest"}


def test_dvc_s3_remote_push_and_pull(tmp_path, s3_server, s3_bucket):
    """The S3 remote of infra/dvc-remote-s3.md against a real S3-compatible server on loopback (moto)."""
    import os

    repo = tmp_path / "repo"
    repo.mkdir()
    env = {"PATH": f"{BIN}:/usr/bin:/bin", "HOME": str(repo), "DVC_NO_ANALYTICS": "1",
           **{k: os.environ[k] for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")}}

    def dvc(*args: str) -> subprocess.CompletedProcess:
        out = subprocess.run(["dvc", *args], cwd=repo, capture_output=True, text=True, env=env, timeout=120)
        assert out.returncode == 0, out.stderr[-2000:]
        return out

    assert subprocess.run(["git", "init", "-q"], cwd=repo).returncode == 0
    dvc("init", "-q")
    dvc("remote", "add", "-d", "storage", f"s3://{s3_bucket}/dvc")
    dvc("remote", "modify", "storage", "endpointurl", s3_server)
    data = repo / "data" / "values.parquet"
    data.parent.mkdir()
    data.write_bytes(b"canonical rows" * 1000)
    dvc("add", "data/values.parquet")
    dvc("push")
    assert "secret" not in (repo / ".dvc" / "config").read_text().lower()  # credentials stay in the environment
    shutil.rmtree(repo / ".dvc" / "cache")
    data.unlink()
    dvc("pull")
    assert data.read_bytes() == b"canonical rows" * 1000
