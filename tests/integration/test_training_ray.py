"""Integration: curriculum stages as real Ray Train jobs on a local Ray (CPU)."""

import dataclasses
import json
import os

import numpy as np
import pandas as pd
import pytest
import torch

from svgt.core.params import RayConfig, Stage1Config, TrainConfig
from svgt.extract.store import HiddenStateStore
from svgt.model import load_value_module
from svgt.training.data import load_stage_examples
from svgt.training.job import job_from_params
from svgt.training.ray_runner import run_stage
from svgt.training.stages import score_examples
from tests.unit.training.test_stage3 import MODEL as STAGE3_MODEL
from tests.unit.training.test_stage3 import TRAIN as STAGE3_TRAIN
from tests.unit.training.test_stage3 import stage2_module  # noqa: F401 (a fixture)
from tests.unit.training.test_training import MODEL, TRAIN

pytestmark = pytest.mark.integration


def ray_job(root, storage, train=TRAIN, workers=1, stage=1, model=MODEL, init=None):
    train = TrainConfig(**{**train.__dict__, "ray": RayConfig(num_workers=workers, cpus_per_worker=1,
                                                               storage_path=str(storage), max_failures=2)})
    return job_from_params(stage, model, train, hidden_dir=str(root / "hidden"),
                           data_path=str(root / "values.parquet"), backbone_dir=str(root / "backbone"),
                           init_module=str(init) if init else None)


# no dropout: with it, one worker and two draw different masks for the same rows (same seed, other shapes)
NO_DROPOUT = dataclasses.replace(MODEL, dropout=0.0, attention_dropout=0.0)


def assert_same_weights(a, b):
    """Equal to float tolerance: a sum split between workers rounds differently, and Adam scales a gradient
    that is zero in theory (the attention keys' bias: softmax ignores a shift) and float noise in practice up
    to a step of ~lr. A missed gradient sum, a wrong batch or a lost step moves weights by whole steps (3e-3)."""
    for (k, x), y in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        torch.testing.assert_close(x, y, atol=1e-3, rtol=0, msg=lambda m, k=k: f"{k}: {m}")


@pytest.mark.faults
def test_stage1_on_two_workers_equals_one_and_a_killed_worker_resumes(tiny_pipeline, tmp_path, monkeypatch):
    train = TrainConfig(checkpoint_every=2, stage1=Stage1Config(epochs=2, batch_size=8, lr=3e-3))
    job = ray_job(tiny_pipeline, tmp_path / "ray", train, workers=2, model=NO_DROPOUT)
    marker = tmp_path / "killed"
    # a worker process dies hard at step 5; Ray Train restarts the worker group from the latest checkpoint the
    # controller registered: step 4, or step 2 when the worker died before the controller collected the step-4
    # report
    monkeypatch.setenv("SVGT_FAULT_KILL_AT_STEP", f"5:{marker}")
    outcome = run_stage(job, fingerprint="test")
    assert marker.exists()  # the kill really happened
    assert [h["epoch"] for h in outcome.history] == [1, 2]
    # the restarted workers picked up at a checkpoint (a restart from scratch would also end with the same
    # weights, so only this says the checkpoint was used)
    assert outcome.history[0].get("resumed_from_step") in (2, 4) and "resumed_from_step" not in outcome.history[1]
    assert outcome.module.config.layer == 2

    # one worker on the same global batches, never killed: the same weights (each step's gradient is the
    # global batch's on both) and the same curve (the logged losses are global-batch means too)
    monkeypatch.delenv("SVGT_FAULT_KILL_AT_STEP")
    one = run_stage(ray_job(tiny_pipeline, tmp_path / "ray1", train, workers=1, model=NO_DROPOUT),
                    fingerprint="test")
    assert_same_weights(outcome.module, one.module)
    val = load_stage_examples(HiddenStateStore(job.hidden_dir), pd.read_parquet(job.data_path), "stage1", "val", 128)
    assert len(val) == 18
    np.testing.assert_allclose(score_examples(outcome.module, val), score_examples(one.module, val), atol=1e-4)
    for resumed, clean in zip(outcome.history, one.history, strict=True):
        assert resumed["step"] == clean["step"]
        for key in ("train_loss", "val_auroc", "val_accuracy"):
            assert resumed[key] == pytest.approx(clean[key], abs=1e-5), key


def test_stage3_on_two_workers_equals_one(tiny_pipeline, stage2_module, tmp_path):  # noqa: F811
    m2, _ = stage2_module
    train = dataclasses.replace(STAGE3_TRAIN, stage3=dataclasses.replace(
        STAGE3_TRAIN.stage3, epochs=2, batch_size=4, max_train_rows=12, benign_target="backbone"))
    # the stage-2 module's dropout is in the frozen encoder, which stage 3 runs in eval mode
    runs = [run_stage(ray_job(tiny_pipeline, tmp_path / f"ray{n}", train, workers=n, stage=3,
                              model=STAGE3_MODEL, init=m2), fingerprint="test") for n in (2, 1)]
    two, one = runs
    assert [h["step"] for h in two.history] == [h["step"] for h in one.history] == [3, 6]
    assert_same_weights(two.module, one.module)
    moved = [k for k, v in two.module.state_dict().items()
             if k.startswith("bridge.") and not torch.equal(v, load_value_module(m2)[0].state_dict()[k])]
    assert moved  # the bridge trained (equal weights are not two untouched copies)
    for key in ("train_total", "train_ce", "train_kl", "train_safety", "train_inject_total", "val_total"):
        assert two.history[-1][key] == pytest.approx(one.history[-1][key], abs=1e-5), key


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
    # the exported folder is a Hugging Face-style module with its model card
    from svgt.model import ValueModule

    again = ValueModule.from_pretrained(tmp_path / "m2", expected_backbone_sha256=meta["backbone_weights_sha256"])
    assert again.metadata == meta
    card = (tmp_path / "m2" / "README.md").read_text()
    assert "curriculum stage 2" in card and "| `test_pair_auroc` |" in card
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
