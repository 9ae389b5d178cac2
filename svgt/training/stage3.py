"""Stage 3: behaviour training of the Latent Value Bridge through the frozen backbone.

Everything but the bridge (and the SVGT-Inject projector) is frozen. For a safe target response R to
prompt P, the upper blocks run on [H_P; B; H_R] with shifted positions, teacher-forced:

  loss = w_ce * CE(R | P, B) + w_safe * safety(s) + w_reg * manifold(B, h_v)

where s is the value module's score of the response states just above the insertion (the output of
block l*+1) and B is built from h_v (the last prompt state) and z = E(H_P). The lower blocks never see
the bridge, so their outputs H_P, H_R are read from the extracted hidden states instead of recomputed.
With ``refresh_segments`` the behaviour term also covers refreshed bridges: decoding rebuilds the bridge
every r tokens (momentum blend with a bridge from the answer so far), and the tokens after refresh k are
teacher-forced through [H_P; B_k; H_R] exactly as decoding computes them.
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
from svgt.extract.store import HiddenStateStore
from svgt.model import ValueModule
from svgt.model.bridge import manifold_penalties
from svgt.training.distributed import MeanTerm, global_means, rank_batches, sum_gradients
from svgt.training.job import StageJob
from svgt.training.loop import LoopSpec, Session, run_loop
from svgt.training.losses import safety_penalties
from svgt.training.stages import initial_module, optimizer_for_stage, training_device


@dataclass(frozen=True)
class TargetExample:
    id: str
    prompt_states: torch.Tensor  # [M, d] layer-l* states of the templated prompt
    response_states: torch.Tensor  # [T, d] layer-l* states of the target response
    response_ids: torch.Tensor  # [T] target token ids
    harmful: bool = False  # prompt_harmful: the target is a refusal



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
                                 torch.tensor(ids[:t], dtype=torch.long, device=device),
                                 bool(rows.at[ex.id, "prompt_harmful"] == 1)))
    return out


def _pad(seqs: Sequence[torch.Tensor], left: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack variable-length sequences with zero padding (right by default); mask is True on real rows."""
    width = max(s.shape[0] for s in seqs)
    out = seqs[0].new_zeros((len(seqs), width, *seqs[0].shape[1:]))
    mask = torch.zeros(len(seqs), width, dtype=torch.bool, device=seqs[0].device)
    for i, s in enumerate(seqs):
        n = s.shape[0]
        span = slice(width - n, width) if left else slice(0, n)
        out[i, span] = s
        mask[i, span] = True
    return out, mask


