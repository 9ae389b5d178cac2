"""Small-batch linear layers on CPU: torch's default ``x @ W.T`` against ``(W @ x.T).T`` (svgt.backbone.small_batch).

A decode step multiplies a few rows by every weight matrix of the backbone once, so it is bound by how
fast the weights stream from memory. The script times both forms on weights too big for the caches
(cycled through, as in a real decode step), for a range of row counts, and reports GB/s of weights read,
next to a plain memory read of the same size for the ceiling. It is a script with a report, not a test.

    .venv/bin/python benchmarks/bench_small_batch_linear.py [--rows 1 8 16 32 64 128] [--out STEM]
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path

import torch
from torch.nn import functional as F

from svgt.backbone.small_batch import small_batch_linear
from svgt.core.io import write_json_atomic, write_text_atomic


def _best(fn, reps: int) -> float:
    fn()
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 8, 16, 32, 64, 128])
    parser.add_argument("--layers", type=int, default=60, help="weight matrices cycled through (576x1536 each)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default="reports/bench_small_batch_linear")
    args = parser.parse_args()
    torch.manual_seed(0)
    weights = [torch.randn(1536, 576) for _ in range(args.layers)]  # SmolLM2-135M's MLP shape
    nbytes = sum(w.numel() * w.element_size() for w in weights)
    flat = torch.cat([w.flatten() for w in weights])
    read_s = _best(lambda: flat.sum(), args.repeats)
    rows_out = []
    for m in args.rows:
        x = torch.randn(m, 576)
        default = _best(lambda x=x: [F.linear(x, w) for w in weights], args.repeats)
        left = _best(lambda x=x: [small_batch_linear(x, w, None) for w in weights], args.repeats)
        diff = max(float((small_batch_linear(x, w, None) - F.linear(x, w)).abs().max()) for w in weights[:4])
        rows_out.append({"rows": m, "default_ms": 1e3 * default, "weight_left_ms": 1e3 * left,
                         "default_gb_s": nbytes / default / 1e9, "weight_left_gb_s": nbytes / left / 1e9,
                         "speedup": default / left, "max_abs_diff": diff})
        print(f"rows {m:4d}: x@W.T {1e3 * default:7.1f} ms ({nbytes / default / 1e9:5.1f} GB/s)   "
              f"(W@x.T).T {1e3 * left:7.1f} ms ({nbytes / left / 1e9:5.1f} GB/s)   x{default / left:.2f}", flush=True)
    report = {"weights_mb": nbytes / 2**20, "memory_read_gb_s": nbytes / read_s / 1e9, "rows": rows_out,
              "torch": torch.__version__, "threads": torch.get_num_threads(), "platform": platform.platform(),
              "processor": platform.processor()}
    lines = ["# Small-batch linear layers: x @ W.T vs (W @ x.T).T", "",
             f"{args.layers} weight matrices 1536x576 fp32 ({report['weights_mb']:.0f} MiB), cycled; best of "
             f"{args.repeats}; torch {torch.__version__}, {report['threads']} threads. A plain read of the same "
             f"bytes: {report['memory_read_gb_s']:.1f} GB/s.", "",
             "| rows | x @ W.T ms | GB/s | (W @ x.T).T ms | GB/s | speed-up | max abs diff |",
             "|---|---|---|---|---|---|---|"]
    for r in rows_out:
        lines.append(f"| {r['rows']} | {r['default_ms']:.1f} | {r['default_gb_s']:.1f} | {r['weight_left_ms']:.1f} | "
                     f"{r['weight_left_gb_s']:.1f} | {r['speedup']:.2f}x | {r['max_abs_diff']:.1e} |")
    lines += ["", "Command: `.venv/bin/python benchmarks/bench_small_batch_linear.py`", ""]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out.with_suffix(".json"), report)
    write_text_atomic(out.with_suffix(".md"), "\n".join(lines))


if __name__ == "__main__":
    main()
