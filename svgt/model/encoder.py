"""The value encoder: backbone hidden states at layer l* -> a value state z in the independent value space.

Two paths (SVGT, NOTES section 1):

* unconditional  z_u = pool(TransformerEncoder(LayerNorm(Linear_d->d_v(H))))  -- context-free value prior;
* conditional    z_c = pool(LayerNorm(CrossAttn(q = encoded tokens, k = v = prompt_proj(H_prompt))))
  and ``z = z_u + scale * z_c`` with a learnable scalar ``scale`` (initialised to ``cross_scale_init``).

Stage 1 trains only the unconditional path (no prompt states are passed); stage 2 adds the conditional
path with a higher learning rate, which is why the two parameter sets are exposed separately.

Masks follow the Hugging Face convention: ``True`` (or 1) marks a real token, ``False`` (0) padding.
Rows with no real token at all produce exactly zero contributions rather than NaN.
"""

from __future__ import annotations

import torch
from torch import nn

from svgt.model.config import ValueModuleConfig

# submodules of ValueEncoder that belong to the conditional (stage-2) path
CONDITIONAL_PREFIXES = ("prompt_proj", "cross_attn", "cross_norm", "cross_pool", "cross_scale")


def _ensure_valid_row(mask: torch.Tensor) -> torch.Tensor:
    """Key padding mask for torch attention (True = ignore) that never ignores a whole row.

    Attention over a row whose keys are all masked is a softmax over -inf (NaN). Such rows get their
    first position unmasked; callers zero those rows' outputs afterwards, so the value is irrelevant.
    """
    ignore = ~mask
    empty = ~mask.any(dim=1)
    if empty.any():
        ignore = ignore.clone()
        ignore[empty, 0] = False
    return ignore


class LastTokenPooling(nn.Module):
    """The state of each row's last real token (works for left and right padding); zeros for empty rows."""

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(x.shape[1], device=x.device).expand_as(mask)
        last = torch.where(mask, positions, -1).max(dim=1).values  # [B], -1 for empty rows
        picked = x[torch.arange(x.shape[0], device=x.device), last.clamp(min=0)]
        return picked * (last >= 0).unsqueeze(-1).to(x.dtype)


class AttentionPooling(nn.Module):
    """A learned query scoring every real token; softmax-weighted sum. Zeros for empty rows."""

    def __init__(self, width: int):
        super().__init__()
        self.score = nn.Linear(width, 1)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        scores = self.score(x).squeeze(-1)  # [B, T]
        nonempty = mask.any(dim=1, keepdim=True)
        # empty rows keep finite scores (uniform softmax) and are zeroed below, so no -inf-only softmax
        scores = torch.where(nonempty, scores.masked_fill(~mask, float("-inf")), torch.zeros_like(scores))
        weights = torch.softmax(scores, dim=1) * nonempty.to(x.dtype)
        return torch.einsum("bt,btd->bd", weights, x)


def make_pooling(kind: str, width: int) -> nn.Module:
    if kind == "last":
        return LastTokenPooling()
    if kind == "attention":
        return AttentionPooling(width)
    raise ValueError(f"unknown pooling {kind!r} (expected 'last' or 'attention')")