class PromptPrefixCache:
    """Upper-block keys/values of each example's prompt rows, computed once and reused for the whole stage.

    Nothing before the insertion point depends on the bridge, so the prompt rows' keys/values in blocks
    l*+1..L never change while the bridge trains: they are computed once per example, without autograd,
    and reused by every step and epoch. The inject objective (prompt minus its last row, which carries the
    delta) reuses the same entries: under causal attention the first M-1 rows' keys/values are a prefix
    of the M-row ones. Entries are kept up to ``budget_bytes`` (about 23 KB per prompt token for the
    embedded default); examples beyond the budget are recomputed for each batch.
    """

    def __init__(self, runner: BlockRunner, layer: int, budget_bytes: int):
        self.runner, self.layer, self.budget = runner, layer, budget_bytes
        self.entries: dict[str, list[tuple[torch.Tensor, torch.Tensor]]] = {}
        self.bytes = 0

    @torch.no_grad()
    def _compute(self, examples: Sequence[TargetExample]) -> list[list[tuple[torch.Tensor, torch.Tensor]]]:
        """Per example and upper block: (keys, values) [heads, M, head_dim] of its M prompt rows."""
        runner = self.runner
        prefix, prefix_mask = _pad([e.prompt_states for e in examples], left=True)
        positions = (prefix_mask.long().cumsum(-1) - 1).clamp(min=0)
        cache = runner.new_cache()
        runner.run_blocks(prefix, self.layer, runner.num_layers, position_ids=positions,
                          attention_mask=prefix_mask.long(), cache=cache)
        out = []
        for i, e in enumerate(examples):
            m = e.prompt_states.shape[0]  # left padding: row i's prompt is its last m columns
            out.append([(layer.keys[i, :, -m:].clone(), layer.values[i, :, -m:].clone())
                        for layer in cache.layers[self.layer:]])
        return out

    def _entries(self, batch: Sequence[TargetExample]) -> list[list[tuple[torch.Tensor, torch.Tensor]]]:
        missing = list({e.id: e for e in batch if e.id not in self.entries}.values())
        fresh = dict(zip([e.id for e in missing], self._compute(missing), strict=True)) if missing else {}
        for key, kv in fresh.items():
            size = sum(k.numel() * k.element_size() * 2 for k, _ in kv)
            if self.bytes + size <= self.budget:
                self.entries[key] = kv
                self.bytes += size
        return [self.entries.get(e.id) or fresh[e.id] for e in batch]

    def batch_cache(self, batch: Sequence[TargetExample], drop_last: bool):
        """(DynamicCache over blocks l*+1..L or None, left-padded prompt mask [B, W], prompt lengths [B])."""
        dev = batch[0].prompt_states.device
        lengths = torch.tensor([e.prompt_states.shape[0] - int(drop_last) for e in batch], device=dev)
        width = int(lengths.max())
        mask = (torch.arange(width, device=dev)[None] >= width - lengths[:, None]).long()
        if width == 0:
            return None, mask, lengths
        entries = self._entries(batch)
        cache = self.runner.new_cache()
        for j in range(self.runner.num_layers - self.layer):
            heads, dim = entries[0][j][0].shape[0], entries[0][j][0].shape[-1]
            keys = entries[0][j][0].new_zeros(len(batch), heads, width, dim)
            values = torch.zeros_like(keys)
            for i, n in enumerate(lengths.tolist()):
                if n:
                    keys[i, :, width - n:] = entries[i][j][0][:, :n]
                    values[i, :, width - n:] = entries[i][j][1][:, :n]
            cache.update(keys, values, self.layer + j)
        return cache, mask, lengths


