"""Stages 1 and 2: the value encoder and discriminator learn to judge prompts, then responses in context.

Stage 1: BCE on prompts (prompt_harmful) through the unconditional path.
Stage 2: BCE on prompt-response pairs (response_harmful) with the conditional path added; the new
parameters learn at ``lr_new`` while stage 1's parameters move slowly at ``lr_old``.
Both read the extracted hidden states only: the backbone is never run here.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from svgt.eval.metrics import discrimination_metrics
from svgt.extract.store import HiddenStateStore
from svgt.model import ValueModule, ValueModuleConfig, load_value_module
from svgt.training.checkpoint import module_weights
from svgt.training.data import SequenceExample, collate, load_stage_examples
from svgt.training.distributed import MeanTerm, global_means, rank_batches, sum_gradients
from svgt.training.job import StageJob
from svgt.training.loop import LoopSpec, Session, run_loop
from svgt.training.losses import discrimination_loss


def new_value_module(job: StageJob, store: HiddenStateStore) -> ValueModule:
    cfg = ValueModuleConfig(hidden_size=store.hidden_size, layer=store.layer, **job.model)
    return ValueModule(cfg)


def initial_module(job: StageJob, store: HiddenStateStore) -> ValueModule:
    """Stage 1 starts fresh; later stages continue from the previous stage's exported module."""
    if job.init_module is None:
        return new_value_module(job, store)
    module, _ = load_value_module(job.init_module, expected_backbone_sha256=store.index["backbone"]["weights_sha256"])
    if module.config.layer != store.layer or module.config.hidden_size != store.hidden_size:
        raise ValueError(f"{job.init_module}: module reads layer {module.config.layer} width "
                         f"{module.config.hidden_size} but the hidden states are layer {store.layer} "
                         f"width {store.hidden_size}")
    return module


def optimizer_for_stage(module: ValueModule, job: StageJob) -> torch.optim.Optimizer:
    groups = module.configure_stage(job.stage)
    t = job.train_config
    if job.stage == 1:
        spec = [{"params": groups["train"], "lr": t.stage1.lr, "name": "train"}]
        wd = t.stage1.weight_decay
    elif job.stage == 2:
        # asymmetric learning rates: the conditional path is new, the rest was trained in stage 1
        spec = [{"params": groups["new"], "lr": t.stage2.lr_new, "name": "new"},
                {"params": groups["old"], "lr": t.stage2.lr_old, "name": "old"}]
        wd = t.stage2.weight_decay
    else:
        # the gate is one scalar: at the bridge's lr Adam moves it by ~lr per step, so it may get its own
        gate = module.bridge.gate
        rest = [p for p in groups["train"] if p is not gate]
        spec = [{"params": rest, "lr": t.stage3.lr, "name": "train"}]
        if t.stage3.gate_lr is None:
            spec[0]["params"] = groups["train"]
        else:
            spec.append({"params": [gate], "lr": t.stage3.gate_lr, "name": "gate", "weight_decay": 0.0})
        wd = t.stage3.weight_decay
    return torch.optim.AdamW(spec, weight_decay=wd)


def training_device(use_gpu: bool) -> torch.device:
    """The worker's device: its GPU when the job asked for GPUs (Ray sets CUDA_VISIBLE_DEVICES), else CPU."""
    if not use_gpu:
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise RuntimeError("train.ray.use_gpu is true but no CUDA device is visible to this worker")
    return torch.device("cuda", torch.cuda.current_device())


def to_device(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    return {k: v.to(device, non_blocking=True) for k, v in batch.items()}


STAGE_METRICS = ("accuracy", "f1", "auroc", "n", "positives")  # per validation epoch and test split


@torch.no_grad()
def score_examples(module: ValueModule, examples: Sequence[SequenceExample], batch_size: int = 64,
                   use_prompt: bool = True) -> np.ndarray:
    module.eval()
    out = []
    device = next(module.parameters()).device
    for start in range(0, len(examples), batch_size):
        batch = to_device(collate(examples[start:start + batch_size]), device)
        prompt = (batch.get("prompt_states"), batch.get("prompt_mask")) if use_prompt else (None, None)
        _, s = module.score(batch["states"], batch["mask"], *prompt)
        out.append(s.float().cpu())
    return torch.cat(out).numpy() if out else np.zeros(0)


def evaluate_discrimination(module: ValueModule, examples: Sequence[SequenceExample],
                            use_prompt: bool = True) -> dict[str, float]:
    """The discriminator's accuracy and F1 at s > 0 and its AUROC, on ``examples`` (what the stage reports log)."""
    labels = [int(e.label) for e in examples]
    metrics = discrimination_metrics(labels, score_examples(module, examples, use_prompt=use_prompt))
    return {k: metrics[k] for k in STAGE_METRICS}


def discrimination_stage(job: StageJob, session: Session, progress_bar: bool = True) -> ValueModule:
    """The stage-1/2 training loop (runs inside a Ray Train worker or a LocalSession)."""
    t = job.train_config
    cfg = t.stage1 if job.stage == 1 else t.stage2
    torch.manual_seed(t.seed)
    store = HiddenStateStore(job.hidden_dir)
    frame = pd.read_parquet(job.data_path)
    view = f"stage{job.stage}"
    device = training_device(t.ray.use_gpu)
    module = initial_module(job, store).to(device)
    optimizer = optimizer_for_stage(module, job)
    trainable = [p for g in optimizer.param_groups for p in g["params"]]
    train = load_stage_examples(store, frame, view, "train", cfg.max_tokens)
    val = load_stage_examples(store, frame, view, "val", cfg.max_tokens)

    def train_step(batch: dict[str, torch.Tensor]) -> dict[str, float]:
        batch = to_device(batch, device)
        _, s = module.score(batch["states"], batch["mask"], batch.get("prompt_states"), batch.get("prompt_mask"))
        # this worker's share of the global batch's mean (all of it with one worker)
        local, logged = global_means({"loss": MeanTerm.of(discrimination_loss(s, batch["labels"], "none"))})
        optimizer.zero_grad(set_to_none=True)
        local["loss"].backward()
        sum_gradients(trainable)
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimizer.step()
        return logged

    def evaluate() -> dict[str, float]:
        return {f"val_{k}": v for k, v in evaluate_discrimination(module, val).items()}

    spec = LoopSpec(cfg.epochs, t.checkpoint_every, t.seed, desc=f"stage {job.stage}")
    def make_batches(epoch: int) -> list[dict[str, torch.Tensor]]:
        return [collate(b) for b in rank_batches(train, cfg.batch_size, t.seed, epoch, session.rank,
                                                 session.world_size)]

    run_loop(module, optimizer, spec, make_batches, train_step, evaluate, session, progress_bar)
    return module




def module_from_checkpoint(job: StageJob, checkpoint_dir: str | Path) -> ValueModule:
    """Rebuild the trained module from a loop checkpoint (weights only; the best epoch's where one was selected)."""
    store = HiddenStateStore(job.hidden_dir, verify=False)
    module = initial_module(job, store) if job.init_module else new_value_module(job, store)
    module.load_state_dict(module_weights(checkpoint_dir), strict=True)
    return module.eval()
