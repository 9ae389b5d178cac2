"""Curriculum stage time with 1 and 2 data-parallel Ray Train workers on the embedded default.

Runs the real stage (``svgt.training.step.stage_job`` + ``run_stage``: the Ray Train job ``svgt train``
runs) on the pipeline's own inputs (``data/hidden``, ``data/values``, ``models/stage1``/``stage2`` from
``dvc repro``), once per worker count, each in a fresh Ray Train storage (nothing resumed). The machine's
cores are split between the workers (``cpus_per_worker`` = cores / workers, as many torch threads), so the
comparison is "the same machine, one process or several". Every run takes the same global batches; the
report also gives the largest weight difference between the 1- and N-worker modules (float tolerance).

Writes ``OUT.json`` and ``OUT.md`` atomically. A benchmark, not a test: nothing is asserted.

    .venv/bin/python benchmarks/bench_train_scaling.py                       # stages 1 and 3, 1 and 2 workers
    .venv/bin/python benchmarks/bench_train_scaling.py --stages 1 --workers 1 2 4
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from svgt.core.io import write_json_atomic, write_text_atomic  # noqa: E402
from svgt.core.params import load_params  # noqa: E402

INIT = {1: None, 2: "models/stage1", 3: "models/stage2"}


def run(params, stage: int, workers: int, cores: int, storage: Path) -> dict[str, Any]:
    import torch

    from svgt.training.ray_runner import run_stage
    from svgt.training.step import stage_job

    ray_cfg = dataclasses.replace(params.train.ray, num_workers=workers, cpus_per_worker=max(1, cores // workers),
                                  storage_path=str(storage), address=None)
    params = dataclasses.replace(params, train=dataclasses.replace(params.train, ray=ray_cfg))
    init = REPO / INIT[stage] if INIT[stage] else None
    job, fingerprint = stage_job(params, stage, hidden_dir=REPO / "data/hidden", data_path=REPO / "data/values"
                                 / "values.parquet", backbone_dir=REPO / "data/backbone", init_module=init)
    t0 = time.perf_counter()
    outcome = run_stage(job, fingerprint)
    seconds = time.perf_counter() - t0
    steps = outcome.history[-1]["step"]
    return {"stage": stage, "workers": workers, "cpus_per_worker": ray_cfg.cpus_per_worker, "seconds": seconds,
            "steps": steps, "history": outcome.history,
            "weights": {k: v.detach().clone() for k, v in outcome.module.state_dict().items()},
            "torch_threads": torch.get_num_threads()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--params", default=str(REPO / "params.yaml"))
    ap.add_argument("--stages", type=int, nargs="+", default=[1, 3])
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--stage3-rows", type=int, default=96,
                    help="stage 3 trains on this many rows for one epoch (0: the params' full stage)")
    ap.add_argument("--out", default=str(REPO / "reports/bench_train_scaling"))
    args = ap.parse_args(argv)

    import ray

    from svgt.training.ray_runner import ensure_ray

    params = load_params(args.params)
    if args.stage3_rows:
        s3 = dataclasses.replace(params.train.stage3, max_train_rows=args.stage3_rows, epochs=1)
        params = dataclasses.replace(params, train=dataclasses.replace(params.train, stage3=s3))
    cores = os.cpu_count() or 1
    # one local Ray for every run, started before the clock: the runs time the stage, not Ray's start-up
    ensure_ray(dataclasses.replace(params.train.ray, num_workers=max(args.workers), cpus_per_worker=1,
                                   address=None))
    runs = []
    try:
        with tempfile.TemporaryDirectory(prefix="svgt-bench-scaling-") as tmp:
            for stage in args.stages:
                for w in args.workers:
                    print(f"stage {stage}, {w} worker(s) ...", flush=True)
                    runs.append(run(params, stage, w, cores, Path(tmp) / f"s{stage}w{w}"))
                    print(f"  {runs[-1]['seconds']:.1f} s", flush=True)
    finally:
        ray.shutdown()

    rows = []
    for r in runs:
        base = next(b for b in runs if b["stage"] == r["stage"] and b["workers"] == min(args.workers))
        diff = max(float((r["weights"][k] - base["weights"][k]).abs().max()) for k in r["weights"])
        rows.append({"stage": r["stage"], "workers": r["workers"], "cpus_per_worker": r["cpus_per_worker"],
                     "seconds": round(r["seconds"], 1), "steps": r["steps"],
                     "seconds_per_step": round(r["seconds"] / r["steps"], 3),
                     "speed_up": round(base["seconds"] / r["seconds"], 2),
                     "max_weight_diff_vs_fewest_workers": diff,
                     "final_train_loss": {k: v for k, v in r["history"][-1].items()
                                          if k in ("train_loss", "train_total")}})
    report = {"machine": {"cpu_count": cores, "platform": platform.platform(), "python": platform.python_version()},
              "params": args.params, "stage3_rows": args.stage3_rows, "runs": rows}
    out = Path(args.out)
    write_json_atomic(out.with_suffix(".json"), report)
    lines = ["# Training scale-out: stage time with 1 and 2 data-parallel workers", "",
             f"`python benchmarks/bench_train_scaling.py` on {cores} cores ({platform.platform()}); stage 3 on "
             f"{args.stage3_rows or 'all'} rows, one epoch. Each worker count splits the cores between its workers "
             "and takes the same global batches. Times: `run_stage` (worker start-up, data loading, training, "
             "validation), Ray started beforehand. Stages 1-2 with dropout draw other masks for a row on another "
             "worker: their weights agree in distribution, not to float tolerance (stage 3 trains no dropout).", "",
             "| stage | workers | CPUs/worker | s | steps | s/step | speed-up | max weight diff vs 1 worker |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['stage']} | {r['workers']} | {r['cpus_per_worker']} | {r['seconds']} | {r['steps']} | "
                     f"{r['seconds_per_step']} | {r['speed_up']}x | {r['max_weight_diff_vs_fewest_workers']:.1e} |")
    write_text_atomic(out.with_suffix(".md"), "\n".join(lines) + "\n")
    print(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
