"""`svgt evaluate`: refusal behaviour of none / svgt / svgt-inject on held-out test prompts.

Harmful test prompts (prompt_harmful == 1) should be refused; benign ones (prompt_harmful == 0, which
include look-alike hard negatives) should not. Both rates come with Wilson 95% intervals and the judge
that produced them.
"""

from __future__ import annotations

import json
import math
import random
import time
from pathlib import Path
from typing import Any

import pandas as pd

from svgt.backbone import load_snapshot
from svgt.backbone.runner import BlockRunner
from svgt.config import EvaluateConfig
from svgt.data.schema import normalize_prompt
from svgt.eval.refusal import RefusalJudge
from svgt.guidance import generate_with_module
from svgt.io import atomic_path, write_json_atomic, write_text_atomic
from svgt.model import load_value_module


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    if n == 0:
        return (math.nan, math.nan)
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def test_prompts(frame: pd.DataFrame, harmful: int, limit: int, seed: int) -> list[str]:
    rows = frame[(frame["split"] == "test") & (frame["prompt_harmful"] == harmful)]
    prompts = list(dict.fromkeys(rows["prompt"].tolist()))  # distinct, order kept
    seen, unique = set(), []
    for p in prompts:
        if normalize_prompt(p) not in seen:
            seen.add(normalize_prompt(p))
            unique.append(p)
    random.Random(seed).shuffle(unique)
    return unique[:limit]


def rate(judged: list[bool]) -> dict[str, Any]:
    k, n = sum(judged), len(judged)
    lo, hi = wilson(k, n)
    return {"rate": k / n if n else math.nan, "k": k, "n": n, "ci95": [lo, hi]}


def evaluate_guidance(*, backbone_dir: Path, module_dir: Path, data_path: Path, cfg: EvaluateConfig,
                      metrics_path: Path, report_path: Path, generations_path: Path) -> dict[str, Any]:
    model, tokenizer, manifest = load_snapshot(backbone_dir)
    module, meta = load_value_module(module_dir, expected_backbone_sha256=manifest.weights_sha256)
    runner = BlockRunner(model)
    frame = pd.read_parquet(data_path)
    sets = {"harmful": test_prompts(frame, 1, cfg.max_harmful_prompts, cfg.seed),
            "benign": test_prompts(frame, 0, cfg.max_benign_prompts, cfg.seed)}
    judge = RefusalJudge()
    results: dict[str, Any] = {"judge": judge.name, "module": str(module_dir), "backbone": manifest.source,
                               "max_new_tokens": cfg.max_new_tokens, "methods": {}}
    with atomic_path(generations_path) as tmp, open(tmp, "w", encoding="utf-8") as out:
        for method in cfg.methods:
            entry: dict[str, Any] = {}
            tokens, seconds = 0, 0.0
            for kind, prompts in sets.items():
                judged = []
                for start in range(0, len(prompts), cfg.batch_size):
                    batch = prompts[start:start + cfg.batch_size]
                    t0 = time.perf_counter()
                    res = generate_with_module(model, tokenizer, batch, module=module, method=method, runner=runner,
                                               max_new_tokens=cfg.max_new_tokens)
                    seconds += time.perf_counter() - t0
                    for prompt, text, ids in zip(batch, res.texts, res.token_ids, strict=True):
                        tokens += len(ids)
                        refused = judge(text)
                        judged.append(refused)
                        out.write(json.dumps({"method": method, "set": kind, "prompt": prompt, "response": text,
                                              "refusal": refused}) + "\n")
                entry[f"{kind}_refusal"] = rate(judged)
            entry["tokens_per_s"] = tokens / seconds if seconds else math.nan
            results["methods"][method] = entry
    write_json_atomic(metrics_path, results)
    write_text_atomic(report_path, render_report(results))
    return results


def render_report(results: dict[str, Any]) -> str:
    lines = ["# Guidance evaluation (held-out test prompts)", "",
             f"Judge: `{results['judge']}` (phrase match in the first 200 characters). "
             f"Module: `{results['module']}`. Max new tokens: {results['max_new_tokens']}.", "",
             "| method | refusal on harmful (higher is better) | refusal on benign (lower is better) | tokens/s |",
             "|---|---|---|---|"]
    for method, e in results["methods"].items():
        cells = []
        for kind in ("harmful", "benign"):
            r = e[f"{kind}_refusal"]
            cells.append(f"{100 * r['rate']:.1f}% ({r['k']}/{r['n']}; 95% CI {100 * r['ci95'][0]:.0f}-"
                         f"{100 * r['ci95'][1]:.0f}%)")
        lines.append(f"| {method} | {cells[0]} | {cells[1]} | {e['tokens_per_s']:.1f} |")
    return "\n".join(lines) + "\n"
