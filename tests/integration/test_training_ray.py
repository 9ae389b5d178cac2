"""Integration: curriculum stages as real Ray Train jobs on a local Ray (CPU)."""

import json
import os

import pytest
import torch

from svgt.core.params import RayConfig, Stage1Config, TrainConfig
from svgt.model import load_value_module
from svgt.training.job import job_from_params
from svgt.training.ray_runner import run_stage
from tests.unit.training.test_training import MODEL, TRAIN

pytestmark = pytest.mark.integration


def ray_job(root, storage, train=TRAIN):
    train = TrainConfig(**{**train.__dict__, "ray": RayConfig(num_workers=1, cpus_per_worker=1,
                                                               storage_path=str(storage), max_failures=2)})
    return job_from_params(1, MODEL, train, hidden_dir=str(root / "hidden"), data_path=str(root / "values.parquet"),
                           backbone_dir=str(root / "backbone"), init_module=None)


@pytest.mark.faults
def test_stage1_on_ray_train_and_killed_worker_resumes(tiny_pipeline, tmp_path, monkeypatch):
    job = ray_job(tiny_pipeline, tmp_path / "ray", TrainConfig(checkpoint_every=2,
                                                               stage1=Stage1Config(epochs=2, batch_size=8, lr=3e-3)))
    marker = tmp_path / "killed"
    # the worker process dies hard at step 5; Ray Train restarts it from the latest checkpoint the controller
    # registered: step 4, or step 2 when the worker died before the controller collected the step-4 report
    monkeypatch.setenv("SVGT_FAULT_KILL_AT_STEP", f"5:{marker}")
    outcome = run_stage(job, fingerprint="test")
    assert marker.exists()  # the kill really happened
    assert [h["epoch"] for h in outcome.history] == [1, 2]
    # the restarted worker picked up at a checkpoint (a restart from scratch would also end with the same
    # weights, so only this says the checkpoint was used)
    assert outcome.history[0].get("resumed_from_step") in (2, 4) and "resumed_from_step" not in outcome.history[1]
    assert outcome.module.config.layer == 2

    # the same job without the kill gives the same weights (resume lost nothing and redid nothing)
    monkeypatch.delenv("SVGT_FAULT_KILL_AT_STEP")
    clean = run_stage(ray_job(tiny_pipeline, tmp_path / "ray2", job.train_config), fingerprint="test")
    for (k, a), b in zip(outcome.module.state_dict().items(), clean.module.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0, msg=k)
    # and the same curve: the resumed epoch's train loss counts the batches before the kill too
    resumed = [{k: v for k, v in h.items() if k != "resumed_from_step"} for h in outcome.history]
    assert resumed == clean.history


def test_train_cli_exports_module_and_metrics(tiny_pipeline, tmp_path, repo_root, caplog, capfd):
    import yaml

    from svgt.cli import main

    params = yaml.safe_load((repo_root / "params.yaml").read_text())
    params["model"].update(d_v=16, encoder_heads=2, cross_attn_heads=2)
    params["train"]["ray"].update(cpus_per_worker=1, storage_path=str(tmp_path / "ray"))
    params["train"]["stage1"].update(epochs=2, batch_size=8)
    params["train"]["stage2"].update(epochs=1, batch_size=8)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    common = ["--params", str(tmp_path / "params.yaml"), "train", "--backbone", str(tiny_pipeline / "backbone"),
              "--data", str(tiny_pipeline / "values.parquet"), "--hidden", str(tiny_pipeline / "hidden"),
              "--metrics", str(tmp_path / "metrics"), "--plots", str(tmp_path / "plots")]
    assert main([*common, "--stage", "1", "--out", str(tmp_path / "m1")]) == 0
    assert main([*common, "--stage", "2", "--init", str(tmp_path / "m1"), "--out", str(tmp_path / "m2")]) == 0
    # a run that succeeds prints nothing alarming: no state-API warnings from Ray Train's placement-group cleaner
    # (the local Ray has its dashboard), no notice that token authentication is on (it is, as it should be)
    printed = "".join(capfd.readouterr())
    assert "Failed to query Ray Train Controller actor state" not in printed
    assert "Token authentication is enabled" not in printed
    assert "PreemptionWatcher" not in printed  # Ray core logs its actor at error level; one machine needs none
    m2 = json.loads((tmp_path / "metrics/stage2.json").read_text())
    for key in ("test_pair_auroc", "test_pair_stage1_auroc", "test_pair_f1", "train_seconds"):
        assert key in m2
    assert (tmp_path / "plots/stage1.csv").read_text().startswith("epoch,") or "epoch" in (
        tmp_path / "plots/stage1.csv").read_text().splitlines()[0]
    module, meta = load_value_module(tmp_path / "m2")
    assert meta["stage"] == 2 and meta["layer"] == 2 and len(meta["history"]) == 1
    # the module directory records no timings and no absolute paths: rerunning the stage on the same inputs
    # writes the same bytes, so DVC reruns nothing downstream
    assert "train_seconds" not in meta["metrics"] and (tmp_path / "ray" / meta["ray_run"]).is_dir()
    meta1 = load_value_module(tmp_path / "m1")[1]
    with caplog.at_level("INFO", logger="svgt.training.ray_runner"):
        assert main([*common, "--stage", "1", "--out", str(tmp_path / "m1-again")]) == 0
    assert f"Ray Train run {meta1['ray_run']} already exists under {tmp_path / 'ray'}: resuming" in caplog.text
    for name in ("config.json", "weights.safetensors", "manifest.json"):
        assert (tmp_path / "m1-again" / name).read_bytes() == (tmp_path / "m1" / name).read_bytes(), name
    # an independent retrain: another process (another hash seed), another Ray storage, nothing to resume
    import subprocess
    import sys

    params["train"]["ray"]["storage_path"] = str(tmp_path / "ray-independent")
    (tmp_path / "params-b.yaml").write_text(yaml.safe_dump(params))
    argv = [a if a != str(tmp_path / "params.yaml") else str(tmp_path / "params-b.yaml") for a in common]
    subprocess.run([sys.executable, "-m", "svgt", *argv, "--stage", "1", "--out", str(tmp_path / "m1-b")],
                   check=True, capture_output=True, env={**os.environ, "PYTHONHASHSEED": "12345"})
    assert not (tmp_path / "ray").samefile(tmp_path / "ray-independent")
    for name in ("config.json", "weights.safetensors", "manifest.json"):
        assert (tmp_path / "m1-b" / name).read_bytes() == (tmp_path / "m1" / name).read_bytes(), name
    assert os.path.exists(tmp_path / "m2" / "weights.safetensors")
    assert main([*common, "--stage", "2", "--out", str(tmp_path / "m3")]) == 1  # no --init: clear error
