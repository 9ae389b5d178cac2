"""The matrix-product FLOP counter, and what it shows about the cost of guided decoding.

The decoding tests check the *work* of each refresh mode, which the exactness tests cannot see: an exact
refresh that also reran the lower blocks, or every prompt row, would still produce exact logits.
"""

from __future__ import annotations

import pytest
import torch
from flop_count import MatmulFlopCounter

from svgt.backbone.runner import BlockRunner
from svgt.decoding.loop import guided_generate
from tests.tiny import make_model, make_tokenizer

LAYER, K, TOKENS = 2, 3, 9
PROMPTS = ["How do I bake bread?", "Hi", "Write a haiku about the sea, please."]


def test_linear_and_attention_are_counted_at_two_flops_per_multiply_add():
    linear = torch.nn.Linear(32, 64)
    q, k = torch.randn(2, 4, 5, 8), torch.randn(2, 4, 7, 8)
    with MatmulFlopCounter() as fc:
        linear(torch.randn(5, 32))
        torch.nn.functional.scaled_dot_product_attention(q, k, k)
    assert fc.by_op["aten.addmm"] == 2 * 5 * 32 * 64
    # q @ k^T and softmax(.) @ v: 2 * (b h s_q s_k d) each; the CPU kernel is missing from torch's registry
    assert fc.by_op["aten._scaled_dot_product_flash_attention_for_cpu"] == 2 * 2 * (2 * 4 * 5 * 7 * 8)
    assert fc.total == 2 * 5 * 32 * 64 + 4 * 2 * 4 * 5 * 7 * 8


def test_counting_survives_autograd_grad_inside():
    """The value module's correction calls torch.autograd.grad mid-decode; torch's FlopCounterMode breaks there."""
    w = torch.randn(4, 4, requires_grad=True)
    with MatmulFlopCounter() as fc:
        (grad,) = torch.autograd.grad((torch.randn(3, 4) @ w).sum(), w)
    assert grad.shape == (4, 4)
    assert fc.total == 2 * 3 * 4 * 4 * 2  # the forward product and the one backward product w needs


def _bridge(h: torch.Tensor) -> torch.Tensor:
    """A row-wise bridge with no matrix product of its own, so every counted FLOP is the backbone's."""
    offsets = torch.linspace(-1.0, 1.0, K * h.shape[-1]).view(K, -1)
    return torch.tanh(h)[:, None, :] + offsets


def _linear_flops(family: str, bridge, **kwargs) -> int:
    model = make_model(family, len(make_tokenizer()), num_layers=4).eval()
    with MatmulFlopCounter() as fc:
        guided_generate(model, make_tokenizer(), PROMPTS, bridge, layer=LAYER, max_new_tokens=TOKENS,
                        stop_token_ids=(), runner=BlockRunner(model), **kwargs)
    return fc.by_op["aten.mm"] + fc.by_op["aten.addmm"]


@pytest.mark.parametrize("family", ["llama", "gpt2"])
@pytest.mark.parametrize("refresh", [1, 3, 4])
def test_refresh_reruns_only_the_upper_blocks_on_the_rows_the_mode_documents(family, refresh):
    """Against unguided decoding, every extra row runs blocks l*+1..L once (2 FLOPs per weight): the K bridge
    rows in the prefill, then at each refresh (after s generated tokens, s % r == 0) K + s rows instead of 1
    (exact) or K more rows (bridge_only). Nothing else: no lower block, no prompt row, no extra LM head."""
    model = make_model(family, len(make_tokenizer()), num_layers=4)
    upper_weights = sum(p.numel() for block in BlockRunner(model).layers[LAYER:] for p in block.parameters()
                        if p.dim() == 2)
    refreshes = [s for s in range(1, TOKENS) if s % refresh == 0]
    base = _linear_flops(family, None)
    exact = _linear_flops(family, _bridge, refresh_interval=refresh)
    approx = _linear_flops(family, _bridge, refresh_interval=refresh, refresh_mode="bridge_only")
    per_row = 2 * upper_weights * len(PROMPTS)
    assert exact - base == per_row * (K + sum(K + s - 1 for s in refreshes))
    assert approx - base == per_row * (K + K * len(refreshes))
