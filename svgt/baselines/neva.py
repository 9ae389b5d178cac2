"""NeVA (neuron-level value editing, arXiv 2602.07356): edit a few value-relevant MLP neurons.

Neurons are the MLP's activations entering its output projection (``block_parts(...).mlp_out`` input).
Fit: at each row's last token, for every neuron of every block, the standardised mean difference
d = (mean_safe - mean_harmful) / pooled std; the ``top_neurons`` with the largest |d| are kept. Decoding:
at every position, each kept neuron's activation a becomes a + scale * (mean_safe - mean_harmful); all
other neurons are left bit-identical.

Value leakage (``value_leakage``), what we measure: the read-out is the last block's output at each
held-out row's last token, without and with the edit. Probes fitted on the clean train rows score the
target value (safe response) and each non-target value: the ``leakage_values`` most frequent dataset
``category`` labels among the probe rows, one-vs-rest. With Δ_target = mean change of P(safe) and
Δ_c = mean |change of P(category c)| over the held-out rows,

    leakage_c = Δ_c / |Δ_target|,   leakage = mean over c of leakage_c

i.e. how much the non-target values move per unit of target movement (0 = perfectly specific). The
categories are not independent of safety in our data (e.g. ``benign/*`` rows are all safe), so part of
the measured leakage is real correlation rather than side effect.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from transformers import PreTrainedModel

from svgt.baselines.activations import Encoding, collect_activations
from svgt.baselines.base import Baseline, BaselineError
from svgt.baselines.hooks import add_at, block_parts, decoder_blocks, edit_input
from svgt.baselines.probes import fit_probe
from svgt.core.params import NeVABaselineConfig


@dataclass
class NeVABaseline(Baseline):
    method: ClassVar[str] = "neva"
    layers: torch.Tensor  # [n] int64, 0-based block of each neuron
    neurons: torch.Tensor  # [n] int64, index within the block's MLP activations
    deltas: torch.Tensor  # [n] mean_safe - mean_harmful
    scale: float

    def __post_init__(self) -> None:
        if not self.layers.shape == self.neurons.shape == self.deltas.shape or self.layers.ndim != 1:
            raise BaselineError("neva: layers, neurons and deltas must be 1-D tensors of one length")

    def install(self, model: PreTrainedModel, stack: contextlib.ExitStack) -> None:
        blocks = decoder_blocks(model)
        for layer in sorted(set(self.layers.tolist())):
            if not 0 <= layer < len(blocks):
                raise BaselineError(f"neva: neuron in block {layer} but the model has {len(blocks)} blocks")
            chosen = self.layers == layer
            index, values = self.neurons[chosen], self.scale * self.deltas[chosen]
            edit_input(
                stack,
                block_parts(blocks[layer]).mlp_out,
                lambda x, index=index, values=values: add_at(x, index, values),
            )

    def config_dict(self) -> dict[str, Any]:
        return {"scale": self.scale}

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"layers": self.layers, "neurons": self.neurons, "deltas": self.deltas}

    @classmethod
    def from_saved(cls, config: dict[str, Any], tensors: dict[str, torch.Tensor]) -> NeVABaseline:
        return cls(
            layers=tensors["layers"].long(),
            neurons=tensors["neurons"].long(),
            deltas=tensors["deltas"],
            scale=float(config["scale"]),
        )


def fit_neva(
    mlp_in: torch.Tensor, safe: torch.Tensor, train: torch.Tensor, cfg: NeVABaselineConfig
) -> tuple[NeVABaseline, dict[str, Any]]:
    """``mlp_in`` [N, L, I] neuron activations at the last token; ``safe`` [N]."""
    x = mlp_in[train].double()
    is_safe = safe[train].bool()
    pos, neg = x[is_safe], x[~is_safe]
    delta = pos.mean(0) - neg.mean(0)  # [L, I]
    pooled = ((pos.var(0) * (len(pos) - 1) + neg.var(0) * (len(neg) - 1)) / max(len(x) - 2, 1)).sqrt()
    effect = delta / pooled.clamp_min(1e-6)
    k = min(cfg.top_neurons, effect.numel())
    top = torch.argsort(effect.abs().flatten(), descending=True, stable=True)[:k]
    width = mlp_in.shape[2]
    layers, neurons = top // width, top % width
    baseline = NeVABaseline(layers=layers, neurons=neurons, deltas=delta.flatten()[top].float(), scale=cfg.scale)
    summary = {
        "neurons": [[int(a), int(b)] for a, b in zip(layers, neurons, strict=True)],
        "effect_size": [round(float(e), 4) for e in effect.flatten()[top]],
    }
    return baseline, summary


def value_leakage(
    model: PreTrainedModel,
    tokenizer: Any,
    baseline: NeVABaseline,
    prompts: Sequence[str],
    responses: Sequence[str],
    safe: torch.Tensor,
    categories: Sequence[str],
    clean_read: torch.Tensor,
    split: tuple[torch.Tensor, torch.Tensor],
    encoding: Encoding,
    num_values: int,
    batch_size: int = 8,
    seed: int = 0,
) -> dict[str, Any]:
    """The leakage measure of the module docstring; ``clean_read`` [N, d] is the unedited last block output."""
    train, test = split
    counts: dict[str, int] = {}
    for c in categories:
        counts[c] = counts.get(c, 0) + 1
    values = [c for c, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))][:num_values]
    target = fit_probe(clean_read, safe, train, test, seed=seed)
    probes = {}
    for value in values:
        y = torch.tensor([int(c == value) for c in categories])
        if int(y[train].sum()) >= 2 and int((1 - y[train]).sum()) >= 2:
            probes[value] = fit_probe(clean_read, y, train, test, seed=seed)
    idx = test.tolist()
    with baseline.applied(model):
        edited = collect_activations(
            model,
            tokenizer,
            [prompts[i] for i in idx],
            [responses[i] for i in idx],
            encoding,
            parts=("block_out",),
            batch_size=batch_size,
        ).block_out[:, -1]
    clean = clean_read[test]
    d_target = float((target.probability(edited) - target.probability(clean)).mean())
    moved = {v: float((p.probability(edited) - p.probability(clean)).abs().mean()) for v, p in probes.items()}
    ratio = {v: (m / abs(d_target) if abs(d_target) > 1e-9 else None) for v, m in moved.items()}
    finite = [r for r in ratio.values() if r is not None]
    return {
        "read_out": "last block output at the last token, held-out rows",
        "target_value": "safe response (response_harmful == 0)",
        "non_target_values": "one-vs-rest probes on the most frequent `category` labels",
        "rows": len(idx),
        "target_probe_accuracy": round(target.accuracy, 4),
        "delta_target": round(d_target, 6),
        "delta_non_target": {v: round(m, 6) for v, m in moved.items()},
        "leakage_per_value": {v: (round(r, 4) if r is not None else None) for v, r in ratio.items()},
        "leakage": round(sum(finite) / len(finite), 4) if finite else None,
    }
