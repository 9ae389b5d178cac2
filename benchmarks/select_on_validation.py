"""Compare trained value modules on the VALIDATION split only: the numbers a choice between variants
(a stage-3 option, a gate budget) may be made on, since the test split and the held-out sources are
evaluation sets and never tuned on (issue 17).

For each module: SVGT (its own calibrated gate) answers every distinct validation prompt (harmful and
benign) greedily, as `svgt evaluate` does (same batching, horizon and refusal judge), and the report gives
the share of harmful prompts refused, of benign prompts refused, of benign answers token-identical to the
unguided backbone's, and the decode time. With ``--budgets`` each module is also run at the gate
thresholds those validation budgets give (recalibrated on the same split).

    .venv/bin/python benchmarks/select_on_validation.py --module base=models/stage3 --module new=/tmp/m3

Writes OUT.md and OUT.json (default reports/select_on_validation). A benchmark, not a test.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import pandas as pd

from svgt.backbone import load_snapshot
from svgt.backbone.runner import BlockRunner
from svgt.core.io import write_json_atomic, write_text_atomic
from svgt.core.params import load_params
from svgt.eval.guidance_eval import generate_sets
from svgt.eval.judges import RefusalJudge
from svgt.extract.store import HiddenStateStore
from svgt.methods import GuidanceMethod
from svgt.model import load_value_module
from svgt.training.calibrate import calibrate_gate


def validation_sets(frame: pd.DataFrame, limit: int) -> dict[str, list[str]]:
    val = frame[frame["split"] == "val"]
    sets = {}
    for name, label in (("harmful", 1), ("benign", 0)):
        prompts = val.loc[val["prompt_harmful"] == label, "prompt"].drop_duplicates().tolist()
        sets[name] = prompts[:limit] if limit else prompts
    return sets


def rates(run: Any, base: Any, judge: RefusalJudge) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, responses in run.responses.items():
        refused = [judge(r) for r in responses]
        out[f"{name}_n"] = len(responses)
        out[f"{name}_refused"] = sum(refused) / max(len(refused), 1)
    same = [a == b for a, b in zip(run.token_ids["benign"], base.token_ids["benign"], strict=True)]
    out["benign_unchanged"] = sum(same) / max(len(same), 1)
    if run.guided is not None:
        for name, flags in run.guided.items():
            out[f"{name}_guided"] = sum(flags) / max(len(flags), 1)
    out["decode_ms_per_token"] = 1000 * run.seconds / max(run.new_tokens, 1)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--module", action="append", required=True, metavar="LABEL=DIR",
                    help="a trained module directory (repeat to compare several)")
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--backbone", default=Path("data/backbone"), type=Path)
    ap.add_argument("--data", default=Path("data/values/values.parquet"), type=Path)
    ap.add_argument("--hidden", default=Path("data/hidden"), type=Path)
    ap.add_argument("--limit", type=int, default=0, help="prompts per set (0: every distinct validation prompt)")
    ap.add_argument("--budgets", type=float, nargs="*", default=[],
                    help="extra gate budgets (share of validation benign prompts allowed to open the gate)")
    ap.add_argument("--out", default=Path("reports/select_on_validation"), type=Path)
    args = ap.parse_args()

    params = load_params(args.params)
    cfg = params.evaluate
    frame = pd.read_parquet(args.data)
    sets = validation_sets(frame, args.limit)
    model, tokenizer, _ = load_snapshot(args.backbone)
    runner = BlockRunner(model)
    judge = RefusalJudge()
    base = generate_sets(GuidanceMethod("none"), model, tokenizer, runner, sets, cfg, with_scores=False)
    rows: list[dict[str, Any]] = [{"variant": "none", **rates(base, base, judge)}]
    for spec in args.module:
        label, _, directory = spec.partition("=")
        module, _ = load_value_module(directory)
        variants = [(label, module)]
        for budget in args.budgets:
            copy, _ = load_value_module(directory)
            copy.config = dataclasses.replace(copy.config, gate="calibrated", gate_budget=budget)
            calibrate_gate(copy, HiddenStateStore(args.hidden), frame, params.train.stage1.max_tokens,
                           params.train.stage3.max_response_tokens, backbone=(model, tokenizer))
            variants.append((f"{label} budget {budget:g}", copy))
        for name, mod in variants:
            t0 = time.perf_counter()
            run = generate_sets(GuidanceMethod("svgt", module=mod), model, tokenizer, runner, sets, cfg,
                                with_scores=False)
            row = {"variant": name, "module": directory, "gate_threshold": mod.config.threshold,
                   "gate_response_threshold": mod.config.response_threshold, **rates(run, base, judge),
                   "seconds": round(time.perf_counter() - t0, 1)}
            rows.append(row)
            print(json.dumps(row), flush=True)
    lines = ["# Module variants on the validation split (never an evaluation set)", "",
             f"{len(sets['harmful'])} harmful and {len(sets['benign'])} benign distinct validation prompts; "
             f"{cfg.max_new_tokens} new tokens, greedy; refusal judge `{judge.name}`.", "",
             "| variant | harmful refused | benign refused | benign unchanged | guided harmful | guided benign "
             "| decode ms/token |", "|---|---|---|---|---|---|---|"]
    pct = lambda x: "-" if x is None else f"{100 * x:.1f}%"  # noqa: E731
    for r in rows:
        lines.append(f"| {r['variant']} | {pct(r['harmful_refused'])} | {pct(r['benign_refused'])} | "
                     f"{pct(r['benign_unchanged'])} | {pct(r.get('harmful_guided'))} | {pct(r.get('benign_guided'))} | "
                     f"{r['decode_ms_per_token']:.1f} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(args.out.with_suffix(".json"), {"rows": rows})
    write_text_atomic(args.out.with_suffix(".md"), "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
