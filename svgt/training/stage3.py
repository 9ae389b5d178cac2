"""Stage 3: behaviour training of the Latent Value Bridge through the frozen backbone.

Everything but the bridge (and the SVGT-Inject projector) is frozen. For a safe target response R to
prompt P, the upper blocks run on [H_P; B; H_R] with shifted positions, teacher-forced:

  loss = w_ce * CE(R | P, B) + w_safe * safety(s) + w_reg * manifold(B, h_v)

where s is the value module's score of the response states just above the insertion (the output of
block l*+1) and B is built from h_v (the last prompt state) and z = E(H_P). The lower blocks never see
the bridge, so their outputs H_P, H_R are read from the extracted hidden states instead of recomputed.
With ``train_inject`` the inject projector learns from the same losses with its delta added to the
residual stream at block l* (no bridge tokens).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd
import torch

from svgt.backbone.runner import BlockRunner
from svgt.backbone.snapshot import load_snapshot
from svgt.backbone.text import encode_response
from svgt.data.schema import stage_mask
from svgt.extract import HiddenStateStore
from svgt.model import ValueModule
from svgt.model.bridge import manifold_regulariser
from svgt.training.job import StageJob
from svgt.training.loop import LoopSpec, Session, run_loop
from svgt.training.losses import response_ce, safety_loss
from svgt.training.stages import (
    average_gradients,
    epoch_batches,
    initial_module,
    optimizer_for_stage,
    shard_for_rank,
    training_device,
)


@dataclass(frozen=True)
class TargetExample:
    id: str
    prompt_states: torch.Tensor  # [M, d] layer-l* states of the templated prompt
    response_states: torch.Tensor  # [T, d] layer-l* states of the target response
    response_ids: torch.Tensor  # [T] target token ids


def load_targets(store: HiddenStateStore, frame: pd.DataFrame, tokenizer, split: str, max_tokens: int,
                 max_rows: int, seed: int, device: torch.device | str = "cpu") -> list[TargetExample]:
    rows = frame[stage_mask(frame, "stage3") & (frame["split"] == split)].set_index("id")
    if max_rows and len(rows) > max_rows:
        keep = sorted(random.Random(seed).sample(range(len(rows)), max_rows))
        rows = rows.iloc[keep]
    out = []
    for ex in store.iter_split(split):
        if ex.id not in rows.index:
            continue
        ids = encode_response(tokenizer, str(rows.at[ex.id, "response"]))
        t = min(max_tokens, ex.response_states.shape[0])
        if t == 0:
            continue
        out.append(TargetExample(ex.id, ex.prompt_states.float().to(device), ex.response_states[:t].float().to(device),
                                 torch.tensor(ids[:t], dtype=torch.long, device=device)))
    return out


def _pad(seqs: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(s.shape[0] for s in seqs)
    out = seqs[0].new_zeros((len(seqs), width, *seqs[0].shape[1:]))
    mask = torch.zeros(len(seqs), width, dtype=torch.bool, device=seqs[0].device)
    for i, s in enumerate(seqs):
        out[i, : s.shape[0]] = s
        mask[i, : s.shape[0]] = True
    return out, mask


class BehaviourObjective:
    """Builds the guided upper-block forward for a batch and returns the stage-3 losses."""

    def __init__(self, module: ValueModule, runner: BlockRunner, weights: tuple[float, float, float]):
        self.module, self.runner = module, runner
        self.layer = module.config.layer
        self.w_ce, self.w_safe, self.w_reg = weights

    def _upper(self, hidden: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor):
        """Blocks l*+1..L; also returns block l*+1's output (where the safety score is read)."""
        pe = self.runner.position_embeddings(positions)
        above = self.runner.run_blocks(hidden, self.layer, self.layer + 1, position_ids=positions,
                                       attention_mask=mask.long(), position_embeddings=pe)
        top = self.runner.run_blocks(above, self.layer + 1, self.runner.num_layers, position_ids=positions,
                                     attention_mask=mask.long(), position_embeddings=pe)
        return above, self.runner.logits(top)

    def _losses(self, logits, above, rows, starts, batch, prompt, prompt_mask) -> dict[str, torch.Tensor]:
        """CE on each response token from the row before it; safety on the response rows of block l*+1."""
        t = max(len(e.response_ids) for e in batch)
        # the rows holding the response tokens
        idx = torch.stack([s + torch.arange(t, device=starts.device) for s in starts])
        pred = idx - 1  # the row before each response token predicts it
        targets, tmask = _pad([e.response_ids for e in batch])
        gather = pred.clamp(max=logits.shape[1] - 1)
        ce = response_ce(logits[rows[:, None], gather], targets, tmask)
        resp_states = above[rows[:, None], idx.clamp(max=above.shape[1] - 1)]
        _, s = self.module.score(resp_states, tmask, prompt, prompt_mask)
        return {"ce": ce, "safety": safety_loss(s), "score": s.detach().mean()}

    def bridge_losses(self, batch: Sequence[TargetExample]) -> dict[str, torch.Tensor]:
        prompt, prompt_mask = _pad([e.prompt_states for e in batch])
        h_v = torch.stack([e.prompt_states[-1] for e in batch])
        with torch.no_grad():
            z, _ = self.module.score(prompt, prompt_mask)
        bridge = self.module.bridge_tokens(h_v, z)  # [B, K, d], differentiable w.r.t. the bridge
        k = bridge.shape[1]
        seqs = [torch.cat([e.prompt_states, bridge[i], e.response_states]) for i, e in enumerate(batch)]
        hidden, mask = _pad(seqs)
        dev = hidden.device
        positions = torch.stack([torch.arange(hidden.shape[1], device=dev) for _ in batch]) * mask
        above, logits = self._upper(hidden, positions, mask)
        rows = torch.arange(len(batch), device=dev)
        starts = torch.tensor([e.prompt_states.shape[0] + k for e in batch], device=dev)
        out = self._losses(logits, above, rows, starts, batch, prompt, prompt_mask)
        out["reg"] = manifold_regulariser(bridge, h_v, self.module.config.reg_margin)
        out["total"] = self.w_ce * out["ce"] + self.w_safe * out["safety"] + self.w_reg * out["reg"]
        return out

    def inject_losses(self, batch: Sequence[TargetExample]) -> dict[str, torch.Tensor]:
        prompt, prompt_mask = _pad([e.prompt_states for e in batch])
        seqs, deltas = [], []
        for i, e in enumerate(batch):
            # the positions that predict response tokens: the last prompt token and the response tokens
            states = torch.cat([e.prompt_states[-1:], e.response_states[:-1]])
            ones = torch.ones(states.shape[0], 1, dtype=torch.bool, device=states.device)
            ctx = prompt[i: i + 1].expand(states.shape[0], -1, -1)
            with torch.no_grad():
                z, _ = self.module.score(states[:, None], ones, ctx, prompt_mask[i: i + 1].expand(states.shape[0], -1))
            delta = self.module.inject_delta(z)
            m = e.prompt_states.shape[0]
            pad = delta.new_zeros(m - 1, delta.shape[-1])
            seqs.append(torch.cat([e.prompt_states, e.response_states]))
            deltas.append(torch.cat([pad, delta, delta.new_zeros(1, delta.shape[-1])]))
        hidden, mask = _pad(seqs)
        delta, _ = _pad(deltas)
        dev = hidden.device
        positions = torch.stack([torch.arange(hidden.shape[1], device=dev) for _ in batch]) * mask
        above, logits = self._upper(hidden + delta, positions, mask)
        rows = torch.arange(len(batch), device=dev)
        starts = torch.tensor([e.prompt_states.shape[0] for e in batch], device=dev)
        out = self._losses(logits, above, rows, starts, batch, prompt, prompt_mask)
        out["total"] = self.w_ce * out["ce"] + self.w_safe * out["safety"]
        return out


