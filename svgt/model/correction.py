"""The value correction dz: a first-order step from z to the discriminator's decision boundary D = 0.

With s = ReLU(D(z)) and g = grad_z s, ``dz = -(s / |g|) * (g / |g|) * step``. For a linear D and step 1
this lands exactly on D = 0; rows judged safe (s <= 0) or with a vanishing gradient get dz = 0 exactly.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn


def value_correction(
    discriminator: nn.Module, z: torch.Tensor, step: float = 1.0, create_graph: bool = False
) -> torch.Tensor:
    """dz [B, d_v] for value states z [B, d_v].

    ``create_graph=False`` (inference and stage 3, where D is frozen): the gradient is taken on a detached
    copy of z, so it works inside the caller's ``torch.no_grad()`` or ``torch.inference_mode()``, never
    touches ``.grad`` of D's parameters, and the returned dz carries no graph.
    ``create_graph=True``: dz stays differentiable w.r.t. z (when z requires grad) and D's parameters.
    Each row's gradient is its own because D acts row-wise (grad of the batch sum = per-row gradients).
    """
    # a tensor made under inference_mode cannot join autograd: leave that mode for the local gradient
    leave_inference = torch.inference_mode(False) if torch.is_inference_mode_enabled() else contextlib.nullcontext()
    with leave_inference, torch.enable_grad():
        z_in = z if (create_graph and z.requires_grad) else z.detach().clone().requires_grad_(True)
        s = torch.relu(discriminator(z_in))
        (g,) = torch.autograd.grad(s.sum(), z_in, create_graph=create_graph)
        if not create_graph:
            s, g = s.detach(), g.detach()
        return _step_to_boundary(s, g, step)


def _step_to_boundary(s: torch.Tensor, g: torch.Tensor, step: float) -> torch.Tensor:
    """-(s / |g|^2) * g * step where s > 0 and |g| > 0, exactly 0 elsewhere (no NaN, also in gradients)."""
    sq_norm = (g * g).sum(dim=-1)
    active = (s > 0) & (sq_norm > 0)
    safe_norm = torch.where(active, sq_norm, torch.ones_like(sq_norm))  # no 0/0 even in the unused branch
    dz = -(s * step / safe_norm).unsqueeze(-1) * g
    return torch.where(active.unsqueeze(-1), dz, torch.zeros_like(dz))
