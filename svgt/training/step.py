"""`svgt train --stage N`: one curriculum stage, from inputs on disk to an exported value module."""

from __future__ import annotations

import csv
import hashlib
import io
import logging
import math
import time
from pathlib import Path
from typing import Any

import pandas as pd

from svgt.backbone.snapshot import load_snapshot
from svgt.core.io import sha256_file, without_timings, write_json_atomic, write_text_atomic
from svgt.core.params import Params
from svgt.data.card import summary_beside
from svgt.extract.store import HiddenStateStore
from svgt.model import save_value_module
from svgt.model.module import load_value_module
from svgt.training.calibrate import calibrate_gate
from svgt.training.data import load_stage_examples
from svgt.training.job import StageJob, job_from_params
from svgt.training.loop import RESUMED_FROM_STEP
from svgt.training.ray_runner import run_stage
from svgt.training.stages import evaluate_discrimination

log = logging.getLogger(__name__)


def _fingerprint(*paths: Path) -> str:
    h = hashlib.sha256()
    for p in paths:
        if p.is_dir():
            for f in sorted(x for x in p.rglob("*") if x.is_file() and x.suffix in (".json", ".safetensors")):
                if f.name in ("index.json", "manifest.json"):
                    h.update(f.read_bytes())
        elif p.is_file():
            h.update(sha256_file(p).encode())
    return h.hexdigest()


def _what_it_produced(metrics: dict[str, Any]) -> dict[str, Any]:
    """``metrics`` without how the run went (timings, where it resumed): the same inputs, the same bytes."""
    return {k: v for k, v in without_timings(metrics).items() if not k.endswith(RESUMED_FROM_STEP)}


def _finite(metrics: dict[str, Any]) -> dict[str, Any]:
    return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in metrics.items()}


def _curve_csv(history: list[dict[str, Any]]) -> str:
    keys = sorted({k for row in history for k in row})
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=keys)
    writer.writeheader()
    writer.writerows(history)
    return buf.getvalue()


def stage_job(
    params: Params, stage: int, *, hidden_dir: Path, data_path: Path, backbone_dir: Path, init_module: Path | None
) -> tuple[StageJob, str]:
    """The stage's job description and its inputs' fingerprint (together they name the Ray run)."""
    if stage in (2, 3) and init_module is None:
        raise ValueError(f"stage {stage} needs --init (the module exported by stage {stage - 1})")
    # Ray workers do not share the driver's working directory: hand them absolute paths (on a cluster
    # these must be on storage every node sees)
    job = job_from_params(
        stage,
        params.model,
        params.train,
        hidden_dir=str(hidden_dir.resolve()),
        data_path=str(data_path.resolve()),
        backbone_dir=str(backbone_dir.resolve()),
        init_module=str(init_module.resolve()) if init_module else None,
    )
    return job, _fingerprint(hidden_dir, data_path, *([init_module] if init_module else []))


def train_stage(
    params: Params,
    stage: int,
    *,
    hidden_dir: Path,
    data_path: Path,
    backbone_dir: Path,
    init_module: Path | None,
    out_dir: Path,
    metrics_dir: Path,
    plots_dir: Path,
    in_cluster: bool = False,
) -> dict[str, Any]:
    """Train one stage on Ray Train, evaluate it on the test split and export module + metrics.

    ``in_cluster``: this process is a submitted Ray job's driver (see :mod:`svgt.training.submit`).
    """
    t0 = time.perf_counter()
    job, fingerprint = stage_job(
        params, stage, hidden_dir=hidden_dir, data_path=data_path, backbone_dir=backbone_dir, init_module=init_module
    )
    outcome = run_stage(job, fingerprint, in_cluster=in_cluster)
    train_seconds = time.perf_counter() - t0
    store = HiddenStateStore(hidden_dir)
    test = _test_metrics(params, stage, outcome.module, store, data_path, init_module)
    if stage == 3:  # the finished module's operating point (svgt/training/calibrate.py)
        model, tokenizer, _ = load_snapshot(backbone_dir, dtype="float32")
        gate = calibrate_gate(outcome.module, store, pd.read_parquet(data_path), params.train.stage1.max_tokens,
                              params.train.stage3.max_response_tokens, backbone=(model, tokenizer))
        test |= {f"gate_{k}" if not k.startswith("gate") else k: v for k, v in gate.items()}
        log.info("stage 3 gate: %s", gate)
    metrics = {
        "stage": stage,
        "train_seconds": round(train_seconds, 1),
        "epochs": len(outcome.history),
        **({"final_" + k: v for k, v in outcome.history[-1].items()} if outcome.history else {}),
        **test,
    }
    metadata = {
        "stage": stage,
        "backbone_source": store.index["backbone"]["source"],
        "backbone_weights_sha256": store.index["backbone"]["weights_sha256"],
        "layer": store.layer,
        "data_sha256": sha256_file(data_path),
        "hidden_index_sha256": sha256_file(hidden_dir / "index.json"),
        # the run's name under train.ray.storage_path, not its absolute path, and no timings: the same
        # inputs give the same module directory, byte for byte, wherever and however long it ran
        "ray_run": Path(outcome.run_path.rstrip("/")).name,
        "params": job.result_params(),
        "metrics": _finite(_what_it_produced(metrics)),
        "history": [_finite(_what_it_produced(h)) for h in outcome.history],
    }
    save_value_module(outcome.module, out_dir, metadata, data_card=summary_beside(data_path))
    write_json_atomic(metrics_dir / f"stage{stage}.json", _finite(metrics))
    write_text_atomic(plots_dir / f"stage{stage}.csv", _curve_csv(outcome.history))
    log.info("stage %d done in %.0fs (Ray Train run %s): %s", stage, train_seconds, outcome.run_path,
             {k: v for k, v in test.items() if "auroc" in k})
    return metrics


def _test_metrics(
    params: Params, stage: int, module: Any, store: HiddenStateStore, data_path: Path, init_module: Path | None
) -> dict[str, Any]:
    frame = pd.read_parquet(data_path)
    t = params.train
    if stage == 1:
        prompts = load_stage_examples(store, frame, "stage1", "test", t.stage1.max_tokens)
        return {f"test_prompt_{k}": v for k, v in evaluate_discrimination(module, prompts).items()}
    if stage == 2:
        pairs = load_stage_examples(store, frame, "stage2", "test", t.stage2.max_tokens)
        out = {f"test_pair_{k}": v for k, v in evaluate_discrimination(module, pairs).items()}
        assert init_module is not None
        stage1, _ = load_value_module(init_module)
        # the paper's stage 1 -> 2 comparison: the same test pairs, judged without / with the prompt context
        out |= {f"test_pair_stage1_{k}": v for k, v in evaluate_discrimination(stage1, pairs, use_prompt=False).items()}
        return out
    return {}
