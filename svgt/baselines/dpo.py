"""DPO with a LoRA adapter (Rafailov et al. 2023), trained by our own small loop (no trl).

Adapter: peft LoRA on the attention and MLP output projections of every block (``block_parts``).
Data: (prompt, chosen = safe response, rejected = unsafe response) pairs. Loss, with log-probabilities
summed over the response tokens and the reference = the frozen backbone (computed once before the adapter
exists, which equals the adapter disabled: LoRA starts with B = 0):

    L = -log sigmoid(beta * ((log pi(y_c) - log ref(y_c)) - (log pi(y_r) - log ref(y_r))))

Saved: each target's A [r, in] and B [out, r] and the scaling alpha / r. Applied by merging
W += scaling * B @ A into the target weights in place (transposed for GPT-2's Conv1D, whose weight is
[in, out]); the original weights are copied back on exit, so the backbone is bit-identical afterwards.
"""

from __future__ import annotations

import contextlib
import logging
import math
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn
from tqdm.auto import tqdm
from transformers import PreTrainedModel
from transformers.pytorch_utils import Conv1D

from svgt.backbone.batching import pad_batch
from svgt.baselines.activations import Encoding
from svgt.baselines.base import Baseline, BaselineError
from svgt.baselines.hooks import block_parts, decoder_blocks, module_path
from svgt.core.io import save_safetensors
from svgt.core.params import DPOBaselineConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PreferencePair:
    prompt: str
    chosen: str  # the safe response
    rejected: str  # the unsafe response


def target_paths(model: PreTrainedModel) -> list[str]:
    """Module paths of every block's attention and MLP output projections."""
    paths = []
    for block in decoder_blocks(model):
        parts = block_parts(block)
        paths += [module_path(model, parts.attn_out), module_path(model, parts.mlp_out)]
    return paths


def _weight_delta(module: nn.Module, lora_a: torch.Tensor, lora_b: torch.Tensor, scaling: float) -> torch.Tensor:
    delta = scaling * (lora_b.float() @ lora_a.float())  # [out, in]
    if isinstance(module, nn.Linear):
        return delta
    if isinstance(module, Conv1D):
        return delta.T  # Conv1D keeps its weight as [in, out]
    raise BaselineError(f"dpo-lora: cannot merge into a {type(module).__name__} (Linear or Conv1D expected)")


PEFT_DIR = "adapter"  # the adapter in peft's format, inside the baseline's directory


@dataclass
class DPOLoRABaseline(Baseline):
    method: ClassVar[str] = "dpo-lora"
    targets: list[str]
    lora_a: dict[str, torch.Tensor]  # path -> [r, in]
    lora_b: dict[str, torch.Tensor]  # path -> [out, r]
    scaling: float
    fan_in_fan_out: bool = False  # the targets are GPT-2 style Conv1D layers (weight [in, out])

    def __post_init__(self) -> None:
        missing = [t for t in self.targets if t not in self.lora_a or t not in self.lora_b]
        if missing:
            raise BaselineError(f"dpo-lora: no LoRA weights for {missing[:3]}")

    @torch.no_grad()
    def install(self, model: PreTrainedModel, stack: contextlib.ExitStack) -> None:
        for path in self.targets:
            try:
                module = model.get_submodule(path)
            except AttributeError:
                raise BaselineError(
                    f"dpo-lora: the model has no module {path!r}; adapter trained on another architecture?"
                ) from None
            weight = module.weight
            delta = _weight_delta(module, self.lora_a[path], self.lora_b[path], self.scaling)
            if tuple(delta.shape) != tuple(weight.shape):
                raise BaselineError(
                    f"dpo-lora: adapter for {path} has shape {tuple(delta.shape)}, weight has {tuple(weight.shape)}"
                )
            original = weight.detach().clone()
            weight.add_(delta.to(weight.device, weight.dtype))
            stack.callback(_restore, weight, original)

    def config_dict(self) -> dict[str, Any]:
        return {"targets": self.targets, "scaling": self.scaling, "fan_in_fan_out": self.fan_in_fan_out}

    def write_exports(self, directory: Path, metadata: dict[str, Any]) -> list[str]:
        """The adapter in peft's format under ``adapter/``: ``PeftModel.from_pretrained(backbone,
        "<dir>/adapter")`` loads it (the same weights ``install`` merges)."""
        from peft import LoraConfig  # peft is a dependency (DPO trains with it)

        rank = int(next(iter(self.lora_a.values())).shape[0])
        config = LoraConfig(r=rank, lora_alpha=self.scaling * rank, lora_dropout=0.0, bias="none",
                            target_modules=list(self.targets), fan_in_fan_out=self.fan_in_fan_out,
                            task_type="CAUSAL_LM", base_model_name_or_path=metadata.get("backbone_source"))
        out = directory / PEFT_DIR
        config.save_pretrained(str(out))
        tensors = {f"base_model.model.{p}.lora_A.weight": self.lora_a[p].contiguous() for p in self.targets}
        tensors |= {f"base_model.model.{p}.lora_B.weight": self.lora_b[p].contiguous() for p in self.targets}
        save_safetensors(tensors, out / "adapter_model.safetensors", metadata={"format": "pt"})
        return [f"{PEFT_DIR}/adapter_config.json", f"{PEFT_DIR}/adapter_model.safetensors"]

    def tensors(self) -> dict[str, torch.Tensor]:
        out = {f"{p}.lora_A": self.lora_a[p] for p in self.targets}
        out.update({f"{p}.lora_B": self.lora_b[p] for p in self.targets})
        return out

    @classmethod
    def from_saved(cls, config: dict[str, Any], tensors: dict[str, torch.Tensor]) -> DPOLoRABaseline:
        targets = [str(t) for t in config["targets"]]
        return cls(
            targets=targets,
            lora_a={t: tensors[f"{t}.lora_A"] for t in targets},
            lora_b={t: tensors[f"{t}.lora_B"] for t in targets},
            scaling=float(config["scaling"]),
            fan_in_fan_out=bool(config.get("fan_in_fan_out", False)),
        )


