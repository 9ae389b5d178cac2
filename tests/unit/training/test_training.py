import dataclasses

import pytest
import torch

from svgt.core.params import ModelConfig, Stage1Config, Stage2Config, TrainConfig
from svgt.eval.metrics import discrimination_metrics
from svgt.model import save_value_module
from svgt.training.distributed import MeanTerm, epoch_batches, global_means, rank_batches
from svgt.training.job import job_from_params
from svgt.training.loop import LocalSession
from svgt.training.losses import safety_loss
from svgt.training.stages import discrimination_stage, optimizer_for_stage

MODEL = ModelConfig(d_v=16, encoder_heads=2, cross_attn_heads=2, num_bridge_tokens=3, dropout=0.1)
TRAIN = TrainConfig(checkpoint_every=3, stage1=Stage1Config(epochs=3, batch_size=8, lr=3e-3),
                    stage2=Stage2Config(epochs=2, batch_size=8))


EPOCHS = 8


def job(root, stage=1, init=None, train=TRAIN):
    return job_from_params(stage, MODEL, train, hidden_dir=str(root / "hidden"), data_path=str(root / "values.parquet"),
                           backbone_dir=str(root / "backbone"), init_module=str(init) if init else None)


def test_metrics_known_values():
    m = discrimination_metrics([0, 0, 1, 1], [-2.0, 0.5, 1.0, 3.0])
    assert m["accuracy"] == 0.75 and m["auroc"] == 1.0 and m["f1"] == pytest.approx(0.8)
    assert m["n"] == 4 and m["positives"] == 2


def test_safety_loss_values():
    s = torch.tensor([-10.0, 0.0, 1.0])
    expected = (torch.nn.functional.softplus(s) + 2 * torch.relu(s)).mean()
    assert safety_loss(s).item() == pytest.approx(expected.item())
    assert safety_loss(torch.tensor([2.0])).item() > 3 * safety_loss(torch.tensor([-2.0])).item()


def test_workers_split_every_global_batch_between_them():
    items = list(range(11))
    whole = epoch_batches(items, 4, seed=7, epoch=1)
    assert [len(b) for b in whole] == [4, 4, 3] and sorted(sum(whole, [])) == items
    assert whole != epoch_batches(items, 4, seed=7, epoch=2)  # reshuffled every epoch
    slices = [rank_batches(items, 4, 7, 1, rank, 2) for rank in range(2)]
    # each global batch is split between the two workers: together they hold exactly its rows
    for step, batch in enumerate(whole):
        assert sorted(slices[0][step] + slices[1][step]) == sorted(batch)
        assert abs(len(slices[0][step]) - len(slices[1][step])) <= 1
    assert rank_batches(items, 4, 7, 1, 0, 1) == whole
    # with 3 workers the final 3-row batch still gives every worker a row; with 4 it is dropped: every worker
    # must take every step
    assert len(rank_batches(items, 4, 7, 1, 2, 3)) == 3
    assert [len(rank_batches(items, 4, 7, 1, r, 4)) for r in range(4)] == [2, 2, 2, 2]


def test_mean_terms_of_two_slices_add_up_to_the_mean_of_the_whole():
    values = torch.tensor([1.0, 2.0, 3.0, 4.0, 10.0])
    weights = torch.tensor([1.0, 0.0, 1.0, 1.0, 0.5])
    whole = MeanTerm.of(values, weights)
    assert whole.mean().item() == pytest.approx((1 + 3 + 4 + 5) / 3.5)
    # a worker's share: its slice's sum over the global count (what global_means gives each worker)
    parts = [MeanTerm.of(values[:2], weights[:2]), MeanTerm.of(values[2:], weights[2:])]
    assert sum(p.mean(whole.count) for p in parts).item() == pytest.approx(whole.mean().item())
    assert MeanTerm.of(values[:0]).mean().item() == 0.0  # an empty term is 0, not NaN
    local, logged = global_means({"loss": whole})  # one worker: the plain mean
    assert local["loss"].item() == logged["loss"] == pytest.approx(whole.mean().item())


def test_stage1_learns_and_reports_each_epoch(tiny_pipeline, tmp_path):
    session = LocalSession(tmp_path / "ckpt")
    train = dataclasses.replace(TRAIN, stage1=Stage1Config(epochs=EPOCHS, batch_size=8, lr=3e-3))
    module = discrimination_stage(job(tiny_pipeline, train=train), session, progress_bar=False)
    epochs = [r for r in session.reports if "val_auroc" in r]
    assert [r["epoch"] for r in epochs] == list(range(1, EPOCHS + 1))
    assert epochs[-1]["train_loss"] < epochs[0]["train_loss"]
    # the tiny dataset's prompts are separable by construction (the harmful ones start with an attack
    # request): the ranking gets there (a constant score has AUROC 0.5). Accuracy at s > 0 stays at the
    # all-benign 0.667 on this tiny set (the asymmetric safety loss keeps scores low), which is why the gate's
    # threshold is calibrated rather than 0
    assert epochs[-1]["val_auroc"] > 0.9
    assert module.config.layer == 2 and module.config.hidden_size == 32


