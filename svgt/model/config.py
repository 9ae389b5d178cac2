"""The value module's hyper-parameters: one frozen, validated dataclass that travels with the weights.

The config is saved beside the weights (``config.json``) so a module can be rebuilt without the
params.yaml that trained it; parsing is strict (unknown keys and wrong types are named) because a
silently ignored key would rebuild a different network than the one whose weights are loaded.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

from svgt.core.errors import VerificationFailed
from svgt.core.params import ConfigError
from svgt.core.params import from_dict as _typed_from_dict


class ValueModuleError(VerificationFailed, ValueError):
    """A value module (or its config or files) is invalid, tampered with, or does not fit the backbone."""


Pooling = Literal["last", "attention"]
Gate = Literal["off", "fixed", "calibrated"]
RefreshContext = Literal["token", "response"]


@dataclass(frozen=True)
class GatePoint:
    """One calibrated operating point of the gate: the thresholds at which at most ``budget`` of the
    validation split's benign prompts (and answers) open it."""

    budget: float
    threshold: float
    response_threshold: float | None = None


@dataclass(frozen=True)
class ValueModuleConfig:
    """Hyper-parameters of one value module (the SVGT encoder, discriminator, bridge and inject projector).

    ``hidden_size`` and ``layer`` describe the backbone the module reads (width d and the 1-based decoder
    block l* whose output it reads and where the bridge is inserted); they have no defaults because a
    wrong guess would only fail much later, at generation time.
    """

    hidden_size: int  # d: backbone width
    layer: int  # l*: 1-based decoder block whose output is read / followed by the bridge
    d_v: int = 128  # value-space width
    encoder_layers: int = 2
    encoder_heads: int = 4
    pooling: Pooling = "last"
    dropout: float = 0.1  # residual and feed-forward dropout of the encoder
    # dropout on attention weights: 0 by default, since on CPU it forces the unfused attention kernel
    # (stage 1-2 steps 23% slower) for a regulariser the residual dropout already provides
    attention_dropout: float = 0.0
    cross_attn_heads: int = 4
    cross_scale_init: float = 3.0  # lambda in z = z_u + lambda * LayerNorm(cross)
    num_bridge_tokens: int = 5  # K
    gate_init: float = -2.0  # bridge alpha = softplus(gate): ~0.127 at -2
    # how the K seed queries read [h_v; proj(dz)]: "single" (one head, no projections) or "multihead" (learned
    # q/k/v/out projections, bridge_heads heads, as the authors' code)
    bridge_retrieval: Literal["single", "multihead"] = "single"
    bridge_heads: int = 4
    correction_step: float = 1.0  # multiplier of the first-order step to the boundary D = 0
    reg_margin: float = 0.2  # tau of the manifold regulariser
    refresh_interval: int = 5  # r: recompute the bridge every r generated tokens
    momentum: float = 0.8  # beta: weight of the OLD bridge in the momentum update
    # when guidance acts (svgt/decoding/guidance.py): "off" guides every prompt (the paper); "fixed" / "calibrated" only
    # rows whose score s exceeds gate_threshold (judged on the prompt, then on the response so far at each
    # refresh); "calibrated": stage 3 sets gate_threshold so that at most gate_budget of the validation benign
    # prompts open the gate
    gate: Gate = "off"
    gate_threshold: float = 0.0
    gate_budget: float = 0.05
    # the threshold for an answer in progress (judged at each refresh); None: gate_threshold
    gate_response_threshold: float | None = None
    # more budgets that calibration also turns into operating points (``gate_points``, set in stage 3), to pick per
    # request (``ValueModule.at_gate_budget``) or compare on the frontier
    gate_budgets: list[float] = dataclasses.field(default_factory=list)
    gate_points: list[GatePoint] = dataclasses.field(default_factory=list)
    # what a refresh judges: "token" (the current token's state in its prompt's context; h_v = that token) or
    # "response" (every token generated so far in the prompt's context; h_v stays the prompt's last state)
    refresh_context: RefreshContext = "token"

    @property
    def threshold(self) -> float | None:
        """The score above which guidance acts (None: the gate is off and every row is guided)."""
        return None if self.gate == "off" else self.gate_threshold

    @property
    def response_threshold(self) -> float | None:
        """The score above which an answer in progress opens the gate (None: the gate is off)."""
        if self.gate == "off":
            return None
        return self.gate_threshold if self.gate_response_threshold is None else self.gate_response_threshold

    def __post_init__(self) -> None:
        problems = _problems(self)
        if problems:
            raise ValueModuleError(f"ValueModuleConfig: {'; '.join(problems)}")

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready data (what ``config.json`` stores)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> ValueModuleConfig:
        """Strict inverse of :meth:`to_dict`: unknown or missing keys and wrong types are named."""
        if not isinstance(raw, dict):
            raise ValueModuleError(f"ValueModuleConfig: expected a mapping, got {type(raw).__name__}")
        required = [f.name for f in dataclasses.fields(cls)
                    if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
        missing = [name for name in required if name not in raw]
        try:
            if missing:
                raise ConfigError(f"missing key(s): {', '.join(missing)}")
            return _typed_from_dict(cls, raw, "")
        except ConfigError as err:
            raise ValueModuleError(f"ValueModuleConfig: {err}") from None


def _problems(cfg: ValueModuleConfig) -> list[str]:
    """Every constraint the networks rely on, checked once so construction never fails half-way."""
    problems = []
    positive = ("hidden_size", "layer", "d_v", "encoder_layers", "encoder_heads", "cross_attn_heads",
                "num_bridge_tokens", "refresh_interval")
    problems += [f"{name} must be >= 1, got {getattr(cfg, name)}" for name in positive if getattr(cfg, name) < 1]
    if cfg.d_v < 2:
        problems.append(f"d_v must be >= 2 (the discriminator's hidden width is d_v // 2), got {cfg.d_v}")
    for heads in ("encoder_heads", "cross_attn_heads"):
        if getattr(cfg, heads) >= 1 and cfg.d_v % getattr(cfg, heads):
            problems.append(f"d_v={cfg.d_v} is not divisible by {heads}={getattr(cfg, heads)}")
    if cfg.pooling not in ("last", "attention"):
        problems.append(f"pooling must be 'last' or 'attention', got {cfg.pooling!r}")
    for name in ("dropout", "attention_dropout"):
        if not 0.0 <= getattr(cfg, name) < 1.0:
            problems.append(f"{name} must be in [0, 1), got {getattr(cfg, name)}")
    if not 0.0 <= cfg.momentum <= 1.0:
        problems.append(f"momentum must be in [0, 1], got {cfg.momentum}")
    if cfg.correction_step < 0:
        problems.append(f"correction_step must be >= 0, got {cfg.correction_step}")
    if cfg.reg_margin < 0:
        problems.append(f"reg_margin must be >= 0, got {cfg.reg_margin}")
    if cfg.bridge_retrieval not in ("single", "multihead"):
        problems.append(f"bridge_retrieval must be 'single' or 'multihead', got {cfg.bridge_retrieval!r}")
    if cfg.bridge_heads < 1 or cfg.hidden_size % cfg.bridge_heads:
        problems.append(f"bridge_heads={cfg.bridge_heads} must be >= 1 and divide hidden_size={cfg.hidden_size}")
    if cfg.gate not in ("off", "fixed", "calibrated"):
        problems.append(f"gate must be 'off', 'fixed' or 'calibrated', got {cfg.gate!r}")
    for budget in (cfg.gate_budget, *cfg.gate_budgets, *(p.budget for p in cfg.gate_points)):
        if not 0.0 <= budget <= 1.0:
            problems.append(f"gate budgets must be in [0, 1], got {budget}")
    if cfg.refresh_context not in ("token", "response"):
        problems.append(f"refresh_context must be 'token' or 'response', got {cfg.refresh_context!r}")
    return problems
