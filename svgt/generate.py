"""`svgt generate`: stream JSONL prompts through the backbone with or without a value module.

Input: one JSON object per line with a ``prompt`` field (and optional ``id``). Output: one JSON object
per prompt, ``{id, prompt, response, method, finish_reason, new_tokens, seconds}`` (with a gated value
module also ``guided_from``: the token from which the guidance acted, null if it never did), flushed batch by
batch so memory stays flat however long the file is. A bad input line is reported (file and line) and
skipped; the rest still runs.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from svgt.backbone import load_snapshot
from svgt.backbone.runner import BlockRunner
from svgt.core.errors import UsageError
from svgt.methods import check_methods, load_method, needs_module
from svgt.model import load_value_module

log = logging.getLogger(__name__)


@dataclass
class GenerateSummary:
    prompts: int = 0
    bad_lines: int = 0
    new_tokens: int = 0
    seconds: float = 0.0


def read_prompts(path: Path, errors: list[str]) -> Iterator[dict[str, Any]]:
    """Yield ``{id, prompt}`` records; malformed lines are described in ``errors`` and skipped."""
    with open(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            where = f"{path}:{number}"
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as err:
                errors.append(f"{where}: not valid UTF-8 (byte {err.start})")
                continue
            if not text.strip():
                continue
            try:
                record = json.loads(text)
            except json.JSONDecodeError as err:
                errors.append(f"{where}: not valid JSON ({err.msg})")
                continue
            prompt = record.get("prompt") if isinstance(record, dict) else None
            if not isinstance(prompt, str) or not prompt.strip():
                errors.append(f"{where}: needs a non-empty string field 'prompt'")
                continue
            yield {"id": str(record.get("id", f"line-{number}")), "prompt": prompt}


def _batches(records: Iterator[dict[str, Any]], size: int) -> Iterator[list[dict[str, Any]]]:
    batch: list[dict[str, Any]] = []
    for r in records:
        batch.append(r)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def run_generate(*, backbone_dir: Path, module_uri: str | None, method: str, prompts: list[str] | None,
                 prompts_file: Path | None, out: IO[str], max_new_tokens: int = 128,
                 refresh_interval: int | None = None, batch_size: int = 8, chat_template: bool = True,
                 do_sample: bool = False, temperature: float = 1.0, top_p: float = 1.0,
                 seed: int | None = None, tracking_uri: str | None = None,
                 baselines_dir: Path | None = None, threshold: float | str | None = "module",
                 gate_budget: float | None = None) -> GenerateSummary:
    check_methods([method])
    if needs_module(method) and module_uri is None:
        raise ValueError(f"--method {method} needs --module")
    if gate_budget is not None and threshold != "module":
        raise UsageError("--gate-budget and --threshold both set the gate: give one")
    model, tokenizer, manifest = load_snapshot(backbone_dir)
    module = None
    if module_uri is not None and needs_module(method):
        from svgt.registry.uri import resolve_module_uri

        module, _ = load_value_module(resolve_module_uri(module_uri, tracking_uri),
                                      expected_backbone_sha256=manifest.weights_sha256)
        if gate_budget is not None:
            module = module.at_gate_budget(gate_budget)
    guidance = load_method(method, module=module, baselines_dir=baselines_dir,
                           backbone_sha256=manifest.weights_sha256)
    guidance.threshold = threshold
    runner = BlockRunner(model)
    errors: list[str] = []
    if prompts_file is not None:
        records = read_prompts(prompts_file, errors)
    else:
        records = iter({"id": f"prompt-{i}", "prompt": p} for i, p in enumerate(prompts or []))
    summary = GenerateSummary()
    t0 = time.perf_counter()
    for batch in _batches(records, batch_size):
        start = time.perf_counter()
        extra = {"refresh_interval": refresh_interval} if module is not None else {}
        result = guidance.generate(model, tokenizer, [r["prompt"] for r in batch], runner=runner,
                                   max_new_tokens=max_new_tokens, chat_template=chat_template, do_sample=do_sample,
                                   temperature=temperature, top_p=top_p, seed=seed, **extra)
        seconds = (time.perf_counter() - start) / len(batch)
        guided = result.guided_from or [None] * len(batch)
        for r, text, reason, ids, since in zip(batch, result.texts, result.finish_reasons, result.token_ids, guided,
                                               strict=True):
            gate = {"guided_from": since} if result.guided_from is not None else {}
            out.write(json.dumps({**r, "response": text, "method": method, "finish_reason": reason,
                                  "new_tokens": len(ids), "seconds": round(seconds, 3), **gate}) + "\n")
            summary.new_tokens += len(ids)
        out.flush()
        summary.prompts += len(batch)
        for line in errors[summary.bad_lines:]:
            print(f"svgt generate: skipped {line}", file=sys.stderr)
        summary.bad_lines = len(errors)
    for line in errors[summary.bad_lines:]:
        print(f"svgt generate: skipped {line}", file=sys.stderr)
    summary.bad_lines = len(errors)
    summary.seconds = time.perf_counter() - t0
    return summary
