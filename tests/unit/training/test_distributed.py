"""Data parallelism: two real gloo processes take exactly the step one process takes on the whole batch.

Gradients are compared, not weights after Adam: Adam's update hardly depends on a gradient's scale, so a
per-worker mean (DDP's semantics) instead of the global batch's mean would pass a weights-only comparison.
"""

import json

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file, save_file

from svgt.backbone import load_snapshot
from svgt.backbone.runner import BlockRunner
from svgt.extract.store import HiddenStateStore
from svgt.training.distributed import global_means, sum_gradients
from svgt.training.stage3 import BehaviourObjective, load_targets
from svgt.training.stages import initial_module
from tests.unit.training.test_stage3 import stage2_module  # noqa: F401 (a fixture)

GLOBAL_BATCH = 6


def global_batch(job) -> list:
    """The tiny set's first train targets, ordered so that worker 0's slice (rows 0, 2, 4) holds the harmful
    ones: the slices then differ in what each mean divides by (harmful tokens for the CE, benign for the KL)."""
    store = HiddenStateStore(job.hidden_dir)
    tok = load_snapshot(job.backbone_dir)[1]
    targets = sorted(load_targets(store, pd.read_parquet(job.data_path), tok, "train", 64, GLOBAL_BATCH, 0),
                     key=lambda e: not e.harmful)
    half = len(targets) // 2
    return [e for pair in zip(targets[:half], targets[half:], strict=True) for e in pair]


def stage3_step(rank: int, world: int, job, out_dir: str, init_method: str) -> None:
    """One stage-3 training step's gradients on this worker's slice of the global batch (ran by each process)."""
    import torch.distributed as dist

    torch.set_num_threads(1)
    if world > 1:
        dist.init_process_group("gloo", init_method=init_method, rank=rank, world_size=world)
    store = HiddenStateStore(job.hidden_dir)
    model, tok, _ = load_snapshot(job.backbone_dir)
    module = initial_module(job, store)
    module.configure_stage(3)
    module.encoder.eval()
    module.discriminator.eval()
    targets = global_batch(job)
    objective = BehaviourObjective(module, BlockRunner(model), (0.5, 2.0, 0.1), benign_target="backbone")
    local, logged = global_means(objective.step_terms(targets[rank::world], True, 0))
    objective.step_totals(local, True, 0)["loss"].backward()
    trainable = [p for p in module.parameters() if p.requires_grad]
    sum_gradients(trainable)
    names = [n for n, p in module.named_parameters() if p.requires_grad]
    save_file({n: p.grad.contiguous() for n, p in zip(names, trainable, strict=True)}, f"{out_dir}/grads{rank}.st")
    with open(f"{out_dir}/logged{rank}.json", "w") as f:
        json.dump(objective.step_totals(logged, True, 0), f)
    if world > 1:
        dist.destroy_process_group()


def test_two_gloo_workers_take_the_one_worker_step(stage2_module, tmp_path):  # noqa: F811
    _, job = stage2_module
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir(), two.mkdir()
    stage3_step(0, 1, job, str(one), "")
    torch.multiprocessing.spawn(stage3_step, args=(2, job, str(two), f"file://{tmp_path}/rendezvous"), nprocs=2)

    # the test means something only if the slices differ in what the means divide by
    targets = global_batch(job)
    tokens = [sum(len(e.response_ids) for e in targets[r::2]) for r in range(2)]
    harmful_tokens = [sum(len(e.response_ids) for e in targets[r::2] if e.harmful) for r in range(2)]
    assert len(targets) == GLOBAL_BATCH and tokens[0] != tokens[1] and harmful_tokens[0] != harmful_tokens[1]

    expected = load_file(one / "grads0.st")
    assert any(g.abs().sum() > 0 for g in expected.values())
    for rank in range(2):  # every worker ends the step with the whole batch's gradient
        got = load_file(two / f"grads{rank}.st")
        assert got.keys() == expected.keys()
        for name, g in expected.items():
            torch.testing.assert_close(got[name], g, atol=1e-6, rtol=1e-4, msg=lambda m, n=name: f"{n}: {m}")
        # and logs the whole batch's losses
        logged = json.loads((two / f"logged{rank}.json").read_text())
        whole = json.loads((one / "logged0.json").read_text())
        assert logged.keys() == whole.keys() and {"ce", "kl", "inject_total", "loss"} <= logged.keys()
        for key, value in whole.items():
            assert logged[key] == pytest.approx(value, rel=1e-5, abs=1e-7), key
