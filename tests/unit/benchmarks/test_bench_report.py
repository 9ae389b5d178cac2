"""The benchmark's check that our unguided loop reproduces HF generate (benchmarks/bench_generation.py)."""

import importlib.util
import sys
from pathlib import Path


def _bench():
    path = Path(__file__).resolve().parents[3] / "benchmarks" / "bench_generation.py"
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


def test_token_agreement_counts_identical_rows_and_the_prefix_before_the_first_difference():
    agreement = _bench().token_agreement([[1, 2, 3, 4], [5, 6], [7, 8]], [[1, 2, 9, 4], [5, 6], [0, 8]])
    assert agreement == {"rows": 3, "identical_rows": 1, "mean_prefix_fraction": (0.5 + 1.0 + 0.0) / 3}


def test_target_check_says_when_no_exact_implementation_can_meet_a_target():
    """The numbers of the 2026-12 batch-8 CPU run: the exact refresh at r=5 adds ~115 GFLOP, ~0.76 s at a
    150 GFLOP/s peak, more than the 0.2 x 3.2 s the 1.2x target leaves; r=1 at batch 1 fits easily."""
    bench = _bench()
    case, result = bench.Case, bench.Result

    def timed(c, seconds, gflop):
        return result(c, 8, runs_s=[seconds, seconds + 1.0], gflop=gflop)

    batch8 = [timed(case("ours, unguided", "none"), 3.2, 108.0),
              timed(case("SVGT r=5", "svgt", 5), 4.25, 223.0),
              timed(case("SVGT r=5 bridge_only", "svgt", 5, "bridge_only"), 3.5, 139.0)]
    batch1 = [timed(case("ours, unguided", "none"), 18.0, 30.0), timed(case("SVGT r=1", "svgt", 1), 28.0, 60.0)]
    checks = {(c["batch"], c["r"]): c for c in bench.target_checks({8: batch8, 1: batch1}, "cpu", 150.0)}
    r5 = checks[(8, 5)]
    assert r5["passed"] is False and r5["ratio"] == 4.25 / 3.2
    assert r5["extra_gflop"] == 115.0 and abs(r5["bound_s"] - 115.0 / 150.0) < 1e-12
    assert abs(r5["budget_s"] - 0.2 * 3.2) < 1e-12 and r5["attainable"] is False
    assert r5["bridge_only_ratio"] == 3.5 / 3.2 and r5["bridge_only_passed"] is True
    assert checks[(8, 1)]["ratio"] is None and checks[(8, 1)]["passed"] is None  # r=1 not run at batch 8
    r1 = checks[(1, 1)]
    assert r1["passed"] is True and r1["attainable"] is True and "bridge_only_ratio" not in r1
