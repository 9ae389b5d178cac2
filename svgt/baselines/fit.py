"""Fit every trained baseline from the canonical dataset's train split and save each one.

Output: ``out_dir/<method>/`` per method (see ``base.py``) and ``out_dir/summary.json``: per method the
rows used, probe accuracies / losses, chosen layers / heads / neurons and NeVA's leakage. The returned
summary (``metrics/baselines.json``) adds the fit seconds, which the artifact leaves out so that refitting
on the same inputs writes the same bytes.
The probe-based methods share one activation pass over the probe rows; its time is reported once as
``activation_seconds`` and not inside the methods' ``fit_seconds``.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from transformers import PreTrainedModel

from svgt.backbone.snapshot import load_snapshot
from svgt.baselines.activations import Encoding, collect_activations
from svgt.baselines.base import Baseline, BaselineError
from svgt.baselines.conva import fit_conva
from svgt.baselines.data import gate_rows, preference_pairs, probe_rows, train_frame
from svgt.baselines.dpo import fit_dpo
from svgt.baselines.iti import choose_alpha, fit_iti, side_effect_kl
from svgt.baselines.neva import fit_neva, value_leakage
from svgt.baselines.probes import holdout_split
from svgt.baselines.re_control import fit_re_control
from svgt.baselines.registry import BASELINE_METHODS
from svgt.baselines.system_prompt import SystemPromptBaseline
from svgt.core.io import sha256_file, without_timings, write_json_atomic
from svgt.core.params import BaselinesConfig

log = logging.getLogger(__name__)

SUMMARY = "summary.json"
_PARTS = {"iti": ("attn_in",), "conva": ("block_out",), "neva": ("mlp_in", "block_out"), "re-control": ("head_in",)}


def _check_methods(methods: Sequence[str] | None) -> list[str]:
    chosen = list(BASELINE_METHODS if methods is None else methods)
    unknown = [m for m in chosen if m not in BASELINE_METHODS]
    if unknown:
        raise BaselineError(f"unknown baseline method(s) {unknown} (known: {', '.join(BASELINE_METHODS)})")
    return chosen


def fit_baselines_on(
    model: PreTrainedModel,
    tokenizer: Any,
    frame: pd.DataFrame,
    cfg: BaselinesConfig,
    out_dir: str | Path,
    *,
    methods: Sequence[str] | None = None,
    metadata: dict[str, Any] | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Fit ``methods`` (default: all six) on the train rows ``frame`` with an already loaded backbone."""
    chosen = _check_methods(methods)
    out_dir = Path(out_dir)
    encoding = Encoding(cfg.max_prompt_tokens, cfg.max_response_tokens, cfg.chat_template)
    metadata = {**(metadata or {}), "baselines_config": dataclasses.asdict(cfg)}
    results: dict[str, dict[str, Any]] = {}

    def save(baseline: Baseline, summary: dict[str, Any], started: float) -> None:
        baseline.save(out_dir / baseline.method, metadata)
        results[baseline.method] = {**summary, "fit_seconds": round(time.perf_counter() - started, 2)}
        log.info(
            "%s: fitted in %.1fs -> %s",
            baseline.method,
            results[baseline.method]["fit_seconds"],
            out_dir / baseline.method,
        )

    t_all = time.perf_counter()
    if "system-prompt" in chosen:
        save(SystemPromptBaseline(cfg.system_prompt.text), {"rows": 0}, time.perf_counter())

    summary: dict[str, Any] = {"methods": results}
    probe_methods = [m for m in chosen if m in _PARTS]
    if probe_methods:
        rows = probe_rows(frame, cfg.max_rows, cfg.seed)
        safe = torch.tensor(rows["safe"].to_numpy(), dtype=torch.long)
        split = holdout_split(safe, cfg.holdout_fraction, cfg.seed)
        parts = sorted({p for m in probe_methods for p in _PARTS[m]})
        t0 = time.perf_counter()
        acts = collect_activations(
            model,
            tokenizer,
            list(rows["prompt"]),
            list(rows["response"]),
            encoding,
            parts=parts,
            batch_size=cfg.batch_size,
            progress=progress,
            desc="probe rows",
        )
        summary["activation_seconds"] = round(time.perf_counter() - t0, 2)
        row_info = {"rows": len(rows), "rows_safe": int(safe.sum()), "rows_held_out": len(split[1])}
        log.info(
            "activations of %d probe rows (%s) in %.1fs", len(rows), ", ".join(parts), summary["activation_seconds"]
        )
        if "iti" in chosen:
            t0 = time.perf_counter()
            num_heads = int(model.config.get_text_config().num_attention_heads)
            baseline, info = fit_iti(acts.attn_in, safe, *split, num_heads, cfg.iti, seed=cfg.seed)
            if cfg.iti.alpha is None:  # the strength from its side effect on held-out benign answers
                held_out = rows.iloc[split[1].tolist()]
                benign = held_out[held_out["prompt_harmful"].eq(0).fillna(False).astype(bool)]  # NA: unknown
                if benign.empty:
                    raise BaselineError("iti: no benign prompt among the held-out probe rows to choose alpha on "
                                        "(set baselines.iti.alpha)")
                kls = side_effect_kl(model, tokenizer, baseline, list(zip(benign["prompt"], benign["response"],
                                                                          strict=True)),
                                     list(cfg.iti.alphas), encoding, cfg.batch_size)
                baseline = dataclasses.replace(baseline, alpha=choose_alpha(kls, cfg.iti.max_kl))
                info |= {"alpha": baseline.alpha, "alpha_kl": {f"{a:g}": round(k, 6) for a, k in kls.items()},
                         "alpha_rows": len(benign)}
                log.info("iti: alpha %g (KL on %d held-out benign answers: %s)", baseline.alpha, len(benign),
                         ", ".join(f"{a:g}: {k:.3f}" for a, k in kls.items()))
            save(baseline, {**row_info, **info}, t0)
        if "conva" in chosen:
            t0 = time.perf_counter()
            gates = gate_rows(frame, cfg.max_gate_rows, cfg.seed)
            relevant = torch.tensor(gates["relevant"].to_numpy(), dtype=torch.long)
            gate_acts = collect_activations(
                model,
                tokenizer,
                list(gates["prompt"]),
                [None] * len(gates),
                encoding,
                parts=("block_out",),
                batch_size=cfg.batch_size,
                progress=progress,
                desc="gate prompts",
            )
            baseline, info = fit_conva(
                acts.block_out,
                safe,
                split,
                gate_acts.block_out,
                relevant,
                holdout_split(relevant, cfg.holdout_fraction, cfg.seed),
                cfg.conva,
                seed=cfg.seed,
            )
            save(baseline, {**row_info, "gate_rows": len(gates), **info}, t0)
        if "re-control" in chosen:
            t0 = time.perf_counter()
            baseline, info = fit_re_control(
                acts.head_in, safe, *split, cfg.re_control, seed=cfg.seed, progress=progress
            )
            save(baseline, {**row_info, **info}, t0)
        if "neva" in chosen:
            t0 = time.perf_counter()
            baseline, info = fit_neva(acts.mlp_in, safe, split[0], cfg.neva)
            info["leakage"] = value_leakage(
                model,
                tokenizer,
                baseline,
                list(rows["prompt"]),
                list(rows["response"]),
                safe,
                list(rows["category"]),
                acts.block_out[:, -1],
                split,
                encoding,
                cfg.neva.leakage_values,
                cfg.batch_size,
                seed=cfg.seed,
            )
            save(baseline, {**row_info, **info}, t0)

    if "dpo-lora" in chosen:
        t0 = time.perf_counter()
        pairs, kinds = preference_pairs(frame, cfg.dpo.max_pairs, cfg.seed)
        baseline, info = fit_dpo(model, tokenizer, pairs, cfg.dpo, encoding, seed=cfg.seed, progress=progress)
        save(baseline, {"rows": 2 * len(pairs), "pair_kinds": kinds, **info}, t0)

    summary["total_seconds"] = round(time.perf_counter() - t_all, 2)
    summary.update({k: v for k, v in metadata.items() if k != "baselines_config"})
    write_json_atomic(out_dir / SUMMARY, without_timings(summary))  # same fit, same bytes (DVC output)
    return summary


def fit_baselines(
    backbone_dir: str | Path,
    data_path: str | Path,
    cfg: BaselinesConfig,
    out_dir: str | Path,
    *,
    methods: Sequence[str] | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Load the backbone snapshot and the train split, fit every baseline, write ``out_dir`` (see module doc)."""
    model, tokenizer, manifest = load_snapshot(backbone_dir)
    frame = train_frame(data_path)
    metadata = {"backbone_sha256": manifest.weights_sha256, "data_sha256": sha256_file(data_path)}
    torch.manual_seed(cfg.seed)
    return fit_baselines_on(
        model, tokenizer, frame, cfg, out_dir, methods=methods, metadata=metadata, progress=progress
    )