class BehaviourObjective:
    """Builds the guided upper-block forward for a batch and returns the stage-3 losses.

    Nothing before the insertion point depends on the bridge, so the prompt rows' upper-block keys/values
    come from a ``PromptPrefixCache`` (computed once, without autograd, left-padded as in decoding); only
    the rows after it ([B; R] or the injected rows) are run with gradients. The result equals running the
    whole sequence.
    """

    def __init__(self, module: ValueModule, runner: BlockRunner, weights: tuple[float, float, float],
                 lead: tuple[int, float] = (0, 1.0), benign_target: str = "dataset",
                 prefix_cache_mb: float = 2048.0):
        if benign_target not in ("dataset", "backbone"):
            raise ValueError(f"benign_target must be 'dataset' or 'backbone', got {benign_target!r}")
        self.module, self.runner = module, runner
        self.layer = module.config.layer
        self.w_ce, self.w_safe, self.w_reg = weights
        self.lead_tokens, self.lead_weight = lead
        self.benign_target = benign_target
        self.prefixes = PromptPrefixCache(runner, self.layer, int(prefix_cache_mb * 2**20))
        self._base_top: dict[str, torch.Tensor] = {}  # example id -> the unguided backbone's [T, d] top states
        self._base_cache: tuple[tuple[str, ...], torch.Tensor] | None = None  # bridge and inject share a batch

    def _upper(self, batch: Sequence[TargetExample], drop_last: bool, tails: Sequence[torch.Tensor]):
        """Blocks l*+1..L on each [prompt (without its last row if ``drop_last``); tail]; returns block
        l*+1's output and block L's output on the tail rows. The prompt rows come from the prefix cache."""
        runner, dev = self.runner, tails[0].device
        tail, tail_mask = _pad(tails)
        cache, prefix_mask, lengths = self.prefixes.batch_cache(batch, drop_last)
        mask = tail_mask.long() if cache is None else torch.cat([prefix_mask, tail_mask.long()], dim=1)
        positions = lengths[:, None] + torch.arange(tail.shape[1], device=dev)
        pe = runner.position_embeddings(positions)
        above = runner.run_blocks(tail, self.layer, self.layer + 1, position_ids=positions, attention_mask=mask,
                                  cache=cache, position_embeddings=pe)
        top = runner.run_blocks(above, self.layer + 1, runner.num_layers, position_ids=positions,
                                attention_mask=mask, cache=cache, position_embeddings=pe)
        return above, top

    @torch.no_grad()
    def _backbone_logprobs(self, batch: Sequence[TargetExample]) -> torch.Tensor:
        """log p(. | prompt, response<j) of the unguided backbone on every target token of ``batch``, in
        batch-then-position order: [N, V].

        The backbone's last-block states on a target never change, so each example's are computed once
        and kept ([T, d] per example, ~17 MB for the embedded default's benign rows); only the LM head
        reruns.
        """
        key = tuple(e.id for e in batch)
        if self._base_cache is not None and self._base_cache[0] == key:
            return self._base_cache[1]
        missing = [e for e in batch if e.id not in self._base_top]
        if missing:
            tails = [torch.cat([e.prompt_states[-1:], e.response_states]) for e in missing]
            _, top = self._upper(missing, True, tails)
            for i, e in enumerate(missing):  # tail row j predicts response token j
                self._base_top[e.id] = top[i, : len(e.response_ids)].clone()
        states = torch.cat([self._base_top[e.id] for e in batch])
        base = torch.log_softmax(self.runner.logits(states).float(), dim=-1)
        self._base_cache = (key, base)
        return base

    def _behaviour(self, top, offset: int, batch, keep: torch.Tensor | None = None) -> dict[str, MeanTerm]:
        """The behaviour term on each kept response token j (tail row ``offset + j``, predicted by the row
        before it): CE on the target token; with ``benign_target="backbone"`` the tokens of benign prompts
        instead take KL(backbone || guided), so the bridge learns to refuse harmful prompts without pulling
        benign answers toward the dataset's (often off-distribution for the backbone) wording. ``keep``
        [B, T] limits the term to some target tokens (a refreshed bridge's segment); None keeps all.
        """
        targets, tmask = _pad([e.response_ids for e in batch])
        use = tmask if keep is None else tmask & keep[:, : tmask.shape[1]]
        example, position = use.nonzero(as_tuple=True)  # batch-then-position order, as ``[use]`` indexes
        # the LM head (the largest matmul here) runs only on the rows that predict a kept target token
        logits = self.runner.logits(top[example, offset + position - 1])
        weight = torch.where(position < self.lead_tokens, self.lead_weight, 1.0)
        token_loss = torch.nn.functional.cross_entropy(logits.float(), targets[use], reduction="none")
        out: dict[str, MeanTerm] = {}
        if self.benign_target == "backbone":
            harmful = torch.tensor([e.harmful for e in batch], device=top.device)[:, None].expand_as(targets)[use]
            kl = torch.zeros_like(token_loss)
            benign = [i for i, e in enumerate(batch) if not e.harmful]
            if benign:
                # the backbone's log-probs cover every target token of the benign examples: keep the used ones
                base = self._backbone_logprobs([batch[i] for i in benign])[use[benign][tmask[benign]]]
                guided = torch.log_softmax(logits[~harmful].float(), dim=-1)
                kl[~harmful] = (base.exp() * (base - guided)).sum(-1)
            out["kl"] = MeanTerm.of(kl, ~harmful)
            out["ce"] = MeanTerm.of(token_loss, harmful)
            token_loss = torch.where(harmful, token_loss, kl)
        else:
            out["ce"] = MeanTerm.of(token_loss, weight, floor=1e-12)
        out["behaviour"] = MeanTerm.of(token_loss, weight, floor=1e-12)
        return out

    def behaviour_names(self) -> tuple[str, ...]:
        return ("behaviour", "ce", "kl") if self.benign_target == "backbone" else ("behaviour", "ce")

    def _losses(self, top, above, offset: int, batch, prompt, prompt_mask) -> dict[str, MeanTerm]:
        """The behaviour term on every response token and the safety term on the response rows of block l*+1."""
        out = self._behaviour(top, offset, batch)
        targets, tmask = _pad([e.response_ids for e in batch])
        rows = torch.arange(offset, offset + targets.shape[1], device=top.device)
        _, s = self.module.score(above[:, rows], tmask, prompt, prompt_mask)
        return out | {"safety": MeanTerm.of(safety_penalties(s)), "score": MeanTerm.of(s.detach())}

    def _bridge_forward(self, batch: Sequence[TargetExample]):
        """(bridge [B, K, d], block l*+1 and block L outputs on [B; R], prompt states, prompt mask)."""
        prompt, prompt_mask = _pad([e.prompt_states for e in batch])
        h_v = torch.stack([e.prompt_states[-1] for e in batch])
        with torch.no_grad():
            z, _ = self.module.score(prompt, prompt_mask)
        bridge = self.module.bridge_tokens(h_v, z)  # [B, K, d], differentiable w.r.t. the bridge
        tails = [torch.cat([bridge[i], e.response_states]) for i, e in enumerate(batch)]
        above, top = self._upper(batch, False, tails)
        return bridge, above, top, prompt, prompt_mask

    def _refreshed_bridge(self, batch: Sequence[TargetExample], segment: Sequence[int]) -> torch.Tensor:
        """Per example i, the bridge guided decoding uses for target tokens [k r, (k + 1) r), k = segment[i]:
        the first bridge blended (momentum) with a new one at each refresh j r, j <= k. A new bridge comes
        from z_j, the answer so far (its first j r target tokens) judged in its prompt's context, and h_v =
        the last prompt state (``refresh_context="response"``, the paper), or from the state of token j r - 1
        alone (``"token"``), exactly as ``svgt.decoding.guidance.ValueGuidance.bridge_fn`` builds it.
        Differentiable w.r.t. the bridge; the judgements z are not (the encoder is frozen)."""
        cfg = self.module.config
        r, beta = cfg.refresh_interval, cfg.momentum
        prompt, prompt_mask = _pad([e.prompt_states for e in batch])
        h_v = torch.stack([e.prompt_states[-1] for e in batch])
        with torch.no_grad():
            z, _ = self.module.score(prompt, prompt_mask)
        bridge = self.module.bridge_tokens(h_v, z)
        k = torch.tensor(list(segment), device=h_v.device)
        for j in range(1, max(segment) + 1):
            due = k >= j  # rows whose segment lies after this refresh (their targets are longer than j r)
            rows = [i for i in range(len(batch)) if due[i]]
            seen = torch.stack([batch[i].response_states[: j * r] for i in rows])  # [n, j r, d]
            with torch.no_grad():
                if cfg.refresh_context == "response":
                    ones = torch.ones(seen.shape[:2], dtype=torch.bool, device=seen.device)
                    z_j, _ = self.module.score(seen, ones, prompt[rows], prompt_mask[rows])
                    anchor = h_v[rows]
                else:
                    anchor = seen[:, -1]
                    ones = torch.ones(len(rows), 1, dtype=torch.bool, device=seen.device)
                    z_j, _ = self.module.score(anchor[:, None], ones, prompt[rows], prompt_mask[rows])
            fresh = bridge[rows] * beta + self.module.bridge_tokens(anchor, z_j) * (1.0 - beta)
            bridge = bridge.index_put((torch.tensor(rows, device=bridge.device),), fresh)
        return bridge

    def _segment_forward(self, batch: Sequence[TargetExample], segment: Sequence[int]):
        """(bridge, block L outputs on [B_k; R up to the segment's end], kept-token mask [B, T]) for refresh
        segment ``segment[i]`` of each example (0: the first bridge)."""
        r = self.module.config.refresh_interval
        bridge = self._refreshed_bridge(batch, segment)
        ends = [min(len(e.response_ids), (k + 1) * r) for e, k in zip(batch, segment, strict=True)]
        tails = [torch.cat([bridge[i], e.response_states[:end]])
                 for i, (e, end) in enumerate(zip(batch, ends, strict=True))]
        _, top = self._upper(batch, False, tails)
        width = max(len(e.response_ids) for e in batch)
        position = torch.arange(width, device=top.device)
        keep = torch.stack([(position >= k * r) & (position < end) for k, end in zip(segment, ends, strict=True)])
        return bridge, top, keep

    def segments(self, example: TargetExample) -> int:
        """How many bridges guided decoding uses on the example's target tokens (1 + its refreshes)."""
        return 1 + (len(example.response_ids) - 1) // self.module.config.refresh_interval

    @torch.no_grad()
    def bridge_logits(self, batch: Sequence[TargetExample], refresh: bool = False) -> list[torch.Tensor]:
        """Per example, the guided next-token logits [T, V] on its target tokens: what training fits, and what
        guided decoding computes for the same tokens (every row guided from the first token); with
        ``refresh`` the refreshed bridges are used from each refresh on (else the first bridge throughout,
        decoding without refreshes)."""
        bridge, _, top, _, _ = self._bridge_forward(batch)
        k = bridge.shape[1]
        out = [self.runner.logits(top[i, k - 1: k - 1 + len(e.response_ids)]) for i, e in enumerate(batch)]
        for seg in range(1, max(self.segments(e) for e in batch) if refresh else 1):
            rows = [i for i, e in enumerate(batch) if self.segments(e) > seg]
            _, top, keep = self._segment_forward([batch[i] for i in rows], [seg] * len(rows))
            for n, i in enumerate(rows):
                tokens = keep[n].nonzero().flatten()
                out[i][tokens] = self.runner.logits(top[n, k - 1 + tokens])
        return out

    def refresh_losses(self, batch: Sequence[TargetExample], per_example: int) -> dict[str, torch.Tensor] | None:
        terms = self.refresh_terms(batch, per_example)
        return None if terms is None else self.with_total(_means(terms), "segment")

    def refresh_terms(self, batch: Sequence[TargetExample], per_example: int) -> dict[str, MeanTerm] | None:
        """The behaviour term under refreshed bridges for ``per_example`` refresh segments drawn at random
        (torch's RNG) from each example's refreshes. None when no example in the batch is long enough to be
        refreshed."""
        picks: list[tuple[TargetExample, int]] = []
        for e in batch:
            count = self.segments(e) - 1
            if count > 0:
                picks += [(e, int(seg) + 1) for seg in torch.randperm(count)[: per_example]]
        return self.segment_terms(picks) if picks else None

    def segment_losses(self, picks: Sequence[tuple[TargetExample, int]]) -> dict[str, torch.Tensor]:
        return self.with_total(_means(self.segment_terms(picks)), "segment")

    def segment_terms(self, picks: Sequence[tuple[TargetExample, int]]) -> dict[str, MeanTerm]:
        """The behaviour term (CE on refusals, KL to the backbone on benign answers) on the tokens of each
        (example, k): those decoding predicts after its k-th refresh, teacher-forced through [P; B_k; R]."""
        chosen = [e for e, _ in picks]
        bridge, top, keep = self._segment_forward(chosen, [k for _, k in picks])
        return self._behaviour(top, bridge.shape[1], chosen, keep)

    def with_total(self, means: dict, objective: str) -> dict:
        """``means`` (tensors, or floats for the logs) with the weighted ``total`` the objective minimises."""
        weights = {"bridge": {"behaviour": self.w_ce, "safety": self.w_safe, "reg": self.w_reg},
                   "inject": {"behaviour": self.w_ce, "safety": self.w_safe},
                   "segment": {"behaviour": self.w_ce}}[objective]
        return means | {"total": sum(w * means[k] for k, w in weights.items())}

    def bridge_losses(self, batch: Sequence[TargetExample]) -> dict[str, torch.Tensor]:
        return self.with_total(_means(self.bridge_terms(batch)), "bridge")

    def bridge_terms(self, batch: Sequence[TargetExample]) -> dict[str, MeanTerm]:
        bridge, above, top, prompt, prompt_mask = self._bridge_forward(batch)
        h_v = torch.stack([e.prompt_states[-1] for e in batch])
        out = self._losses(top, above, bridge.shape[1], batch, prompt, prompt_mask)
        return out | {"reg": MeanTerm.of(manifold_penalties(bridge, h_v, self.module.config.reg_margin))}

    def inject_losses(self, batch: Sequence[TargetExample]) -> dict[str, torch.Tensor]:
        return self.with_total(_means(self.inject_terms(batch)), "inject")

    def inject_terms(self, batch: Sequence[TargetExample]) -> dict[str, MeanTerm]:
        prompt, prompt_mask = _pad([e.prompt_states for e in batch])
        tails = []
        for i, e in enumerate(batch):
            # the rows that predict response tokens: the last prompt token and the response tokens; the
            # delta is added to each of them (the last response token predicts nothing and is left alone)
            states = torch.cat([e.prompt_states[-1:], e.response_states[:-1]])
            ones = torch.ones(states.shape[0], 1, dtype=torch.bool, device=states.device)
            ctx = prompt[i: i + 1].expand(states.shape[0], -1, -1)
            with torch.no_grad():
                z, _ = self.module.score(states[:, None], ones, ctx, prompt_mask[i: i + 1].expand(states.shape[0], -1))
            delta = torch.cat([self.module.inject_delta(z), states.new_zeros(1, states.shape[-1])])
            tails.append(torch.cat([e.prompt_states[-1:], e.response_states]) + delta)
        above, top = self._upper(batch, True, tails)
        return self._losses(top, above, 1, batch, prompt, prompt_mask)

    def step_terms(self, batch: Sequence[TargetExample], train_inject: bool,
                   refresh_segments: int) -> dict[str, MeanTerm]:
        """Every term a training step minimises, by name (``inject_``, ``refresh_`` prefixed); the names depend
        only on the settings, so every worker's step has the same ones."""
        terms = dict(self.bridge_terms(batch))
        if train_inject:
            terms |= {f"inject_{k}": v for k, v in self.inject_terms(batch).items()}
        if refresh_segments:
            device = batch[0].prompt_states.device
            refreshed = self.refresh_terms(batch, refresh_segments) or {
                k: MeanTerm.empty(device) for k in self.behaviour_names()}
            terms |= {f"refresh_{k}": v for k, v in refreshed.items()}
        return terms

    def step_totals(self, means: dict, train_inject: bool, refresh_segments: int) -> dict:
        """The step's loss (``total``) and each objective's total, from ``step_terms``' means (tensors or floats)."""
        parts = {"": "bridge", "inject_": "inject", "refresh_": "segment"}
        if not train_inject:
            parts.pop("inject_")
        if not refresh_segments:
            parts.pop("refresh_")
        out = dict(means)
        for prefix, objective in parts.items():
            mine = {k[len(prefix):]: v for k, v in means.items() if k.startswith(prefix)} if prefix else means
            out[f"{prefix}total"] = self.with_total(mine, objective)["total"]
        out["loss"] = sum(out[f"{p}total"] for p in parts)
        return out