class ValueEncoder(nn.Module):
    """Encodes per-token layer-l* states (prompt in stage 1, response in stage 2+) into z [B, d_v]."""

    def __init__(self, config: ValueModuleConfig):
        super().__init__()
        d, d_v = config.hidden_size, config.d_v
        self.hidden_size = d
        # unconditional path
        self.in_proj = nn.Linear(d, d_v)
        self.in_norm = nn.LayerNorm(d_v)
        layer = nn.TransformerEncoderLayer(
            d_model=d_v,
            nhead=config.encoder_heads,
            dim_feedforward=4 * d_v,
            dropout=config.dropout,
            activation="gelu",
            batch_first=True,
            norm_first=True,
        )
        layer.self_attn.dropout = config.attention_dropout  # ``dropout`` above covers residual and feed-forward
        # norm_first layers leave the residual stream un-normalised: a final norm keeps z_u on a fixed scale
        self.transformer = nn.TransformerEncoder(
            layer, num_layers=config.encoder_layers, norm=nn.LayerNorm(d_v), enable_nested_tensor=False
        )
        self.pool = make_pooling(config.pooling, d_v)
        # conditional path (names must start with one of CONDITIONAL_PREFIXES)
        self.prompt_proj = nn.Sequential(nn.Linear(d, d_v), nn.LayerNorm(d_v))
        self.cross_attn = nn.MultiheadAttention(
            d_v, config.cross_attn_heads, dropout=config.attention_dropout, batch_first=True
        )
        self.cross_norm = nn.LayerNorm(d_v)
        # a separate pooler so the conditional parameter group owns everything the cross path learns
        self.cross_pool = make_pooling(config.pooling, d_v)
        self.cross_scale = nn.Parameter(torch.tensor(float(config.cross_scale_init)))

    def unconditional_parameters(self) -> list[nn.Parameter]:
        """Stage-1 parameters (the 'old' group of stage 2, trained at a low learning rate)."""
        return [p for name, p in self.named_parameters() if not name.startswith(CONDITIONAL_PREFIXES)]

    def conditional_parameters(self) -> list[nn.Parameter]:
        """Prompt projection, cross-attention, its norm, pooler and scale (the 'new' group of stage 2)."""
        return [p for name, p in self.named_parameters() if name.startswith(CONDITIONAL_PREFIXES)]

    def forward(
        self,
        states: torch.Tensor,
        mask: torch.Tensor | None = None,
        prompt_states: torch.Tensor | None = None,
        prompt_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """z [B, d_v] for token states [B, T, d]; the conditional path runs only when prompt states are given."""
        mask = self._check(states, mask, "states")
        if states.shape[1] == 0:  # nothing to encode: the same zeros an all-padded row gets
            return self.in_proj.weight.new_zeros(states.shape[0], self.in_proj.out_features)
        x = self.in_norm(self.in_proj(states.to(self.in_proj.weight.dtype)))
        x = self.transformer(x, src_key_padding_mask=_ensure_valid_row(mask))
        z = self.pool(x, mask)
        if prompt_states is None:
            return z
        prompt_mask = self._check(prompt_states, prompt_mask, "prompt_states")
        if prompt_states.shape[0] != states.shape[0]:
            raise ValueError(f"prompt_states has batch {prompt_states.shape[0]}, states has {states.shape[0]}")
        return z + self.cross_scale * self._conditional(x, mask, prompt_states, prompt_mask)

    def _conditional(
        self, x: torch.Tensor, mask: torch.Tensor, prompt_states: torch.Tensor, prompt_mask: torch.Tensor
    ) -> torch.Tensor:
        """Pooled, normalised cross-attention from encoded tokens to the prompt; zero for rows without a prompt."""
        has_prompt = prompt_mask.any(dim=1)
        if prompt_states.shape[1] == 0 or not has_prompt.any():
            return x.new_zeros(x.shape[0], x.shape[2])
        p = self.prompt_proj(prompt_states.to(self.in_proj.weight.dtype))
        cross, _ = self.cross_attn(
            x, p, p, key_padding_mask=_ensure_valid_row(prompt_mask), need_weights=False
        )
        pooled = self.cross_pool(self.cross_norm(cross), mask)
        return pooled * has_prompt.unsqueeze(-1).to(pooled.dtype)

    def _check(self, states: torch.Tensor, mask: torch.Tensor | None, name: str) -> torch.Tensor:
        """Validate shapes early (a wrong layer or width would otherwise fail deep inside attention)."""
        if states.dim() != 3 or states.shape[-1] != self.hidden_size:
            raise ValueError(f"{name} must be [batch, tokens, {self.hidden_size}], got {list(states.shape)}")
        if mask is None:
            return torch.ones(states.shape[:2], dtype=torch.bool, device=states.device)
        if mask.shape != states.shape[:2]:
            raise ValueError(f"mask for {name} must be {list(states.shape[:2])}, got {list(mask.shape)}")
        return mask.bool()
