"""Training checkpoints (module + optimizer + progress) in safetensors and JSON: no pickles.

Optimizer state tensors are flattened to ``optim.<param index>.<name>`` keys; everything else
(param groups, step counters, metric history) is JSON.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from svgt.core.io import atomic_path, write_json_atomic

STATE_TENSORS = "state.safetensors"
STATE_JSON = "state.json"
BEST = "best."  # tensor-name prefix of the best epoch's module weights


@dataclass
class Progress:
    step: int = 0  # optimizer steps taken so far
    epoch: int = 0  # epoch being run
    batch_in_epoch: int = 0  # batches of `epoch` already consumed
    history: list[dict[str, Any]] = field(default_factory=list)  # one entry per finished epoch
    # running sums of the train metrics over the batches of `epoch` already consumed, so that a resumed
    # epoch reports the same means as an uninterrupted one
    epoch_sums: dict[str, float] = field(default_factory=dict)
    # with a selection metric: the finished epoch whose weights scored best on it (their copy is saved in the
    # checkpoint as ``best.*`` and is what the stage exports), and that score
    best_epoch: int = 0
    best_value: float | None = None


def save_checkpoint(directory: str | Path, module: nn.Module, optimizer: torch.optim.Optimizer,
                    progress: Progress, best: dict[str, torch.Tensor] | None = None) -> None:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {f"module.{k}": v.detach().contiguous().cpu() for k, v in module.state_dict().items()}
    tensors |= {f"{BEST}{k}": v.detach().contiguous().cpu() for k, v in (best or {}).items()}
    opt = optimizer.state_dict()
    scalars: dict[str, dict[str, Any]] = {}
    for idx, state in opt["state"].items():
        for name, value in state.items():
            if torch.is_tensor(value):
                tensors[f"optim.{idx}.{name}"] = value.detach().contiguous().cpu()
            else:
                scalars.setdefault(str(idx), {})[name] = value
    with atomic_path(directory / STATE_TENSORS) as tmp:
        save_file(tensors, str(tmp))
    write_json_atomic(directory / STATE_JSON, {"progress": asdict(progress), "param_groups": opt["param_groups"],
                                              "optim_scalars": scalars})


def load_checkpoint(directory: str | Path, module: nn.Module, optimizer: torch.optim.Optimizer) -> Progress:
    directory = Path(directory)
    tensors = load_file(str(directory / STATE_TENSORS))
    meta = json.loads((directory / STATE_JSON).read_text(encoding="utf-8"))
    module.load_state_dict({k[len("module."):]: v for k, v in tensors.items() if k.startswith("module.")},
                           strict=True)
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, idx, name = key.split(".", 2)
            state.setdefault(int(idx), {})[name] = value
    for idx, values in meta["optim_scalars"].items():
        state.setdefault(int(idx), {}).update(values)
    optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    return Progress(**meta["progress"])


def module_weights(directory: str | Path, best: bool = True) -> dict[str, torch.Tensor]:
    """The module's weights in a checkpoint: the best epoch's where the loop selected one (and ``best``),
    else the latest."""
    tensors = load_file(str(Path(directory) / STATE_TENSORS))
    prefix = BEST if best and any(k.startswith(BEST) for k in tensors) else "module."
    return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
