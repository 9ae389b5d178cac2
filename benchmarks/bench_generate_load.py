"""Load benchmark for `svgt generate`: peak RSS and streaming for 100 vs 1,000 JSONL prompts.

Runs the real CLI (``svgt generate --prompts-file ... --out ...``) once per prompt count, each in its own
process, on the embedded backbone (``data/backbone``) with a small ``--max-new-tokens``. For each run:

* peak RSS of the generate process, exact, from the kernel (``os.wait4``'s ``ru_maxrss``),
* RSS sampled every 0.2 s with psutil: at the first output line and at the end (is it flat?),
* time to the first output line and total wall time (does it stream?),
* prompts/s.

Writes ``OUT.json`` and ``OUT.md`` atomically. A benchmark, not a test: nothing is asserted. The matching
test (tests/faults/test_faults_generate_load.py) runs the same measurement on a tiny random model with a bound.

    .venv/bin/python benchmarks/bench_generate_load.py                  # 100 and 1000 prompts, 4 new tokens
    .venv/bin/python benchmarks/bench_generate_load.py --counts 10 50 --max-new-tokens 2 --out /tmp/load
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a script from a checkout: import svgt.core.io without installing

from svgt.core.io import write_json_atomic, write_text_atomic  # noqa: E402

TOPICS = [
    "bread",
    "the sea",
    "tax forms",
    "python lists",
    "volcanoes",
    "chess openings",
    "green tea",
    "bicycles",
    "photosynthesis",
    "the moon landing",
    "compound interest",
    "knitting",
    "jazz",
    "glaciers",
]
TEMPLATES = [
    "Tell me about {t}.",
    "Explain {t} to a child.",
    "Write one sentence about {t}.",
    "What is the most surprising fact about {t}?",
    "Give me a tip about {t}.",
]


def write_prompts(path: Path, n: int) -> None:
    """``n`` varied prompts, one JSON object per line (deterministic)."""
    with open(path, "w", encoding="utf-8") as f:
        for i in range(n):
            text = TEMPLATES[i % len(TEMPLATES)].format(t=TOPICS[(i * 7) % len(TOPICS)])
            f.write(json.dumps({"id": f"p{i:05d}", "prompt": text}) + "\n")


def count_lines(path: Path) -> int:
    try:
        with open(path, "rb") as f:
            return sum(1 for _ in f)
    except FileNotFoundError:
        return 0


def measure(cmd: list[str], out_path: Path, env: dict[str, str], sample_every: float = 0.2) -> dict[str, Any]:
    """Run ``cmd`` (which writes JSONL to ``out_path``), sampling its RSS and the output's line count."""
    t0 = time.perf_counter()
    err_path = out_path.with_suffix(".stderr")
    with open(err_path, "w") as err:  # a file, not a pipe: a full pipe would stall the child
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=err)
    ps = psutil.Process(proc.pid)
    samples: list[tuple[float, int, int]] = []  # (seconds, rss bytes, output lines)
    first_line_s = None
    rss_at_first_line = None
    peak_kib = rc = None
    while True:
        # wait4 with WNOHANG reaps the child when it ends and gives its exact peak RSS (ru_maxrss, KiB);
        # Popen.poll() would reap it first and lose the usage
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            peak_kib, rc = usage.ru_maxrss, os.waitstatus_to_exitcode(status)
            proc.returncode = rc
            break
        try:
            rss = ps.memory_info().rss
        except psutil.NoSuchProcess:
            continue
        if not rss:  # exited, not yet reaped
            continue
        lines = count_lines(out_path)
        now = time.perf_counter() - t0
        samples.append((now, rss, lines))
        if lines and first_line_s is None:
            first_line_s, rss_at_first_line = now, rss
        time.sleep(sample_every)
    wall = time.perf_counter() - t0
    stderr = err_path.read_text(errors="replace")
    lines = count_lines(out_path)
    return {
        "returncode": rc,
        "wall_seconds": round(wall, 2),
        "lines": lines,
        "peak_rss_mib": round(peak_kib / 1024, 1) if peak_kib else None,
        "sampled_peak_rss_mib": round(max((s[1] for s in samples), default=0) / 2**20, 1),
        "rss_at_first_line_mib": round(rss_at_first_line / 2**20, 1) if rss_at_first_line else None,
        "rss_at_end_mib": round(samples[-1][1] / 2**20, 1) if samples else None,
        # the kernel peak is set while the weights load (two copies for a moment), which would hide a slow leak
        # during generation; the last quarter of the run shows the steady state
        "rss_last_quarter_max_mib": round(max((s[1] for s in samples if s[0] >= 0.75 * wall), default=0) / 2**20, 1),
        "first_line_seconds": round(first_line_s, 2) if first_line_s is not None else None,
        "lines_when_half_time": next((s[2] for s in samples if s[0] >= wall / 2), lines),
        "prompts_per_second": round(lines / wall, 2) if wall else None,
        "stderr_tail": stderr[-600:],
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--backbone", default=REPO / "data/backbone", type=Path)
    ap.add_argument("--counts", nargs="+", type=int, default=[100, 1000])
    ap.add_argument("--max-new-tokens", type=int, default=4)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--method", default="none", choices=("none", "svgt", "svgt-inject"))
    ap.add_argument("--module", default=None, help="value module for --method svgt/svgt-inject")
    ap.add_argument("--out", default=REPO / "reports/bench_generate_load", type=Path)
    args = ap.parse_args(argv)
    if not (args.backbone / "manifest.json").is_file():
        print(f"{args.backbone}: no backbone snapshot (run `svgt backbone --out {args.backbone}`)", file=sys.stderr)
        return 2
    svgt = Path(sys.executable).parent / "svgt"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    load_before = os.getloadavg()
    runs = []
    with tempfile.TemporaryDirectory(prefix="svgt-load-") as tmp:
        for n in args.counts:
            prompts, out = Path(tmp) / f"prompts-{n}.jsonl", Path(tmp) / f"out-{n}.jsonl"
            write_prompts(prompts, n)
            cmd = [
                str(svgt),
                "--params",
                str(REPO / "params.yaml"),
                "generate",
                "--backbone",
                str(args.backbone),
                "--prompts-file",
                str(prompts),
                "--out",
                str(out),
                "--method",
                args.method,
                "--max-new-tokens",
                str(args.max_new_tokens),
                "--batch-size",
                str(args.batch_size),
                *(["--module", args.module] if args.module else []),
            ]
            print(f"running {n} prompts: {shlex.join(cmd)}", file=sys.stderr)
            result = {"prompts": n, **measure(cmd, out, env)}
            print(json.dumps(result), file=sys.stderr)
            runs.append(result)
    base, last = runs[0], runs[-1]
    growth = (last["peak_rss_mib"] - base["peak_rss_mib"]) if base["peak_rss_mib"] and last["peak_rss_mib"] else None
    steady_growth = last["rss_last_quarter_max_mib"] - base["rss_last_quarter_max_mib"]
    report = {
        "benchmark": "svgt generate load",
        "backbone": str(args.backbone),
        "method": args.method,
        "module": args.module,
        "max_new_tokens": args.max_new_tokens,
        "batch_size": args.batch_size,
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "loadavg_start": [round(x, 2) for x in load_before],
            "loadavg_end": [round(x, 2) for x in os.getloadavg()],
        },
        "runs": runs,
        "peak_rss_growth_mib": round(growth, 1) if growth is not None else None,
        "steady_rss_growth_mib": round(steady_growth, 1),
    }
    write_json_atomic(args.out.with_suffix(".json"), report)
    write_text_atomic(args.out.with_suffix(".md"), markdown(report))
    print(markdown(report))
    return 0 if all(r["returncode"] == 0 for r in runs) else 1


