"""ConVA (Controlled Value Vector Activation, arXiv 2507.11316): gated, closed-form steering along probe normals.

Fit: per decoder block, a linear probe p_l(e) = sigmoid(w . e + b) on the block output at each row's last
token, safe (1) vs harmful (0) responses: w is the value vector. Steered blocks: probe accuracy above
``accuracy_threshold``, never the last ``excluded_last`` blocks (if no block qualifies, the single best
eligible one, flagged in the summary). Per steered block a relevance gate g_l: a linear probe on the
prompt's last-token state, harmful (relevant) vs benign prompts.

Decoding, at every position of a steered block's output e: where g_l(e) >= ``gate_threshold`` and
p_l(e) < p0, move e along w by the smallest step that makes the probe say p0:

    e' = e + eps * w / |w|,   eps = (logit(p0) - b - w . e) / |w|    (so that p_l(e') = p0 exactly)

Elsewhere e is unchanged. The gate is evaluated per position on the same state (our stateless stand-in
for ConVA's per-input gate), so the hook needs no memory across decoding steps.
"""

from __future__ import annotations

import contextlib
import logging
import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from transformers import PreTrainedModel

from svgt.baselines.base import Baseline, BaselineError
from svgt.baselines.hooks import decoder_blocks, edit_output
from svgt.baselines.probes import fit_probe
from svgt.core.params import ConVABaselineConfig

log = logging.getLogger(__name__)


def conva_epsilon(e: torch.Tensor, w: torch.Tensor, b: float | torch.Tensor, p0: float) -> torch.Tensor:
    """The signed step along w/|w| that puts sigmoid(w . e' + b) at p0: [...]."""
    norm = w.norm()
    return (math.log(p0 / (1.0 - p0)) - b - e @ w) / norm


def conva_steer(
    e: torch.Tensor,
    w: torch.Tensor,
    b: float | torch.Tensor,
    p0: float,
    gate_w: torch.Tensor,
    gate_b: float | torch.Tensor,
    gate_threshold: float,
) -> torch.Tensor:
    """e [..., d] steered where the gate is open and the probe is below p0; other positions untouched."""
    x = e.float()
    w, gate_w = w.to(x.device, torch.float32), gate_w.to(x.device, torch.float32)
    eps = conva_epsilon(x, w, b, p0)
    gate = torch.sigmoid(x @ gate_w + gate_b) >= gate_threshold
    steer = gate & (eps > 0)
    steered = x + eps[..., None] * (w / w.norm())
    return torch.where(steer[..., None], steered.to(e.dtype), e)


@dataclass
class ConVABaseline(Baseline):
    method: ClassVar[str] = "conva"
    layers: list[int]  # 0-based blocks whose output is steered
    weights: torch.Tensor  # [n, d] value vectors
    biases: torch.Tensor  # [n]
    gate_weights: torch.Tensor  # [n, d]
    gate_biases: torch.Tensor  # [n]
    target_probability: float
    gate_threshold: float

    def __post_init__(self) -> None:
        if not 0.0 < self.target_probability < 1.0:
            raise BaselineError(f"conva: target_probability must lie in (0, 1), got {self.target_probability}")
        n = len(self.layers)
        shapes = [tuple(t.shape[:1]) for t in (self.weights, self.biases, self.gate_weights, self.gate_biases)]
        if any(s != (n,) for s in shapes):
            raise BaselineError(f"conva: {n} layers but probe tensors of leading sizes {shapes}")

    def install(self, model: PreTrainedModel, stack: contextlib.ExitStack) -> None:
        blocks = decoder_blocks(model)
        for i, layer in enumerate(self.layers):
            if not 0 <= layer < len(blocks):
                raise BaselineError(f"conva: block {layer} does not exist (the model has {len(blocks)})")
            args = (
                self.weights[i],
                float(self.biases[i]),
                self.target_probability,
                self.gate_weights[i],
                float(self.gate_biases[i]),
                self.gate_threshold,
            )
            edit_output(stack, blocks[layer], lambda e, args=args: conva_steer(e, *args))

    def config_dict(self) -> dict[str, Any]:
        return {
            "layers": self.layers,
            "target_probability": self.target_probability,
            "gate_threshold": self.gate_threshold,
        }

    def tensors(self) -> dict[str, torch.Tensor]:
        return {
            "weights": self.weights,
            "biases": self.biases,
            "gate_weights": self.gate_weights,
            "gate_biases": self.gate_biases,
        }

    @classmethod
    def from_saved(cls, config: dict[str, Any], tensors: dict[str, torch.Tensor]) -> ConVABaseline:
        return cls(
            layers=[int(x) for x in config["layers"]],
            weights=tensors["weights"],
            biases=tensors["biases"],
            gate_weights=tensors["gate_weights"],
            gate_biases=tensors["gate_biases"],
            target_probability=float(config["target_probability"]),
            gate_threshold=float(config["gate_threshold"]),
        )


def fit_conva(
    block_out: torch.Tensor,
    safe: torch.Tensor,
    split: tuple[torch.Tensor, torch.Tensor],
    gate_out: torch.Tensor,
    relevant: torch.Tensor,
    gate_split: tuple[torch.Tensor, torch.Tensor],
    cfg: ConVABaselineConfig,
    seed: int = 0,
) -> tuple[ConVABaseline, dict[str, Any]]:
    """``block_out`` [N, L, d] pair states (labels ``safe``); ``gate_out`` [G, L, d] prompt states (``relevant``)."""
    num_layers = block_out.shape[1]
    eligible = num_layers - cfg.excluded_last
    if eligible < 1:
        raise BaselineError(f"conva: excluded_last={cfg.excluded_last} leaves no layer of {num_layers} to steer")
    probes = [fit_probe(block_out[:, layer], safe, *split, seed=seed) for layer in range(eligible)]
    accuracy = [p.accuracy for p in probes]
    layers = [i for i, a in enumerate(accuracy) if a > cfg.accuracy_threshold]
    fallback = not layers
    if fallback:
        layers = [max(range(eligible), key=lambda i: accuracy[i])]
        log.warning(
            "conva: no layer's probe beats accuracy %.2f (best %.3f at block %d); steering that one only",
            cfg.accuracy_threshold,
            accuracy[layers[0]],
            layers[0] + 1,
        )
    gates = [fit_probe(gate_out[:, layer], relevant, *gate_split, seed=seed) for layer in layers]
    baseline = ConVABaseline(
        layers=layers,
        weights=torch.stack([probes[i].weight for i in layers]),
        biases=torch.tensor([probes[i].bias for i in layers]),
        gate_weights=torch.stack([g.weight for g in gates]),
        gate_biases=torch.tensor([g.bias for g in gates]),
        target_probability=cfg.target_probability,
        gate_threshold=cfg.gate_threshold,
    )
    summary = {
        "layers": layers,
        "fallback_single_layer": fallback,
        "probe_accuracy": [round(a, 4) for a in accuracy],
        "gate_accuracy": [round(g.accuracy, 4) for g in gates],
    }
    return baseline, summary
