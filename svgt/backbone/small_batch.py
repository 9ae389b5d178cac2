"""Small-batch linear layers: the same products, with the weight as the left operand of the matmul.

Decoding runs every ``nn.Linear`` of the backbone on a handful of rows (the batch), so each step streams
all the weights from memory once. On CPU, torch's default ``x @ W.T`` (MKL sgemm with a transposed right
operand) re-packs ``W`` on every call and streams it at 3-8 GB/s on the 2-core reference machine, whose
memory delivers ~25 GB/s; ``(W @ x.T).T`` reads ``W`` in place and was 1.1-1.7x faster for 8 to 128 rows
across runs (``benchmarks/bench_small_batch_linear.py``), equal at 1 row. The result is the same product
up to float rounding.

``small_batch_linears(model)`` switches a model's plain ``nn.Linear`` layers to that form for inputs of
at most ``max_rows`` rows, for the duration of a ``with`` block, and restores them on exit.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import MethodType

import torch
from torch import nn
from torch.nn import functional as F

DEFAULT_MAX_ROWS = 64  # above this the default path is as fast (the matmul is compute-bound)


def small_batch_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """``F.linear(x, weight, bias)`` computed as ``(weight @ x.T).T`` over the flattened rows of ``x``."""
    rows = x.reshape(-1, x.shape[-1])
    out = torch.mm(weight, rows.t()) if bias is None else torch.addmm(bias[:, None], weight, rows.t())
    # back to row-major: downstream kernels given the transposed layout as-is (SDPA on the attention heads
    # split from q/k/v) ran up to 16x slower, which cost more than this copy of rows x out_features
    return out.t().contiguous().reshape(*x.shape[:-1], weight.shape[0])


def _forward(max_rows: int) -> Callable[[nn.Linear, torch.Tensor], torch.Tensor]:
    def forward(self: nn.Linear, x: torch.Tensor) -> torch.Tensor:
        if x.dim() >= 1 and x.numel() // max(x.shape[-1], 1) <= max_rows:
            return small_batch_linear(x, self.weight, self.bias)
        return F.linear(x, self.weight, self.bias)

    return forward


@contextmanager
def small_batch_linears(model: nn.Module, max_rows: int = DEFAULT_MAX_ROWS) -> Iterator[int]:
    """Within the block, ``model``'s plain ``nn.Linear`` layers (not subclasses: quantised layers keep
    their own kernels) compute inputs of <= ``max_rows`` rows as ``(W @ x.T).T``; yields how many layers
    were switched. CPU only (elsewhere nothing changes); a layer already switched by an enclosing block is
    left to it, so blocks nest."""
    layers = [m for m in model.modules() if type(m) is nn.Linear and "forward" not in m.__dict__
              and m.weight.device.type == "cpu"]
    forward = _forward(max_rows)
    for layer in layers:
        layer.forward = MethodType(forward, layer)
    try:
        yield len(layers)
    finally:
        for layer in layers:
            del layer.forward  # the class's forward again