def markdown(report: dict[str, Any]) -> str:
    lines = [
        "# `svgt generate` under load: peak memory and streaming",
        "",
        f"Backbone `{report['backbone']}`, method `{report['method']}`, max_new_tokens "
        f"{report['max_new_tokens']}, batch {report['batch_size']}; {report['machine']['cpus']} CPUs, "
        f"load average {report['machine']['loadavg_start'][0]} at the start, "
        f"{report['machine']['loadavg_end'][0]} at the end.",
        "",
        "| prompts | exit | peak RSS (MiB, kernel) | RSS at first line (MiB) | RSS, last quarter max (MiB) | "
        "RSS at end (MiB) | first line (s) | lines at half time | wall (s) | prompts/s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["runs"]:
        lines.append(
            f"| {r['prompts']} | {r['returncode']} | {r['peak_rss_mib']} | {r['rss_at_first_line_mib']} | "
            f"{r['rss_last_quarter_max_mib']} | {r['rss_at_end_mib']} | {r['first_line_seconds']} | "
            f"{r['lines_when_half_time']} | {r['wall_seconds']} | {r['prompts_per_second']} |"
        )
    lines += [
        "",
        f"Peak RSS growth from {report['runs'][0]['prompts']} to {report['runs'][-1]['prompts']} prompts: "
        f"**{report['peak_rss_growth_mib']} MiB** (kernel peak, set while the weights load); "
        f"steady state (max RSS over the last quarter of each run): **{report['steady_rss_growth_mib']} MiB**.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