@torch.no_grad()
def _restore(weight: torch.Tensor, original: torch.Tensor) -> None:
    weight.copy_(original)


def encode_pairs(
    tokenizer: Any, pairs: Sequence[PreferencePair], encoding: Encoding
) -> list[tuple[list[int], list[int], list[int]]]:
    """(prompt ids, chosen ids, rejected ids) per pair, truncated as ``encoding`` says."""
    out = []
    for pair in pairs:
        prompt, chosen = encoding.encode(tokenizer, pair.prompt, pair.chosen)
        _, rejected = encoding.encode(tokenizer, pair.prompt, pair.rejected)
        out.append((prompt, chosen, rejected))
    return out


def sequence_logps(
    model: PreTrainedModel, prompts: Sequence[list[int]], responses: Sequence[list[int]], pad_id: int
) -> torch.Tensor:
    """Sum of log p(response token | everything before) per row: [B].

    The LM head (a 49152-way projection and softmax for SmolLM2) runs only on the positions that predict
    a response token: a pre-hook hands it those rows instead of the whole padded batch.
    """
    seqs = [p + r for p, r in zip(prompts, responses, strict=True)]
    ids, mask = pad_batch(seqs, pad_id, padding_side="right")
    device = next(model.parameters()).device
    ids, mask = ids.to(device), mask.to(device)
    # position t predicts token t + 1
    spans = [(i, t) for i, (p, r) in enumerate(zip(prompts, responses, strict=True))
             for t in range(len(p) - 1, len(p) + len(r) - 1)]
    rows = torch.tensor([i for i, _ in spans], dtype=torch.long, device=device)
    cols = torch.tensor([t for _, t in spans], dtype=torch.long, device=device)

    def scored_rows(_m: nn.Module, args: tuple) -> tuple:
        return (args[0][rows, cols][None], *args[1:])

    handle = model.get_output_embeddings().register_forward_pre_hook(scored_rows)
    try:
        logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits[0].float()
    finally:
        handle.remove()
    logp = torch.log_softmax(logits, dim=-1).gather(-1, ids[rows, cols + 1][:, None])[:, 0]
    return torch.zeros(len(seqs), dtype=logp.dtype, device=device).index_add(0, rows, logp)


def dpo_loss(
    pi_chosen: torch.Tensor,
    pi_rejected: torch.Tensor,
    ref_chosen: torch.Tensor,
    ref_rejected: torch.Tensor,
    beta: float,
) -> torch.Tensor:
    margin = (pi_chosen - ref_chosen) - (pi_rejected - ref_rejected)
    return -nn.functional.logsigmoid(beta * margin).mean()


