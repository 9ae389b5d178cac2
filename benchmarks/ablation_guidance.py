"""Ablation of the changes for issue 17 (judge intent, not topic; leave benign answers alone), on the same
held-out prompt sets, judges and trained module as `svgt evaluate`.

Guidance rows: eval-time variants of one trained module (``models/stage3``), each with harmful compliance,
over-refusal, unchanged benign answers, KL (nats/token) and decode ms/token:

* gate off, token refresh: the bridge after every prompt, refreshed from the current token (main before);
* gate off, response refresh: the same with the paper's refresh (prompt h_v; z from the answer so far);
* prompt gate only: guided when the prompt is judged harmful; answers never re-judged;
* gate, token refresh;
* gate, response refresh: the default;
* SVGT-Inject; each ``--trained LABEL=DIR`` module (a stage-3 variant trained from the same stage-2 module);
  the module's other calibrated operating points (``model.gate_budgets``).

Data rows (the prompt-level judgement, where over-refusal came from): a stage-1 discriminator trained on
the same data without the project-authored sensitive-topic prompts and their harmful contrasts, against one
trained with them (same seed, epochs, budget): AUROC on the held-out sources (harmful vs benign sensitive)
and the share of each held-out set that opens a gate calibrated to the same validation budget.

    .venv/bin/python benchmarks/ablation_guidance.py            # after `dvc repro` (reads its outputs)
    .venv/bin/python benchmarks/ablation_guidance.py --quick    # 16 prompts per set, 8 tokens: a smoke run

Writes ``reports/ablation.md`` and ``reports/ablation.json``. A benchmark, not a test: it reports numbers,
it asserts nothing.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from svgt.backbone import load_snapshot
from svgt.backbone.runner import BlockRunner
from svgt.core.io import write_json_atomic, write_text_atomic
from svgt.core.params import load_params
from svgt.decoding.guidance import prompt_states
from svgt.decoding.prompt_pass import PromptPassCache
from svgt.eval.guidance_eval import (
    BENIGN_SETS,
    build_prompt_sets,
    generate_sets,
    load_harm_judge,
    score_method,
    side_effects,
)
from svgt.eval.judges import RefusalJudge
from svgt.eval.metrics import auroc
from svgt.extract.store import HiddenStateStore
from svgt.methods import GuidanceMethod, budget_point, operating_point
from svgt.model import ValueModule, load_value_module
from svgt.training.calibrate import budget_threshold
from svgt.training.data import load_stage_examples
from svgt.training.job import job_from_params
from svgt.training.loop import LocalSession
from svgt.training.stages import discrimination_stage, score_examples

AUTHORED = ("svgt_benign_sensitive", "svgt_harmful_contrast")


def variant(module: ValueModule, name: str, **config: Any) -> GuidanceMethod:
    copy = load_copy(module)
    copy.config = dataclasses.replace(module.config, **config)
    return GuidanceMethod(name, module=copy)


def load_copy(module: ValueModule) -> ValueModule:
    twin = ValueModule(module.config)
    twin.load_state_dict(module.state_dict())
    return twin.eval()


def guidance_rows(args: argparse.Namespace, params: Any) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    cfg = dataclasses.replace(params.evaluate, methods=["none"])
    if args.quick:
        cfg = dataclasses.replace(cfg, max_harmful_prompts=8, max_heldout_harmful_prompts=16, max_benign_prompts=8,
                                  max_sensitive_prompts=16, max_harmbench_behaviors=0, max_new_tokens=8)
    model, tokenizer, manifest = load_snapshot(args.backbone)
    module, _ = load_value_module(args.module, expected_backbone_sha256=manifest.weights_sha256)
    frame = pd.read_parquet(args.data)
    sets, info = build_prompt_sets(frame, dataclasses.replace(cfg, max_harmbench_behaviors=0), args.cache)
    never = math.inf
    methods = [
        GuidanceMethod("none", module=module),
        # names "svgt@<variant>": each runs as SVGT with the variant's config
        variant(module, "svgt@gate-off,token-refresh (main before)", gate="off", refresh_context="token"),
        variant(module, "svgt@gate-off,response-refresh", gate="off", refresh_context="response"),
        variant(module, "svgt@prompt-gate-only", refresh_context="response", gate="fixed",
                gate_threshold=module.config.gate_threshold, gate_response_threshold=never),
        variant(module, "svgt@gate,token-refresh", refresh_context="token"),
        variant(module, "svgt (gate, response refresh: the default)", refresh_context="response"),
        GuidanceMethod("svgt-inject", module=module),
    ]
    # stage-3 variants trained from the same stage-2 module (chosen between on the validation split only;
    # reports/stage3_variants.md): here on the evaluation sets, for the table, not for choosing
    for spec in args.trained:
        label, _, directory = spec.partition("=")
        trained, _ = load_value_module(directory, expected_backbone_sha256=manifest.weights_sha256)
        methods.append(GuidanceMethod(f"svgt@{label}", module=trained))
    # the SVGT frontier: the module's other calibrated operating points, then any shifted thresholds
    methods += [budget_point(module, p.budget) for p in module.config.gate_points
                if p.budget != module.config.gate_budget]
    methods += [operating_point(module, module.config.gate_threshold + delta) for delta in args.threshold_shifts]
    harm = load_harm_judge(cfg, args.harm_judge)
    refusal = RefusalJudge()
    runner = BlockRunner(model)
    cache = PromptPassCache()
    runs, rows = {}, []
    for method in methods:
        t0 = time.perf_counter()
        run = generate_sets(method, model, tokenizer, runner, sets, cfg, False, prompt_cache=cache,
                            keep_logits=BENIGN_SETS)
        runs[method.name] = run
        extra = side_effects(method, model, tokenizer, runner, sets, cfg, runs["none"], cache, run) \
            if method.name != "none" else {}
        if method.name != "none":
            run.logits = None
        scored = score_method(run, sets, refusal, harm, None, runs["none"]) | extra
        rows.append({"variant": method.name, **scored, "wall_seconds": round(time.perf_counter() - t0, 1)})
        print(f"{method.name}: {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    return rows, {"sample_sizes": {k: len(v) for k, v in sets.items()}, **info, "max_new_tokens": cfg.max_new_tokens,
                  "module_gate": {"threshold": module.config.threshold,
                                  "response_threshold": module.config.response_threshold}}


def data_rows(args: argparse.Namespace, params: Any) -> list[dict[str, Any]]:
    """Stage-1 discriminators with and without the authored sensitive/contrast prompts: AUROC and gate open
    rates on the held-out sources, each at a threshold calibrated to the same validation budget."""
    frame = pd.read_parquet(args.data)
    store = HiddenStateStore(args.hidden)
    model, tokenizer, _ = load_snapshot(args.backbone)
    cfg = params.evaluate
    if args.quick:
        cfg = dataclasses.replace(cfg, max_heldout_harmful_prompts=16, max_sensitive_prompts=16)
    sets, _ = build_prompt_sets(frame, dataclasses.replace(cfg, max_harmbench_behaviors=0), args.cache)
    layer = store.layer
    states = {k: prompt_states(model, tokenizer, sets[k], layer) for k in ("harmful_heldout", "sensitive", "benign")}
    train = params.train
    if args.quick:
        train = dataclasses.replace(train, stage1=dataclasses.replace(train.stage1, epochs=1))
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, keep in (("without authored sensitive/contrast prompts", ~frame["source"].str.startswith(AUTHORED)),
                           ("with them (the default data)", pd.Series(True, index=frame.index))):
            path = Path(tmp) / f"{len(out)}.parquet"
            frame[keep].to_parquet(path)
            job = job_from_params(1, params.model, train, hidden_dir=str(args.hidden), data_path=str(path),
                                  backbone_dir=str(args.backbone), init_module=None)
            torch.manual_seed(train.seed)
            module = discrimination_stage(job, LocalSession(Path(tmp) / f"ckpt{len(out)}"), progress_bar=False).eval()
            val = load_stage_examples(store, frame[keep], "stage1", "val", train.stage1.max_tokens)
            threshold = budget_threshold(score_examples(module, [e for e in val if e.label == 0]),
                                         params.model.gate_budget)
            with torch.no_grad():
                scores = {k: module.score(*states[k])[1].float().numpy() for k in states}
            row = {"data": name, "stage1_rows_train": int(((frame[keep]["split"] == "train")
                                                          & frame[keep]["prompt_harmful"].notna()).sum()),
                   "heldout_auroc": auroc([1] * len(scores["harmful_heldout"]) + [0] * len(scores["sensitive"]),
                                          np.concatenate([scores["harmful_heldout"], scores["sensitive"]]).tolist()),
                   "threshold": threshold}
            row |= {f"open_{k}": float((v > threshold).mean()) for k, v in scores.items()}
            out.append(row)
            print(f"data: {name}: {row}", file=sys.stderr)
    return out


def _pct(cell: dict[str, Any] | None) -> str:
    return "-" if not cell or cell.get("rate") is None else f"{100 * cell['rate']:.1f}"


def render(guidance: list[dict[str, Any]], info: dict[str, Any], data: list[dict[str, Any]]) -> str:
    lines = ["# Ablation: judging intent, leaving benign answers alone (issue 17)", "",
             f"Same module (`models/stage3`), held-out sets and judges as `svgt evaluate`; {info['max_new_tokens']} "
             f"new tokens, greedy. Sets: {info['sample_sizes']}. Module gate thresholds: {info['module_gate']}.", "",
             "Harmful answered: harmful prompts (test split + held-out sources) not refused (refusal judge); harmful "
             "responses: the harm judge on the held-out sources. Unchanged: token-identical to `none`. KL: nats/token "
             "along `none`'s answer.", "",
             "| variant | harmful answered % | harmful responses held-out % | over-refusal sensitive % | "
             "over-refusal everyday % | unchanged everyday % | unchanged sensitive % | KL everyday | KL sensitive | "
             "decode ms/token |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in guidance:
        kl = [("-" if not r.get(k) else f"{r[k]['value']:.4f}") for k in ("kl_benign", "kl_sensitive")]
        lines.append(f"| {r['variant']} | {_pct(r.get('harmful_compliance'))} | "
                     f"{_pct(r.get('harmful_response_rate_heldout'))} | {_pct(r.get('over_refusal_sensitive'))} | "
                     f"{_pct(r.get('over_refusal_benign'))} | {_pct(r.get('unchanged_benign'))} | "
                     f"{_pct(r.get('unchanged_sensitive'))} | {kl[0]} | {kl[1]} | "
                     f"{r.get('decode_ms_per_token', float('nan')):.1f} |")
    if data:
        lines += ["", "## The prompt-level judgement: data that teaches intent", "",
                  "Stage-1 discriminators (same seed and epochs), each with its threshold calibrated to the same "
                  "validation budget; scored on the held-out sources.", "",
                  "| stage-1 data | train prompts | AUROC held-out (harmful vs sensitive benign) | gate opens: "
                  "harmful held-out % | sensitive benign % | everyday % |", "|---|---|---|---|---|---|"]
        for r in data:
            lines.append(f"| {r['data']} | {r['stage1_rows_train']} | {r['heldout_auroc']:.3f} | "
                         f"{100 * r['open_harmful_heldout']:.1f} | {100 * r['open_sensitive']:.1f} | "
                         f"{100 * r['open_benign']:.1f} |")
    return "\n".join(lines) + "\n"


def frontier(guidance: list[dict[str, Any]], eval_metrics: Path, out: Path) -> None:
    """SVGT's variants and operating points beside the baselines of the last `svgt evaluate` (same sets)."""
    from svgt.eval.plots import plot_frontier

    points = {}
    if eval_metrics.is_file():
        for name, e in json.loads(eval_metrics.read_text())["methods"].items():
            if not name.startswith("svgt") and "harmful_compliance" in e and "over_refusal_sensitive" in e:
                points[name] = (e["over_refusal_sensitive"]["rate"], e["harmful_compliance"]["rate"])
    for r in guidance:
        if r["variant"] != "none" and "harmful_compliance" in r and "over_refusal_sensitive" in r:
            label = r["variant"] if r["variant"].startswith("svgt") else f"svgt: {r['variant']}"
            points[label] = (r["over_refusal_sensitive"]["rate"], r["harmful_compliance"]["rate"])
    plot_frontier(points, out, title="SVGT variants and operating points vs baselines (lower left is better)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--backbone", default=Path("data/backbone"), type=Path)
    ap.add_argument("--module", default=Path("models/stage3"), type=Path)
    ap.add_argument("--data", default=Path("data/values/values.parquet"), type=Path)
    ap.add_argument("--hidden", default=Path("data/hidden"), type=Path)
    ap.add_argument("--harm-judge", default=Path("models/harm_judge"), type=Path)
    ap.add_argument("--cache", default=Path(".cache/svgt"), type=Path)
    ap.add_argument("--out", default=Path("reports/ablation"), type=Path, help="writes OUT.md and OUT.json")
    ap.add_argument("--eval-metrics", default=Path("metrics/eval.json"), type=Path,
                    help="the baselines' points for the frontier plot")
    ap.add_argument("--quick", action="store_true", help="small sets and 8 tokens: checks the script runs")
    ap.add_argument("--skip-data", action="store_true",
                    help="rerun only the guidance rows; the data rows (independent of stage 3) come from OUT.json")
    ap.add_argument("--threshold-shifts", type=float, nargs="*", default=[],
                    help="extra operating points: the calibrated prompt threshold plus each shift")
    ap.add_argument("--trained", action="append", default=[], metavar="LABEL=DIR",
                    help="a stage-3 variant trained from the same stage-2 module (repeatable): a row svgt@LABEL")
    args = ap.parse_args()
    params = load_params(args.params)
    guidance, info = guidance_rows(args, params)
    previous = args.out.with_suffix(".json")
    if args.skip_data:
        data = json.loads(previous.read_text())["data"] if previous.exists() else []
    else:
        data = data_rows(args, params)
    write_json_atomic(args.out.with_suffix(".json"), {"guidance": guidance, "data": data, **info})
    frontier(guidance, args.eval_metrics, args.out.parent.parent / "plots" / "ablation_frontier.png")
    write_text_atomic(args.out.with_suffix(".md"), render(guidance, info, data))
    print(render(guidance, info, data))


if __name__ == "__main__":
    main()
