"""Load: `svgt generate` over 1,000 JSONL prompts streams, survives bad lines and keeps memory flat.

The real CLI runs in a subprocess on the tiny random backbone (max_new_tokens 2), writing to ``--out``.
* Streaming: the output file is read while the process runs; complete lines must be there before it ends
  (run_generate flushes after every batch).
* Bad lines (invalid JSON, non-UTF-8 bytes, no prompt) are reported on stderr as ``FILE:LINE: reason`` and
  skipped; every good prompt is answered, in input order. Exit code 0: a run that skipped bad lines still
  succeeded for the rest (the summary log line gives the count of skipped lines).
* Memory: the kernel's peak RSS of the process (``os.wait4``'s ``ru_maxrss``) for 100 and for 1,000 prompts.
  The bound on the growth is 25 MiB. Why that bound: RSS noise between two runs of the same process is a few
  MiB (allocator arenas, tokenizer caches); a per-prompt leak of what a batch holds (its KV cache: 4 layers x
  2 x ~40 positions x 32 wide x 4 bytes ~ 40 KB a prompt on this model, or its logits: 2 steps x 300 vocab x
  4 bytes) over 900 extra prompts would add >= 36 MiB, and keeping every result object in memory would add
  more with longer outputs. The embedded backbone's numbers are in reports/bench_generate_load.md.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = [pytest.mark.faults, pytest.mark.integration]  # two CLI runs, 1,100 prompts

BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parents[2]
GROWTH_BOUND_MIB = 25


def write_prompts(path: Path, n: int, bad: dict[int, bytes] | None = None) -> list[str]:
    """``n`` good prompts; ``bad`` puts raw bytes at given 1-based line numbers. Returns the good ids in order."""
    bad = bad or {}
    ids, lines = [], []
    i = 0
    while len(ids) < n or len(lines) + 1 in bad:
        number = len(lines) + 1
        if number in bad:
            lines.append(bad[number])
            continue
        ids.append(f"p{i:04d}")
        lines.append(json.dumps({"id": ids[-1], "prompt": f"Question {i}: tell me about bread"}).encode())
        i += 1
    path.write_bytes(b"\n".join(lines) + b"\n")
    return ids


def run_generate(backbone: Path, prompts: Path, out: Path, stream_probe: bool = False) -> dict:
    """Run the CLI; return exit code, stderr, peak RSS and the line counts seen while it ran."""
    cmd = [
        str(BIN / "svgt"),
        "--params",
        str(REPO / "params.yaml"),
        "generate",
        "--backbone",
        str(backbone),
        "--prompts-file",
        str(prompts),
        "--out",
        str(out),
        "--method",
        "none",
        "--max-new-tokens",
        "2",
        "--batch-size",
        "8",
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    err_path = out.with_suffix(".stderr")
    seen: list[int] = []
    with open(err_path, "w") as err:
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=err, cwd=out.parent)
        deadline = time.monotonic() + 300
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)  # reaps with the child's own peak RSS
            if pid:
                break
            assert time.monotonic() < deadline, "svgt generate did not finish in 300 s"
            if stream_probe and out.exists():
                data = out.read_bytes()
                complete = data[: data.rfind(b"\n") + 1]
                # only complete lines count, and they must parse (a half-flushed line would not)
                if complete:
                    json.loads(complete.splitlines()[-1])
                seen.append(complete.count(b"\n"))
            time.sleep(0.1)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return {"rc": proc.returncode, "stderr": err_path.read_text(), "peak_mib": usage.ru_maxrss / 1024, "seen": seen}


def test_generate_1000_prompts_streams_skips_bad_lines_and_stays_flat(tiny_pipeline, tmp_path):
    backbone = tiny_pipeline / "backbone"
    big = tmp_path / "prompts-1000.jsonl"
    bad = {10: b'{"id": "broken", "prompt": ', 500: b'{"prompt": "caf\xe9"}', 900: b'{"id": "x", "text": "no prompt"}'}
    ids = write_prompts(big, 1000, bad)
    result = run_generate(backbone, big, tmp_path / "out-1000.jsonl", stream_probe=True)
    assert result["rc"] == 0, result["stderr"][-3000:]

    rows = [json.loads(line) for line in (tmp_path / "out-1000.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == ids and len(rows) == 1000
    assert all(r["new_tokens"] <= 2 and r["method"] == "none" for r in rows)
    # streamed: lines were readable while the process was still running, and grew batch by batch
    partial = [n for n in result["seen"] if 0 < n < 1000]
    assert partial, f"no partial output observed while running (line counts seen: {sorted(set(result['seen']))})"
    assert all(n % 8 == 0 or n > 1000 - 8 for n in partial)  # flushed whole batches only
    # bad lines: reported with file:line and reason, in order; the run went on
    skipped = [line for line in result["stderr"].splitlines() if line.startswith("svgt generate: skipped ")]
    assert skipped == [
        f"svgt generate: skipped {big}:10: not valid JSON (Expecting value)",
        f"svgt generate: skipped {big}:500: not valid UTF-8 (byte 15)",
        f"svgt generate: skipped {big}:900: needs a non-empty string field 'prompt'",
    ]
    assert "3 bad input lines skipped" in result["stderr"]

    small = tmp_path / "prompts-100.jsonl"
    write_prompts(small, 100)
    base = run_generate(backbone, small, tmp_path / "out-100.jsonl")
    assert base["rc"] == 0, base["stderr"][-3000:]
    growth = result["peak_mib"] - base["peak_mib"]
    print(f"peak RSS: 100 prompts {base['peak_mib']:.1f} MiB, 1000 prompts {result['peak_mib']:.1f} MiB")
    assert growth < GROWTH_BOUND_MIB, f"peak RSS 100 prompts {base['peak_mib']:.1f} MiB, 1000: {result['peak_mib']:.1f}"
