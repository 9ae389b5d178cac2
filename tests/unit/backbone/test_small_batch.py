"""small_batch_linears: the same products with the weight as the left operand, scoped and nestable."""

import torch
from torch import nn

from svgt.backbone.small_batch import small_batch_linear, small_batch_linears


class Quantised(nn.Linear):  # a Linear subclass keeps its own forward
    pass


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 24), nn.GELU(), nn.Linear(24, 8, bias=False), Quantised(8, 4))


def test_small_batch_linear_equals_linear_with_and_without_bias():
    torch.manual_seed(0)
    w, b = torch.randn(24, 16), torch.randn(24)
    for shape in [(16,), (3, 16), (2, 5, 16)]:
        x = torch.randn(*shape)
        torch.testing.assert_close(small_batch_linear(x, w, b), nn.functional.linear(x, w, b), atol=1e-5, rtol=0)
        torch.testing.assert_close(small_batch_linear(x, w, None), nn.functional.linear(x, w), atol=1e-5, rtol=0)
        # row-major like F.linear's result: a transposed result made attention on the heads split from it
        # (q/k/v projections) 16x slower at decode time
        assert small_batch_linear(x, w, b).is_contiguous()


def test_switch_is_scoped_nestable_and_routes_by_row_count(monkeypatch):
    model = _model()
    x_small, x_big = torch.randn(3, 16), torch.randn(100, 16)
    want_small, want_big = model(x_small), model(x_big)
    calls = []
    import svgt.backbone.small_batch as sb

    real = sb.small_batch_linear
    monkeypatch.setattr(sb, "small_batch_linear", lambda *a: calls.append(a[0].shape) or real(*a))
    with small_batch_linears(model, max_rows=64) as switched:
        assert switched == 2  # the two plain Linears, not the subclass
        with small_batch_linears(model) as inner:
            assert inner == 0  # already switched by the enclosing block
        assert "forward" in model[0].__dict__  # the inner exit did not undo the outer switch
        torch.testing.assert_close(model(x_small), want_small, atol=1e-5, rtol=0)
        assert len(calls) == 2
        torch.testing.assert_close(model(x_big), want_big, atol=1e-5, rtol=0)
        assert len(calls) == 2  # 100 rows > 64: the default path
    assert all("forward" not in m.__dict__ for m in model.modules())
    model(x_small)
    assert len(calls) == 2  # restored after the block