def behaviour_stage(job: StageJob, session: Session, progress_bar: bool = True) -> ValueModule:
    t = job.train_config
    cfg = t.stage3
    torch.manual_seed(t.seed)
    store = HiddenStateStore(job.hidden_dir)
    frame = pd.read_parquet(job.data_path)
    device = training_device(t.ray.use_gpu)
    model, tokenizer, _ = load_snapshot(job.backbone_dir, dtype="float32", device=str(device))
    runner = BlockRunner(model)
    module = initial_module(job, store).to(device)
    optimizer = optimizer_for_stage(module, job)
    if not cfg.train_inject:
        module.inject.requires_grad_(False)
        optimizer.param_groups[0]["params"] = [p for p in optimizer.param_groups[0]["params"] if p.requires_grad]
    trainable = [p for g in optimizer.param_groups for p in g["params"]]
    objective = BehaviourObjective(module, runner, (cfg.w_ce, cfg.w_safe, cfg.w_reg))
    train = shard_for_rank(load_targets(store, frame, tokenizer, "train", cfg.max_response_tokens,
                                        cfg.max_train_rows, t.seed, device), session.rank, session.world_size)
    val = load_targets(store, frame, tokenizer, "val", cfg.max_response_tokens, cfg.max_val_rows, t.seed, device)

    def train_step(batch: list[TargetExample]) -> dict[str, float]:
        optimizer.zero_grad(set_to_none=True)
        out = objective.bridge_losses(batch)
        loss = out["total"]
        metrics = {k: float(v.detach()) for k, v in out.items()}
        if cfg.train_inject:
            inj = objective.inject_losses(batch)
            loss = loss + inj["total"]
            metrics |= {f"inject_{k}": float(v.detach()) for k, v in inj.items()}
        loss.backward()
        average_gradients(trainable)
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimizer.step()
        return metrics | {"alpha": float(module.bridge.alpha.detach())}

    @torch.no_grad()
    def evaluate() -> dict[str, float]:
        sums: dict[str, float] = {}
        batches = [val[i:i + cfg.batch_size] for i in range(0, len(val), cfg.batch_size)]
        for batch in batches:
            for k, v in objective.bridge_losses(batch).items():
                sums[f"val_{k}"] = sums.get(f"val_{k}", 0.0) + float(v) / len(batches)
        return sums

    spec = LoopSpec(cfg.epochs, t.checkpoint_every, t.seed, desc="stage 3")
    run_loop(module, optimizer, spec, lambda e: epoch_batches(train, cfg.batch_size, t.seed, e), train_step,
             evaluate, session, progress_bar)
    return module
