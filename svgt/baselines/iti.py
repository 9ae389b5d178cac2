"""ITI (Inference-Time Intervention, Li et al. 2023): shift the most informative attention heads.

Fit: at each row's last token, read every head's output (the input of the attention output projection,
split into heads), probe safe-vs-harmful per head, keep the ``top_k`` heads by held-out probe accuracy.
Each kept head gets the mass-mean direction (mean safe minus mean harmful, unit length) and the standard
deviation of the activations projected on it. Decoding: at every position, the kept heads' outputs get
``alpha * sigma * direction`` added before the output projection; every other head is left bit-identical.

The strength alpha is chosen as the ITI paper does, by its side effect: the largest value of
``iti.alphas`` whose mean per-token KL(unguided || ITI) along benign prompts' answers (held-out probe rows,
teacher-forced) stays within ``iti.max_kl`` nats, unless ``iti.alpha`` fixes it. On the embedded backbone a
fixed alpha of 5 made every answer empty (EOS first).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from transformers import PreTrainedModel

from svgt.backbone.batching import pad_batch
from svgt.baselines.activations import Encoding
from svgt.baselines.base import Baseline, BaselineError
from svgt.baselines.hooks import add_at, block_parts, decoder_blocks, edit_input
from svgt.baselines.probes import fit_probe
from svgt.core.params import ITIBaselineConfig

log = logging.getLogger(__name__)


@dataclass
class ITIBaseline(Baseline):
    method: ClassVar[str] = "iti"
    heads: list[tuple[int, int]]  # (0-based block, head)
    head_dim: int
    directions: torch.Tensor  # [k, head_dim], unit length
    sigmas: torch.Tensor  # [k]
    alpha: float

    def __post_init__(self) -> None:
        k = len(self.heads)
        if tuple(self.directions.shape) != (k, self.head_dim) or tuple(self.sigmas.shape) != (k,):
            raise BaselineError(
                f"iti: {k} heads need directions [{k}, {self.head_dim}] and sigmas [{k}], got "
                f"{tuple(self.directions.shape)} and {tuple(self.sigmas.shape)}"
            )

    def shifts(self) -> torch.Tensor:
        return self.alpha * self.sigmas[:, None] * self.directions

    def install(self, model: PreTrainedModel, stack: contextlib.ExitStack) -> None:
        blocks = decoder_blocks(model)
        shifts = self.shifts()
        for layer in sorted({layer for layer, _ in self.heads}):
            if not 0 <= layer < len(blocks):
                raise BaselineError(f"iti: head in block {layer} but the model has {len(blocks)} blocks")
            chosen = [i for i, (lyr, _) in enumerate(self.heads) if lyr == layer]
            index = torch.cat(
                [torch.arange(self.heads[i][1] * self.head_dim, (self.heads[i][1] + 1) * self.head_dim) for i in chosen]
            )
            values = torch.cat([shifts[i] for i in chosen])
            edit_input(
                stack,
                block_parts(blocks[layer]).attn_out,
                lambda x, index=index, values=values: add_at(x, index, values),
            )

    def config_dict(self) -> dict[str, Any]:
        return {"heads": [list(h) for h in self.heads], "head_dim": self.head_dim, "alpha": self.alpha}

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"directions": self.directions, "sigmas": self.sigmas}

    @classmethod
    def from_saved(cls, config: dict[str, Any], tensors: dict[str, torch.Tensor]) -> ITIBaseline:
        return cls(
            heads=[(int(a), int(b)) for a, b in config["heads"]],
            head_dim=int(config["head_dim"]),
            directions=tensors["directions"],
            sigmas=tensors["sigmas"],
            alpha=float(config["alpha"]),
        )


def fit_iti(
    attn_in: torch.Tensor,
    safe: torch.Tensor,
    train: torch.Tensor,
    test: torch.Tensor,
    num_heads: int,
    cfg: ITIBaselineConfig,
    seed: int = 0,
) -> tuple[ITIBaseline, dict[str, Any]]:
    """``attn_in`` [N, L, heads * head_dim] at the last token; ``safe`` [N] 1 = safe response, 0 = harmful."""
    n, num_layers, width = attn_in.shape
    if width % num_heads:
        raise BaselineError(f"iti: attention projection input width {width} is not a multiple of {num_heads} heads")
    head_dim = width // num_heads
    heads = attn_in.reshape(n, num_layers, num_heads, head_dim)
    accuracy = torch.zeros(num_layers, num_heads)
    for layer in range(num_layers):
        for head in range(num_heads):
            accuracy[layer, head] = fit_probe(heads[:, layer, head], safe, train, test, seed=seed).accuracy
    k = min(cfg.top_k, num_layers * num_heads)
    top = torch.argsort(accuracy.flatten(), descending=True, stable=True)[:k]
    chosen = [(int(i) // num_heads, int(i) % num_heads) for i in top]
    directions, sigmas = [], []
    is_safe = safe[train].bool()
    for layer, head in chosen:
        x = heads[train, layer, head]
        direction = x[is_safe].mean(0) - x[~is_safe].mean(0)
        direction = direction / direction.norm().clamp_min(1e-12)
        directions.append(direction)
        sigmas.append((x @ direction).std())
    baseline = ITIBaseline(
        heads=chosen, head_dim=head_dim, directions=torch.stack(directions), sigmas=torch.stack(sigmas),
        alpha=cfg.alpha if cfg.alpha is not None else max(cfg.alphas),  # None: ``choose_alpha`` sets it after the fit
    )
    summary = {
        "heads": [list(h) for h in chosen],
        "head_accuracy": [round(float(accuracy[h]), 4) for h in chosen],
        "best_layer_accuracy": [round(float(a), 4) for a in accuracy.max(dim=1).values],
        "num_heads": num_heads,
        "head_dim": head_dim,
    }
    log.info(
        "iti: top %d heads, held-out probe accuracy %.3f..%.3f",
        k,
        accuracy.flatten()[top].min(),
        accuracy.flatten()[top].max(),
    )
    return baseline, summary


@torch.no_grad()
def side_effect_kl(model: PreTrainedModel, tokenizer: Any, baseline: ITIBaseline, rows: list[tuple[str, str]],
                   alphas: list[float], encoding: Encoding, batch_size: int = 8) -> dict[float, float]:
    """Per alpha: the mean per-token KL(unguided || ITI at alpha), nats, of the next-token distributions
    along each (prompt, answer) row's answer tokens, teacher-forced."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    device = next(model.parameters()).device
    sums = dict.fromkeys(alphas, 0.0)
    tokens = 0
    for start in range(0, len(rows), batch_size):
        encoded = [encoding.encode(tokenizer, p, r) for p, r in rows[start:start + batch_size]]
        ids, mask = pad_batch([p + r for p, r in encoded], int(pad), padding_side="right")
        ids, mask = ids.to(device), mask.to(device)
        # position t predicts token t + 1: the answer's tokens are predicted from len(p) - 1 on
        keep = torch.zeros_like(mask, dtype=torch.bool)
        for i, (p, r) in enumerate(encoded):
            keep[i, len(p) - 1: len(p) + len(r) - 1] = True
        base = torch.log_softmax(model(input_ids=ids, attention_mask=mask).logits[keep].float(), dim=-1)
        tokens += int(keep.sum())
        for alpha in alphas:
            with dataclasses.replace(baseline, alpha=alpha).applied(model):
                shifted = torch.log_softmax(model(input_ids=ids, attention_mask=mask).logits[keep].float(), dim=-1)
            sums[alpha] += float((base.exp() * (base - shifted)).sum())
    return {alpha: total / max(tokens, 1) for alpha, total in sums.items()}


def choose_alpha(kls: dict[float, float], max_kl: float) -> float:
    """The largest alpha whose side effect stays within ``max_kl`` (the smallest one tried if none does)."""
    within = [alpha for alpha, kl in kls.items() if kl <= max_kl]
    if not within:
        log.warning("iti: every alpha tried exceeds max_kl %.3g nats/token (smallest: %.3g at alpha %g); using it",
                    max_kl, min(kls.values()), min(kls))
        return min(kls)
    return max(within)
