"""`svgt serve` under concurrent clients, against offline `svgt generate` on the same prompts (issue 15).

Starts the real server (uvicorn on a free loopback port, the engine as `svgt serve` builds it) and drives it
with the official openai client from N threads, each sending its share of the prompts one after another:

* per concurrency level and model (``none``, ``svgt``): generated tokens per second over the whole run,
  p50/p95 request latency and time to first token (streamed requests);
* offline reference: the same prompts through ``GuidanceMethod.generate`` in batches of --max-batch-size,
  as `svgt generate --batch-size` decodes them (target: the server at 16 clients >= 0.8x of it);
* head-of-line: one short request (16 tokens) sent while 15 long ones decode, against the same request alone
  (target: < 3x). Without continuous batching a request that arrives mid-batch waits for that batch.

    .venv/bin/python benchmarks/bench_serve.py                  # after `dvc repro` (data/backbone, models/stage3)
    .venv/bin/python benchmarks/bench_serve.py --clients 1 4 --prompts 8 --tokens 8 --out /tmp/bench_serve

Writes OUT.md and OUT.json (default reports/bench_serve). A benchmark, not a test: nothing is asserted.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import platform
import socket
import statistics
import threading
import time
from pathlib import Path
from typing import Any

import openai
import pandas as pd
import torch
import uvicorn

from svgt.core.io import write_json_atomic, write_text_atomic
from svgt.serve.app import Limits, create_app
from svgt.serve.server import build_engine


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def drive(url: str, model: str, prompts: list[str], clients: int, tokens: int) -> dict[str, Any]:
    """``clients`` threads share the prompts; every request streams so its first token is timed."""
    latencies, firsts, produced = [], [], []
    lock = threading.Lock()

    def worker(share: list[str]) -> None:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=600)
        for prompt in share:
            start = time.perf_counter()
            first, count = None, 0
            stream = client.chat.completions.create(model=model, messages=[{"role": "user", "content": prompt}],
                                                    max_tokens=tokens, temperature=0, stream=True)
            for chunk in stream:
                if chunk.choices and chunk.choices[0].delta.content and first is None:
                    first = time.perf_counter() - start
                if getattr(chunk, "usage", None) is not None:
                    count = chunk.usage.completion_tokens
            with lock:
                latencies.append(time.perf_counter() - start)
                firsts.append(first if first is not None else latencies[-1])
                produced.append(count)

    shares = [prompts[i::clients] for i in range(clients)]
    start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        list(pool.map(worker, shares))
    wall = time.perf_counter() - start
    return {"model": model, "clients": clients, "requests": len(prompts), "tokens": sum(produced),
            "seconds": round(wall, 2), "tokens_per_s": sum(produced) / wall,
            "latency_p50_s": percentile(latencies, 0.5), "latency_p95_s": percentile(latencies, 0.95),
            "ttft_p50_s": percentile(firsts, 0.5), "ttft_p95_s": percentile(firsts, 0.95)}


def offline(engine: Any, model: str, prompts: list[str], tokens: int, batch: int) -> dict[str, Any]:
    method = engine.methods[model]
    produced, start = 0, time.perf_counter()
    for i in range(0, len(prompts), batch):
        out = method.generate(engine.model, engine.tokenizer, prompts[i:i + batch], runner=engine.runner,
                              max_new_tokens=tokens)
        produced += sum(len(t) for t in out.token_ids)
    wall = time.perf_counter() - start
    return {"model": model, "tokens": produced, "seconds": round(wall, 2), "tokens_per_s": produced / wall}


def head_of_line(url: str, prompts: list[str], long_tokens: int) -> dict[str, Any]:
    client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=600)

    def ask(prompt: str, tokens: int) -> float:
        start = time.perf_counter()
        client.chat.completions.create(model="svgt", messages=[{"role": "user", "content": prompt}],
                                       max_tokens=tokens, temperature=0)
        return time.perf_counter() - start

    alone = statistics.median(ask(prompts[0], 16) for _ in range(3))
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        longs = [pool.submit(ask, p, long_tokens) for p in prompts[1:16]]
        time.sleep(1.0)  # the long ones are decoding
        short = pool.submit(ask, prompts[0], 16).result()
        for f in longs:
            f.result()
    return {"short_alone_s": alone, "short_beside_15_long_s": short, "ratio": short / alone,
            "long_tokens": long_tokens}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--backbone", default=Path("data/backbone"), type=Path)
    ap.add_argument("--module", default="models/stage3")
    ap.add_argument("--data", default=Path("data/values/values.parquet"), type=Path)
    ap.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16, 64])
    ap.add_argument("--prompts", type=int, default=64, help="requests per level (test-split prompts)")
    ap.add_argument("--tokens", type=int, default=32, help="max_tokens of each request")
    ap.add_argument("--max-batch-size", type=int, default=16)
    ap.add_argument("--long-tokens", type=int, default=128, help="the 15 long requests of the head-of-line check")
    ap.add_argument("--out", default=Path("reports/bench_serve"), type=Path)
    args = ap.parse_args()

    frame = pd.read_parquet(args.data)
    prompts = frame.loc[frame["split"] == "test", "prompt"].drop_duplicates().tolist()[: max(args.prompts, 16)]
    engine, served = build_engine(args.backbone, args.module, max_batch_size=args.max_batch_size, max_queue=4096)
    app = create_app(engine, served, Limits(max_tokens=max(args.tokens, args.long_tokens), context_length=8192))
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    url = f"http://127.0.0.1:{port}"
    rows, reference = [], {}
    try:
        for model in ("none", "svgt"):
            reference[model] = offline(engine, model, prompts[: args.prompts], args.tokens, args.max_batch_size)
            print(json.dumps({"offline": reference[model]}), flush=True)
            for clients in args.clients:
                row = drive(url, model, prompts[: args.prompts], clients, args.tokens)
                row["vs_offline"] = row["tokens_per_s"] / reference[model]["tokens_per_s"]
                rows.append(row)
                print(json.dumps(row), flush=True)
        hol = head_of_line(url, prompts, args.long_tokens)
        print(json.dumps({"head_of_line": hol}), flush=True)
    finally:
        server.should_exit = True
        thread.join(timeout=60)
    meta = {"machine": platform.processor() or platform.machine(), "torch_threads": torch.get_num_threads(),
            "prompts": args.prompts, "tokens": args.tokens, "max_batch_size": args.max_batch_size,
            "module": served.source}
    write_json_atomic(args.out.with_suffix(".json"), {"meta": meta, "offline": reference, "rows": rows,
                                                      "head_of_line": hol})
    lines = ["# svgt serve under concurrent clients", "",
             f"{args.prompts} test-split prompts per level, max_tokens {args.tokens}, greedy, streamed; "
             f"--max-batch-size {args.max_batch_size}; {meta['machine']}, {meta['torch_threads']} torch threads. "
             "Offline: the same prompts through the guided loop in batches of the same size (`svgt generate`).", "",
             "| model | clients | tokens/s | vs offline | latency p50 / p95 (s) | first token p50 / p95 (s) |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} | {r['clients']} | {r['tokens_per_s']:.1f} | {r['vs_offline']:.2f}x | "
                     f"{r['latency_p50_s']:.2f} / {r['latency_p95_s']:.2f} | {r['ttft_p50_s']:.2f} / "
                     f"{r['ttft_p95_s']:.2f} |")
    lines += ["", "Offline reference: " + ", ".join(f"{m} {v['tokens_per_s']:.1f} tokens/s"
                                                    for m, v in reference.items()), "",
              f"Head of line: a 16-token request alone takes {hol['short_alone_s']:.2f} s; sent while 15 requests of "
              f"{hol['long_tokens']} tokens decode, {hol['short_beside_15_long_s']:.2f} s ({hol['ratio']:.1f}x; "
              "target < 3x, which needs requests to join a batch mid-decode).", ""]
    write_text_atomic(args.out.with_suffix(".md"), "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
