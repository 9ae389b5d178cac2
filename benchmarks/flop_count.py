"""Count the floating-point operations of matrix products in a piece of torch code.

Used by the generation benchmark to say how much arithmetic a decoding method adds, and therefore the
least time it can take on a machine of a given matrix-product rate. Counting is exact for what it covers:
matrix products (``mm``, ``addmm``, ``bmm``, ``baddbmm``: the linear layers, LM head and eager attention)
and scaled-dot-product attention, each as 2 FLOPs per multiply-add, with torch's own formulas. Element-wise
work (norms, activations, softmax, rotary) is not counted: on a decoder it is a few percent of the total,
so a count is a slight under-estimate and a time bound derived from it stays a lower bound.

torch's ``FlopCounterMode`` is not used because it hooks every module for its per-module breakdown, and
those hooks break ``torch.autograd.grad`` inside the counted region (the value module's correction step).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import flop_registry, sdpa_flop_count


def _cpu_sdpa_flops(query: Any, key: Any, value: Any, *args: Any, out_val: Any = None, **kwargs: Any) -> int:
    """torch's CPU attention kernel, which torch's registry lacks: the same count as the other SDPA kernels."""
    return sdpa_flop_count(tuple(query.shape), tuple(key.shape), tuple(value.shape))


_EXTRA = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_sdpa_flops}


class MatmulFlopCounter(TorchDispatchMode):
    """``with MatmulFlopCounter() as fc: ...`` then ``fc.total`` (FLOPs) and ``fc.by_op`` (per aten op)."""

    def __init__(self) -> None:
        super().__init__()
        self.by_op: Counter[str] = Counter()

    @property
    def total(self) -> int:
        return sum(self.by_op.values())

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        packet = func._overloadpacket
        formula = _EXTRA.get(packet) or flop_registry.get(packet)
        if formula is not None:
            self.by_op[str(packet)] += int(formula(*args, **kwargs, out_val=out))
        return out