def _pair_logps(
    model: PreTrainedModel, batch: Sequence[tuple[list[int], list[int], list[int]]], pad_id: int
) -> tuple[torch.Tensor, torch.Tensor]:
    prompts = [b[0] for b in batch] * 2
    responses = [b[1] for b in batch] + [b[2] for b in batch]
    logps = sequence_logps(model, prompts, responses, pad_id)
    return logps[: len(batch)], logps[len(batch) :]


def fit_dpo(
    model: PreTrainedModel,
    tokenizer: Any,
    pairs: Sequence[PreferencePair],
    cfg: DPOBaselineConfig,
    encoding: Encoding,
    seed: int = 0,
    progress: bool = False,
) -> tuple[DPOLoRABaseline, dict[str, Any]]:
    """Train a LoRA adapter on ``model`` with the DPO loss; the model is returned to its original modules."""
    if not pairs:
        raise BaselineError("dpo-lora: no preference pairs to train on")
    pad = int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id)
    encoded = encode_pairs(tokenizer, pairs, encoding)
    batches = [encoded[i : i + cfg.batch_size] for i in range(0, len(encoded), cfg.batch_size)]
    with torch.no_grad():  # the reference: the frozen backbone, before any adapter exists
        refs = [_pair_logps(model, batch, pad) for batch in batches]
    from peft import LoraConfig, get_peft_model  # only fitting needs peft; applying merges plain tensors

    targets = target_paths(model)
    torch.manual_seed(seed)
    lora = LoraConfig(
        r=cfg.lora_rank,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=0.0,
        bias="none",
        target_modules=targets,
        fan_in_fan_out=isinstance(model.get_submodule(targets[0]), Conv1D),
    )
    was_training = model.training
    requires_grad = {name: p.requires_grad for name, p in model.named_parameters()}
    peft_model = get_peft_model(model, lora)
    try:
        params = [p for p in peft_model.parameters() if p.requires_grad]
        opt = torch.optim.Adam(params, lr=cfg.lr)
        order = list(range(len(batches)))
        epoch_losses, accuracies = [], []
        for epoch in range(cfg.epochs):
            random.Random(seed + epoch).shuffle(order)
            total, correct = 0.0, 0
            for b in tqdm(order, desc=f"dpo epoch {epoch + 1}", disable=not progress, leave=False):
                pi_c, pi_r = _pair_logps(peft_model, batches[b], pad)
                ref_c, ref_r = refs[b]
                loss = dpo_loss(pi_c, pi_r, ref_c, ref_r, cfg.beta)
                opt.zero_grad()
                loss.backward()
                opt.step()
                total += float(loss.detach()) * len(batches[b])
                correct += int(((pi_c - ref_c) > (pi_r - ref_r)).sum())
            epoch_losses.append(total / len(encoded))
            accuracies.append(correct / len(encoded))
            log.info("dpo epoch %d: loss %.4f, reward accuracy %.3f", epoch + 1, epoch_losses[-1], accuracies[-1])
        lora_a, lora_b = {}, {}
        for path in targets:
            layer = peft_model.base_model.model.get_submodule(path)
            lora_a[path] = layer.lora_A["default"].weight.detach().cpu().clone()
            lora_b[path] = layer.lora_B["default"].weight.detach().cpu().clone()
        scaling = float(layer.scaling["default"])
    finally:
        restored = peft_model.unload()
        restored.train(was_training)
        for name, param in restored.named_parameters():
            param.requires_grad_(requires_grad.get(name, False))
    if restored is not model:
        raise BaselineError("dpo-lora: peft returned a different model object after unloading the adapter")
    baseline = DPOLoRABaseline(targets=targets, lora_a=lora_a, lora_b=lora_b, scaling=scaling,
                               fan_in_fan_out=lora.fan_in_fan_out)
    summary = {
        "pairs": len(encoded),
        "epochs": cfg.epochs,
        "steps": cfg.epochs * len(batches),
        "loss_initial": round(math.log(2.0), 6),
        "epoch_loss": [round(x, 6) for x in epoch_losses],
        "epoch_reward_accuracy": [round(x, 4) for x in accuracies],
        "targets": len(targets),
    }
    return baseline, summary