def _means(terms: dict[str, MeanTerm]) -> dict[str, torch.Tensor]:
    """This worker's means (evaluation and tests: no other worker is involved)."""
    return {k: v.mean() for k, v in terms.items()}


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
    objective = BehaviourObjective(module, runner, (cfg.w_ce, cfg.w_safe, cfg.w_reg),
                                   (cfg.ce_lead_tokens, cfg.ce_lead_weight), cfg.benign_target,
                                   cfg.prefix_cache_mb)
    train = load_targets(store, frame, tokenizer, "train", cfg.max_response_tokens, cfg.max_train_rows, t.seed,
                         device)
    val = load_targets(store, frame, tokenizer, "val", cfg.max_response_tokens, cfg.max_val_rows, t.seed, device)

    def train_step(batch: list[TargetExample]) -> dict[str, float]:
        # the frozen encoder and discriminator judge as they will at generation time: no dropout
        module.encoder.eval()
        module.discriminator.eval()
        optimizer.zero_grad(set_to_none=True)
        # this worker's share of the global batch's means (all of them with one worker)
        local, logged = global_means(objective.step_terms(batch, cfg.train_inject, cfg.refresh_segments))
        objective.step_totals(local, cfg.train_inject, cfg.refresh_segments)["loss"].backward()
        sum_gradients(trainable)
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimizer.step()
        metrics = objective.step_totals(logged, cfg.train_inject, cfg.refresh_segments)
        metrics.pop("loss")
        return metrics | {"alpha": float(module.bridge.alpha.detach())}

    @torch.no_grad()
    def evaluate() -> dict[str, float]:
        sums: dict[str, float] = {}
        batches = [val[i:i + cfg.batch_size] for i in range(0, len(val), cfg.batch_size)]
        for batch in batches:
            for k, v in objective.bridge_losses(batch).items():
                sums[f"val_{k}"] = sums.get(f"val_{k}", 0.0) + float(v) / len(batches)
        return sums

    spec = LoopSpec(cfg.epochs, t.checkpoint_every, t.seed, desc="stage 3", select=cfg.select, patience=cfg.patience)
    run_loop(module, optimizer, spec,
             lambda e: rank_batches(train, cfg.batch_size, t.seed, e, session.rank, session.world_size), train_step,
             evaluate, session, progress_bar)
    return module