@pytest.mark.faults
def test_stage_resumes_from_last_checkpoint_exactly(tiny_pipeline, tmp_path):
    first = LocalSession(tmp_path / "a")
    straight = discrimination_stage(job(tiny_pipeline), first, progress_bar=False)

    # interrupt a second run at its 11th optimizer step (checkpoints every 3 steps and at each epoch end, 7
    # steps an epoch): it resumes from step 9, in the middle of epoch 2
    import svgt.training.stages as stages

    calls = {"n": 0}
    original = stages.discrimination_loss

    def failing_loss(s, y, *args):
        calls["n"] += 1
        if calls["n"] == 11:
            raise RuntimeError("worker killed")
        return original(s, y, *args)

    stages.discrimination_loss = failing_loss
    try:
        with pytest.raises(RuntimeError, match="worker killed"):
            discrimination_stage(job(tiny_pipeline), LocalSession(tmp_path / "b"), progress_bar=False)
    finally:
        stages.discrimination_loss = original
    session = LocalSession(tmp_path / "b")
    assert session.latest_checkpoint() is not None
    import json

    resumed_from = json.loads((session.latest_checkpoint() / "state.json").read_text())["progress"]["step"]
    assert resumed_from == 9
    # the resumed run takes only the steps that remain: a restart from scratch would redo all of them and
    # (being deterministic) still end with the same weights, so equal weights alone prove nothing
    steps = {"n": 0}

    def counting_loss(s, y, *args):
        steps["n"] += 1
        return original(s, y, *args)

    stages.discrimination_loss = counting_loss
    try:
        resumed = discrimination_stage(job(tiny_pipeline), session, progress_bar=False)
    finally:
        stages.discrimination_loss = original
    history = [r for r in session.reports if "val_auroc" in r]  # the epochs this attempt finished
    assert history[-1]["step"] == 21 and steps["n"] == 21 - resumed_from  # 12 steps, not 21
    assert history[0]["resumed_from_step"] == resumed_from  # and the curve says where it picked up
    assert all("resumed_from_step" not in r for r in history[1:])
    for (k, a), b in zip(straight.state_dict().items(), resumed.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0, msg=k)
    # the resumed epoch's means count the batches trained before the interruption too
    clean = [r for r in first.reports if "val_auroc" in r]
    assert [{k: v for k, v in r.items() if k != "resumed_from_step"} for r in history] == clean[1:]


def test_stage2_uses_asymmetric_learning_rates_and_trains_only_encoder(tiny_pipeline, tmp_path):
    stage1 = discrimination_stage(job(tiny_pipeline), LocalSession(tmp_path / "s1"), progress_bar=False)
    from svgt.extract.store import HiddenStateStore

    sha = HiddenStateStore(tiny_pipeline / "hidden").index["backbone"]["weights_sha256"]
    save_value_module(stage1, tmp_path / "m1", {"backbone_weights_sha256": sha})
    j2 = job(tiny_pipeline, stage=2, init=tmp_path / "m1")
    from svgt.training.stages import initial_module

    module = initial_module(j2, HiddenStateStore(tiny_pipeline / "hidden"))
    opt = optimizer_for_stage(module, j2)
    lrs = {g["name"]: g["lr"] for g in opt.param_groups}
    assert lrs == {"new": 5e-4, "old": 1e-5}
    new_ids = {id(p) for p in opt.param_groups[0]["params"]}
    assert new_ids == {id(p) for p in module.encoder.conditional_parameters()}
    assert all(not p.requires_grad for p in module.bridge.parameters())

    before = {k: v.clone() for k, v in module.state_dict().items()}
    trained = discrimination_stage(j2, LocalSession(tmp_path / "s2"), progress_bar=False)
    after = trained.state_dict()
    moved = {k for k in before if not torch.equal(before[k], after[k])}
    assert any(k.startswith("encoder.") for k in moved)
    assert not any(k.startswith(("bridge.", "inject.")) for k in moved)
    # the old parameters move far less than the new ones (lr 1e-5 vs 5e-4)
    def delta(prefix_keys):
        return max((after[k] - before[k]).abs().max().item() for k in prefix_keys)
    conditional = {id(p) for p in trained.encoder.conditional_parameters()}
    cond = {n for n, p in trained.encoder.named_parameters() if id(p) in conditional}
    old_keys = [f"encoder.{n}" for n, _ in trained.encoder.named_parameters() if n not in cond]
    new_keys = [f"encoder.{n}" for n in cond]
    assert delta(new_keys) > 5 * delta(old_keys)


def test_stage_requires_matching_config(tiny_pipeline):
    bad = dataclasses.replace(TRAIN, checkpoint_every=1)
    assert job(tiny_pipeline, train=bad).train_config.checkpoint_every == 1


