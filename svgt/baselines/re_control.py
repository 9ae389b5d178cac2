"""RE-Control (Kong et al. 2024): a value function on the LM head's input, climbed at decode time.

Fit: the states are the LM head's inputs (the final, normalised hidden states) along each response, from
the last prompt token (which predicts the first response token) to the last response token. An MLP
value function V is trained with a Bellman-style regression: V(s_t) -> V(s_{t+1}) (target held fixed)
for t < T and V(s_T) -> r, the row's reward (1 = safe response, 0 = harmful); see ``bellman_loss``.

Decoding: before the LM head, every position's state s takes ``steps`` gradient-ascent steps
s <- s + step_size * grad_s V(s); the logits come from the moved state.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn
from tqdm.auto import tqdm
from transformers import PreTrainedModel

from svgt.backbone.adapter import LayerAdapter
from svgt.baselines.base import Baseline, BaselineError
from svgt.baselines.hooks import edit_input, lm_head
from svgt.core.params import REControlBaselineConfig

log = logging.getLogger(__name__)


def value_network(width: int, hidden: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(width, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh(), nn.Linear(hidden, 1)
    )


@dataclass
class REControlBaseline(Baseline):
    method: ClassVar[str] = "re-control"
    plain_prompt_pass: ClassVar[bool] = True  # it edits only the LM head's input
    value_fn: nn.Sequential
    steps: int
    step_size: float

    def __post_init__(self) -> None:
        if self.steps < 0 or self.step_size < 0:
            raise BaselineError(f"re-control: steps and step_size must be >= 0, got {self.steps}, {self.step_size}")
        self.value_fn.eval().requires_grad_(False)

    @property
    def width(self) -> int:
        return int(self.value_fn[0].in_features)

    def value(self, s: torch.Tensor) -> torch.Tensor:
        """V(s) [...] for states s [..., d]."""
        fn = self.value_fn.to(s.device)
        return fn(s.float())[..., 0]

    def ascend(self, s: torch.Tensor) -> torch.Tensor:
        """``steps`` gradient-ascent steps on V, for every state independently (V sums over rows)."""
        x = s.detach().float()
        with torch.enable_grad():
            for _ in range(self.steps):
                x = x.detach().requires_grad_(True)
                (grad,) = torch.autograd.grad(self.value(x).sum(), x)
                x = x + self.step_size * grad
        return x.detach().to(s.dtype)

    def install(self, model: PreTrainedModel, stack: contextlib.ExitStack) -> None:
        head = lm_head(model)
        width = LayerAdapter(model).hidden_size
        if width != self.width:
            raise BaselineError(f"re-control: value function reads width {self.width} but the model's is {width}")
        edit_input(stack, head, self.ascend)

    def config_dict(self) -> dict[str, Any]:
        return {
            "width": self.width,
            "hidden": int(self.value_fn[0].out_features),
            "steps": self.steps,
            "step_size": self.step_size,
        }

    def tensors(self) -> dict[str, torch.Tensor]:
        return {f"value_fn.{k}": v for k, v in self.value_fn.state_dict().items()}

    @classmethod
    def from_saved(cls, config: dict[str, Any], tensors: dict[str, torch.Tensor]) -> REControlBaseline:
        fn = value_network(int(config["width"]), int(config["hidden"]))
        fn.load_state_dict({k.removeprefix("value_fn."): v for k, v in tensors.items()}, strict=True)
        return cls(value_fn=fn, steps=int(config["steps"]), step_size=float(config["step_size"]))


def bellman_loss(value_fn: nn.Module, trajectories: Sequence[torch.Tensor], rewards: torch.Tensor) -> torch.Tensor:
    """Mean squared Bellman error of the transitions plus that of the terminal states, each averaged alone.

    Averaging the two separately keeps the reward terms (one per trajectory) from being drowned by the
    ~T bootstrap terms per trajectory, which otherwise lets a constant V near the mean reward win.
    """
    states = torch.cat(list(trajectories))
    values = value_fn(states)[:, 0]
    ends = torch.cumsum(torch.tensor([len(t) for t in trajectories]), 0) - 1
    is_end = torch.zeros(len(values), dtype=torch.bool)
    is_end[ends] = True
    next_values = torch.cat([values[1:].detach(), values.new_zeros(1)])  # a state's successor is the next row
    td = (values[~is_end] - next_values[~is_end]) ** 2
    terminal = (values[is_end] - rewards.to(values.dtype)) ** 2
    return (td.mean() if len(td) else values.new_zeros(())) + terminal.mean()


def fit_re_control(
    trajectories: Sequence[torch.Tensor],
    safe: torch.Tensor,
    train: torch.Tensor,
    test: torch.Tensor,
    cfg: REControlBaselineConfig,
    seed: int = 0,
    progress: bool = False,
) -> tuple[REControlBaseline, dict[str, Any]]:
    """Train V on the ``train`` trajectories (full batch, Adam); score the final-state value on ``test``."""
    torch.manual_seed(seed)
    value_fn = value_network(trajectories[0].shape[1], cfg.hidden)
    opt = torch.optim.Adam(value_fn.parameters(), lr=cfg.lr)
    rewards = safe.float()
    train_traj = [trajectories[i] for i in train.tolist()]
    losses = []
    for _ in tqdm(range(cfg.epochs), desc="re-control", disable=not progress, leave=False):
        loss = bellman_loss(value_fn, train_traj, rewards[train])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    with torch.no_grad():
        test_traj = [trajectories[i] for i in test.tolist()]
        test_loss = float(bellman_loss(value_fn, test_traj, rewards[test]))
        final = torch.stack([value_fn(t[-1:])[0, 0] for t in test_traj])
        accuracy = float(((final > 0.5).float() == rewards[test]).float().mean())
    baseline = REControlBaseline(value_fn=value_fn, steps=cfg.steps, step_size=cfg.step_size)
    summary = {
        "train_loss_first": round(losses[0], 6) if losses else None,
        "train_loss_last": round(losses[-1], 6) if losses else None,
        "test_loss": round(test_loss, 6),
        "test_final_state_accuracy": round(accuracy, 4),
        "states": sum(len(t) for t in train_traj),
    }
    log.info(
        "re-control: Bellman loss %.4f -> %.4f (held out %.4f), final-state accuracy %.3f",
        losses[0],
        losses[-1],
        test_loss,
        accuracy,
    )
    return baseline, summary
