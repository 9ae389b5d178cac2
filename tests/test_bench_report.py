"""The benchmark's check that our unguided loop reproduces HF generate (benchmarks/bench_generation.py)."""

import importlib.util
import sys
from pathlib import Path


def _bench():
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_generation.py"
    spec = importlib.util.spec_from_file_location("bench_generation", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("bench_generation", module)  # its dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


def test_rows_are_compared_up_to_the_eos_our_loop_picked():
    """HF's min_new_tokens masks EOS where our loop (stop tokens off) may pick it: only the tokens before
    our first EOS must agree; a difference before it is reported."""
    agree = _bench().agree_before_eos
    assert agree([[5, 6, 7, 8]], [[5, 6, 2, 9]], 2) == (True, 1)
    assert agree([[5, 6, 7, 8]], [[5, 7, 2, 9]], 2) == (False, 1)
    assert agree([[5, 6], [7, 8]], [[5, 6], [7, 9]], 2) == (False, 0)
    assert agree([[5, 6]], [[5, 6]], None) == (True, 0)