def test_run_name_follows_what_the_stage_computes_not_where_it_runs(tiny_pipeline):
    """The run name is recorded in the exported module: the same input contents and result params give the
    same name (and bytes) whatever the paths, the cluster address or the checkpoint storage."""
    base = job(tiny_pipeline)
    ray = dataclasses.replace(TRAIN.ray, storage_path="s3://bucket/ray", address="auto", cpus_per_worker=4,
                              max_failures=5)
    moved = dataclasses.replace(base, hidden_dir="/elsewhere/hidden", data_path="/elsewhere/values.parquet",
                                backbone_dir="/elsewhere/backbone",
                                train=dataclasses.asdict(dataclasses.replace(TRAIN, ray=ray)))
    assert moved.run_name("fp") == base.run_name("fp") and moved.result_params() == base.result_params()
    assert "storage_path" not in base.result_params()["train"]["ray"]
    for changed in (dataclasses.replace(TRAIN, ray=dataclasses.replace(TRAIN.ray, num_workers=2)),
                    dataclasses.replace(TRAIN, stage1=dataclasses.replace(TRAIN.stage1, lr=1e-3))):
        assert dataclasses.replace(base, train=dataclasses.asdict(changed)).run_name("fp") != base.run_name("fp")
    assert base.run_name("other inputs") != base.run_name("fp")


def _toy_loop(session, select, patience, scores, epochs=5):
    """A linear layer trained by SGD; ``scores`` are the validation values its epochs report, in order. Returns
    (progress, the weights after each finished epoch)."""
    from svgt.training.loop import LoopSpec, run_loop

    torch.manual_seed(0)
    module = torch.nn.Linear(2, 1)
    optimizer = torch.optim.SGD(module.parameters(), lr=0.1)
    after: list[dict[str, torch.Tensor]] = []
    values = iter(scores)

    def step(x):
        optimizer.zero_grad()
        module(x).pow(2).sum().backward()
        optimizer.step()
        return {"loss": 0.0}

    def evaluate():
        after.append({k: v.clone() for k, v in module.state_dict().items()})
        return {"val_total": next(values)}

    spec = LoopSpec(epochs, checkpoint_every=100, seed=0, select=select, patience=patience)
    progress = run_loop(module, optimizer, spec, lambda e: [torch.ones(1, 2)] * 2, step, evaluate, session, False)
    return progress, after, module


def test_loop_keeps_the_best_epoch_and_stops_after_patience_epochs_without_one(tmp_path):
    from svgt.training.checkpoint import module_weights

    session = LocalSession(tmp_path / "a")
    progress, after, _ = _toy_loop(session, "val_total", 2, [3.0, 1.0, 2.0, 2.5, 0.5])
    # epoch 2 is the best; epochs 3 and 4 do not beat it, so epoch 5 never runs (its 0.5 is never seen)
    assert progress.best_epoch == 2 and progress.best_value == 1.0
    assert [r["epoch"] for r in progress.history] == [1, 2, 3, 4] and len(after) == 4
    assert [r["best_epoch"] for r in progress.history] == [1, 2, 2, 2]
    exported = module_weights(session.latest_checkpoint())  # what the stage exports: epoch 2's weights
    for k, v in after[1].items():
        torch.testing.assert_close(exported[k], v, atol=0, rtol=0)
    latest = module_weights(session.latest_checkpoint(), best=False)
    assert not torch.equal(latest["weight"], exported["weight"])
    # a run stopped after epoch 3 and resumed keeps epoch 2's weights from the checkpoint through epoch 4
    stopped = LocalSession(tmp_path / "c")
    _, first, _ = _toy_loop(stopped, "val_total", 2, [3.0, 1.0, 2.0], epochs=3)
    resumed, second, _ = _toy_loop(stopped, "val_total", 2, [2.5])
    assert resumed.best_epoch == 2 and [r["epoch"] for r in resumed.history] == [1, 2, 3, 4] and len(second) == 1
    torch.testing.assert_close(module_weights(stopped.latest_checkpoint())["weight"], first[1]["weight"],
                               atol=0, rtol=0)
    # without a selection metric the last epoch is exported and there is no best copy
    plain = LocalSession(tmp_path / "b")
    progress, after, _ = _toy_loop(plain, None, 0, [3.0, 1.0, 2.0], epochs=3)
    assert progress.best_epoch == 0 and len(progress.history) == 3
    torch.testing.assert_close(module_weights(plain.latest_checkpoint())["weight"], after[-1]["weight"], atol=0, rtol=0)


def test_loop_names_a_selection_metric_that_evaluate_does_not_return(tmp_path):
    from svgt.core.params import ConfigError

    with pytest.raises(ConfigError, match=r"selection metric 'val_f1' is None after epoch 1 "
                                          r"\(the validation metrics are \['val_total'\]\)"):
        _toy_loop(LocalSession(tmp_path), "val_f1", 0, [1.0])
