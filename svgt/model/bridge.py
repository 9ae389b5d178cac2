"""The latent value bridge: (h_v, dz) -> K bridge tokens in the backbone's width, plus the inject ablation.

Bridge (SVGT): a two-entry bank C = [h_v ; proj(dz)] ([B, 2, d]); K learned seed queries Q retrieve from it
with single-head scaled dot-product attention, B_raw = softmax(Q C^T / sqrt(d)) C, and the output is
anchored on h_v through a gated residual, B = LN_h(1_K h_v + softplus(gate) * B_raw).

LN_h is the paper's LayerNorm (learnable affine) mapped back onto the anchor's own statistics:
LN_h(x) = LayerNorm(x) * std(h_v) + mean(h_v), per row. A plain LayerNorm puts every bridge token at norm
~sqrt(d), far from the backbone's layer-l* scale (SmolLM2-135M, layer 15: |h_v| ~ 137 vs sqrt(576) = 24),
which the later layers read as off-manifold outliers and generation degrades. With LN_h a closed gate
gives exactly K copies of h_v, and the manifold regulariser starts near zero. The small initial gate
(softplus(-2) ~ 0.127) keeps early training close to "insert h_v K times".

``retrieval="multihead"`` replaces the single projection-free attention with multi-head attention with
learned query/key/value/output projections, as the authors' code does: without projections every seed query
can only mix the same two bank vectors, so the K tokens are near-copies of one mix of [h_v; proj(dz)].
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class LatentValueBridge(nn.Module):
    """Maps h_v [B, d] (layer-l* state of the last prompt token) and dz [B, d_v] to bridge tokens [B, K, d]."""

    def __init__(self, hidden_size: int, d_v: int, num_tokens: int, gate_init: float = -2.0,
                 retrieval: str = "single", heads: int = 4):
        super().__init__()
        if retrieval not in ("single", "multihead"):
            raise ValueError(f"retrieval must be 'single' or 'multihead', got {retrieval!r}")
        self.hidden_size = hidden_size
        self.proj = nn.Sequential(nn.Linear(d_v, hidden_size), nn.GELU(), nn.Linear(hidden_size, hidden_size))
        self.queries = nn.Parameter(torch.randn(num_tokens, hidden_size) * 0.02)
        self.gate = nn.Parameter(torch.tensor(float(gate_init)))
        self.norm = nn.LayerNorm(hidden_size)
        self.attention = nn.MultiheadAttention(hidden_size, heads, batch_first=True) if retrieval == "multihead" \
            else None

    @property
    def alpha(self) -> torch.Tensor:
        """The residual weight softplus(gate) (always positive)."""
        return F.softplus(self.gate)

    def forward(self, h_v: torch.Tensor, dz: torch.Tensor) -> torch.Tensor:
        if h_v.dim() != 2 or h_v.shape[-1] != self.hidden_size:
            raise ValueError(f"h_v must be [batch, {self.hidden_size}], got {list(h_v.shape)}")
        if dz.dim() != 2 or dz.shape[0] != h_v.shape[0]:
            raise ValueError(f"dz must be [{h_v.shape[0]}, d_v], got {list(dz.shape)}")
        h_v = h_v.to(self.queries.dtype)
        raw = self.retrieve(h_v, dz)
        return self.anchor_norm(h_v.unsqueeze(1) + self.alpha * raw, h_v)

    def retrieve(self, h_v: torch.Tensor, dz: torch.Tensor) -> torch.Tensor:
        """B_raw [B, K, d]: what the K seed queries read from the bank C = [h_v; proj(dz)]."""
        bank = torch.stack([h_v, self.proj(dz.to(self.queries.dtype))], dim=1)  # C: [B, 2, d]
        if self.attention is not None:
            queries = self.queries.unsqueeze(0).expand(bank.shape[0], -1, -1)
            return self.attention(queries, bank, bank, need_weights=False)[0]
        weights = torch.softmax(torch.einsum("kd,bnd->bkn", self.queries, bank) / math.sqrt(self.hidden_size), -1)
        return torch.einsum("bkn,bnd->bkd", weights, bank)

    def anchor_norm(self, x: torch.Tensor, h_v: torch.Tensor) -> torch.Tensor:
        """LayerNorm of ``x`` [B, K, d] rescaled to the mean and spread of its anchor ``h_v`` [B, d]."""
        mean = h_v.mean(dim=-1, keepdim=True).unsqueeze(1)
        std = h_v.std(dim=-1, unbiased=False, keepdim=True).unsqueeze(1)
        return self.norm(x) * std + mean


def manifold_penalties(bridge: torch.Tensor, h_v: torch.Tensor, margin: float = 0.2) -> torch.Tensor:
    """[B, K]: max(0, | |B_k| / |h_v| - 1 | - margin) per example and bridge token.

    Penalises bridge tokens whose energy strays from the anchor's by more than ``margin`` (relative),
    keeping them at a scale the backbone's later layers have seen. ``bridge`` [B, K, d], ``h_v`` [B, d].
    """
    ratio = bridge.norm(dim=-1) / h_v.norm(dim=-1, keepdim=True).clamp_min(torch.finfo(h_v.dtype).tiny)
    return torch.relu((ratio - 1.0).abs() - margin)


def manifold_regulariser(bridge: torch.Tensor, h_v: torch.Tensor, margin: float = 0.2) -> torch.Tensor:
    """The mean of :func:`manifold_penalties` over batch and bridge tokens."""
    return manifold_penalties(bridge, h_v, margin).mean()


def momentum_update(old: torch.Tensor | None, new: torch.Tensor, beta: float) -> torch.Tensor:
    """Smoothed bridge for a refresh: ``beta * old + (1 - beta) * new``.

    ``beta`` weights the OLD (currently inserted) bridge, so beta = 0.8 keeps 80 % of it and takes 20 % of
    the freshly computed one; beta = 0 means no smoothing. ``old=None`` (the first bridge) returns ``new``.
    """
    if not 0.0 <= beta <= 1.0:
        raise ValueError(f"beta must be in [0, 1], got {beta}")
    if old is None:
        return new
    return beta * old + (1.0 - beta) * new


class InjectProjector(nn.Module):
    """SVGT-Inject ablation: dz -> a residual-stream vector [B, d] added to the backbone's states directly.

    Zero-initialised so it starts as an exact no-op; ``strength`` is a learnable scalar multiplier.
    """

    def __init__(self, hidden_size: int, d_v: int, strength_init: float = 1.0):
        super().__init__()
        self.proj = nn.Linear(d_v, hidden_size)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)
        self.strength = nn.Parameter(torch.tensor(float(strength_init)))

    def forward(self, dz: torch.Tensor) -> torch.Tensor:
        return self.strength * self.proj(dz.to(self.proj.weight.dtype))
