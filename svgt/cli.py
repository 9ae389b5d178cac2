"""`svgt <step>`: argument parsing only; each command calls one library function.

DVC stages and Prefect tasks both run these same entry points, so no step's logic exists twice.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from svgt.config import ConfigError, Params, load_params
from svgt.method_names import ALL_METHODS

if TYPE_CHECKING:  # the registry imports MLflow: only the register step pays for it
    from svgt.registry import RegisteredVersion

log = logging.getLogger("svgt")

DEFAULTS = {
    "backbone": Path("data/backbone"),
    "values": Path("data/values/values.parquet"),
    "card": Path("data/values/CARD.md"),
    "validation": Path("reports/validation"),
    "hidden": Path("data/hidden"),
    "metrics": Path("metrics"),
}


class StepFailed(RuntimeError):
    """A step ran but its result says the pipeline must stop (e.g. validation failed)."""


def cmd_backbone(params: Params, args: argparse.Namespace) -> None:
    from svgt.backbone import build_snapshot

    manifest = build_snapshot(params.backbone, args.out)
    print(
        f"backbone snapshot {args.out}: {manifest.architecture}, {manifest.num_layers} layers, "
        f"width {manifest.hidden_size}, sha256 {manifest.weights_sha256[:12]}"
    )


def cmd_ingest(params: Params, args: argparse.Namespace) -> None:
    from svgt.data.ingest import run_ingest

    summary = run_ingest(params.data, Path(args.out), Path(args.card), Path(params.backbone.cache_dir))
    print(f"canonical dataset {args.out}: {summary}")


def cmd_card(params: Params, args: argparse.Namespace) -> None:
    from svgt.data.card import write_full_card

    write_full_card(args.summary, args.extract_metrics, args.out)
    print(f"dataset card with extraction statistics: {args.out}")


def cmd_validate(params: Params, args: argparse.Namespace) -> None:
    from svgt.data.validation import format_failures, validate_dataset

    result = validate_dataset(Path(args.data), params.validate, Path(args.reports))
    if not result.success:
        raise StepFailed(
            f"validation of {args.data} failed ({len(result.failures)} problems); "
            f"report: {result.report_path}\n{format_failures(result)}"
        )
    print(f"validation passed: {result.n_rows} rows; report: {result.report_path}")


def cmd_extract(params: Params, args: argparse.Namespace) -> None:
    from svgt.extract import extract_hidden_states

    _require_validation(Path(args.validation), Path(args.data))
    summary = extract_hidden_states(Path(args.backbone), Path(args.data), params.extract, Path(args.out))
    metrics = {
        "layer": summary.layer,
        "examples": summary.examples,
        "tokens": summary.tokens,
        "tokens_total": summary.tokens_total,
        "tokens_per_second": round(summary.tokens_per_second, 1),
        "wall_seconds": round(summary.wall_seconds, 1),
        "shards_written": summary.shards_written,
        "shards_skipped": summary.shards_skipped,
        "prompts_truncated": summary.prompt_truncated,
        "responses_truncated": summary.response_truncated,
    }
    from svgt.io import write_json_atomic

    write_json_atomic(Path(args.metrics) / "extract.json", metrics)
    print(json.dumps(metrics))


def cmd_baselines(params: Params, args: argparse.Namespace) -> None:
    from svgt.baselines import fit_baselines
    from svgt.io import write_json_atomic

    summary = fit_baselines(Path(args.backbone), Path(args.data), params.baselines, Path(args.out))
    write_json_atomic(Path(args.metrics) / "baselines.json", summary)
    seconds = {m: s["fit_seconds"] for m, s in summary["methods"].items()}
    print(f"baselines {args.out}: {json.dumps(seconds)} (total {summary['total_seconds']}s)")


def cmd_train(params: Params, args: argparse.Namespace) -> None:
    from svgt.training import submit
    from svgt.training.step import train_stage

    inputs = {"hidden_dir": args.hidden, "data_path": args.data, "backbone_dir": args.backbone}
    inputs["init_module"] = args.init
    outputs = {"out_dir": args.out or Path(f"models/stage{args.stage}"), "metrics_dir": args.metrics}
    outputs["plots_dir"] = args.plots
    address = submit.job_server_address(params.train.ray)
    if (args.detach or args.attach) and (address is None or args.in_cluster):
        raise StepFailed(
            "--detach/--attach need a Ray job server address (train.ray.address or RAY_ADDRESS "
            "http://HEAD:8265) and do not go with --in-cluster"
        )
    if args.in_cluster:  # this process is the submitted job's driver
        metrics = submit.run_in_cluster(params, args.stage, **inputs)
    elif address is not None:
        if args.attach:
            result = submit.attach_stage(address, args.attach, stage=args.stage, **outputs)
        else:
            result = submit.submit_stage(params, args.stage, **inputs, **outputs, detach=args.detach)
        if result.metrics is None:
            detached = {"submission_id": result.submission_id, "status": result.status, "address": result.address}
            print(json.dumps(detached))
            return
        metrics = result.metrics
    else:
        metrics = train_stage(params, args.stage, **inputs, **outputs)
    print(json.dumps(metrics, default=str))


def cmd_generate(params: Params, args: argparse.Namespace) -> None:
    from svgt.generate import run_generate

    if (args.prompt is None) == (args.prompts_file is None):
        raise StepFailed("give exactly one of --prompt TEXT or --prompts-file FILE.jsonl")
    out = open(args.out, "w", encoding="utf-8") if args.out else sys.stdout  # noqa: SIM115
    try:
        summary = run_generate(backbone_dir=args.backbone, module_uri=args.module, method=args.method,
                               prompts=[args.prompt] if args.prompt is not None else None,
                               prompts_file=args.prompts_file, out=out, max_new_tokens=args.max_new_tokens,
                               refresh_interval=args.refresh_interval, batch_size=args.batch_size,
                               chat_template=not args.no_chat_template, do_sample=args.temperature > 0,
                               temperature=args.temperature or 1.0, top_p=args.top_p, seed=args.seed,
                               tracking_uri=args.tracking_uri or params.registry.tracking_uri,
                               baselines_dir=args.baselines, threshold=args.threshold)
    finally:
        if args.out:
            out.close()
    log.info("generated %d responses (%d tokens, %.1f tokens/s); %d bad input lines skipped", summary.prompts,
             summary.new_tokens, summary.new_tokens / max(summary.seconds, 1e-9), summary.bad_lines)


def cmd_judge(params: Params, args: argparse.Namespace) -> None:
    from svgt.eval.judges import write_refusal_judge_report
    from svgt.eval.judges.classifier import train_harm_classifier
    from svgt.io import write_json_atomic

    cache = Path(params.backbone.cache_dir)
    refusal = write_refusal_judge_report(cache, args.metrics / "refusal_judge.json")
    harm = train_harm_classifier(cache, args.data, args.out)
    write_json_atomic(args.metrics / "harm_judge.json", harm)
    print(f"refusal judge on PyRIT human labels: accuracy {refusal['accuracy']:.3f}, precision "
          f"{refusal['precision']:.3f}, recall {refusal['recall']:.3f} (n={refusal['n']}); harm judge {args.out}")


def cmd_evaluate(params: Params, args: argparse.Namespace) -> None:
    from svgt.eval.guidance_eval import evaluate_guidance

    evaluate_guidance(backbone_dir=args.backbone, module_dir=args.module, data_path=args.data, cfg=params.evaluate,
                      metrics_path=args.metrics / "eval.json", report_path=args.report,
                      generations_path=args.generations, baselines_dir=args.baselines, harm_judge_dir=args.harm_judge,
                      plots_dir=args.plots, cache_dir=Path(params.backbone.cache_dir))
    print(Path(args.report).read_text(encoding="utf-8"))


def cmd_register(params: Params, args: argparse.Namespace) -> RegisteredVersion:
    import dataclasses
    import subprocess

    from svgt.gates import check_gates, format_gate_report, write_gate_report
    from svgt.registry import register_module

    report = check_gates(args.metrics, params.gates)
    write_gate_report(report, args.metrics / "gates.json")
    print(format_gate_report(report))
    if not report.passed:
        raise StepFailed(f"not registered: {len(report.failed)} gate(s) failed (see above)")
    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip() or None
    version = register_module(args.module, report, params.registry, params=dataclasses.asdict(params),
                              git_commit=commit)
    if version.reused:
        print(f"not registered again: {args.module} is byte-identical to {version.name} version {version.version}; "
              f"its alias(es) now: {', '.join(version.aliases)}")
    else:
        print(f"registered {version.name} version {version.version} with alias(es) {', '.join(version.aliases)}")
    return version


def cmd_promote(params: Params, args: argparse.Namespace) -> None:
    import dataclasses

    from svgt.registry import promote

    src = params.registry
    if args.to_tracking_uri is None:
        if args.to_model_name or args.to_experiment:
            raise StepFailed("--to-model-name and --to-experiment need --to-tracking-uri")
        version = promote(src, alias=args.alias, version=args.version, from_alias=args.from_alias)
        print(f"{src.model_name}@{args.alias} -> version {version}")
        return
    from svgt.registry import copy_version
    from svgt.registry_uri import redact_url

    dst = dataclasses.replace(src, tracking_uri=args.to_tracking_uri, model_name=args.to_model_name or src.model_name,
                              experiment=args.to_experiment or src.experiment)
    copied = copy_version(src, dst, version=args.version, from_alias=args.from_alias, alias=args.alias)
    how = "an identical version already there" if copied.reused else "a new version"
    print(f"{dst.model_name}@{args.alias} in {redact_url(dst.tracking_uri)} -> version {copied.version} ({how})")


def _require_validation(report_dir: Path, data: Path) -> None:
    """Downstream steps refuse data whose validation did not pass, never ran, or validated other bytes."""
    from svgt.io import sha256_file

    summary = report_dir / "validation_summary.json"
    try:
        result = json.loads(summary.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise StepFailed(f"{summary} not found: run `svgt validate` first") from None
    if result.get("success") is not True:
        raise StepFailed(f"{summary} says validation failed: fix the data and rerun `svgt validate`")
    if result.get("dataset_sha256") != sha256_file(data):
        raise StepFailed(f"{summary} validated a different version of {data}: rerun `svgt validate`")


def _threshold(text: str) -> float | str | None:
    if text in ("module", "off"):
        return None if text == "off" else text
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--threshold must be a number, 'off' or 'module', got {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="svgt", description="Train, evaluate and ship SVGT value modules.")
    parser.add_argument("--params", default="params.yaml", help="params file (default: params.yaml)")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="step", required=True, metavar="STEP")

    def add(name: str, func: Callable, help_: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_)
        p.set_defaults(func=func)
        return p

    p = add("backbone", cmd_backbone, "resolve backbone.source to a verified safetensors snapshot")
    p.add_argument("--out", default=DEFAULTS["backbone"], type=Path)
    p = add("ingest", cmd_ingest, "build the canonical value dataset (seed set or data.sources)")
    p.add_argument("--out", default=DEFAULTS["values"], type=Path)
    p.add_argument("--card", default=DEFAULTS["card"], type=Path)
    p = add("validate", cmd_validate, "Great Expectations gate on the canonical dataset")
    p.add_argument("--data", default=DEFAULTS["values"], type=Path)
    p.add_argument("--reports", default=DEFAULTS["validation"], type=Path)
    p = add("extract", cmd_extract, "layer-l* hidden states as sharded safetensors")
    p.add_argument("--backbone", default=DEFAULTS["backbone"], type=Path)
    p.add_argument("--data", default=DEFAULTS["values"], type=Path)
    p.add_argument("--validation", default=DEFAULTS["validation"], type=Path)
    p.add_argument("--out", default=DEFAULTS["hidden"], type=Path)
    p.add_argument("--metrics", default=DEFAULTS["metrics"], type=Path)
    p = add("baselines", cmd_baselines, "fit the comparison baselines (system prompt, DPO-LoRA, ITI, ...)")
    p.add_argument("--backbone", default=DEFAULTS["backbone"], type=Path)
    p.add_argument("--data", default=DEFAULTS["values"], type=Path)
    p.add_argument("--out", default=Path("models/baselines"), type=Path)
    p.add_argument("--metrics", default=DEFAULTS["metrics"], type=Path)
    p = add("card", cmd_card, "dataset card including the hidden-state extraction statistics")
    p.add_argument("--summary", default=Path("data/values/CARD.json"), type=Path)
    p.add_argument("--extract-metrics", default=Path("metrics/extract.json"), type=Path)
    p.add_argument("--out", default=Path("reports/dataset_card.md"), type=Path)
    p = add("train", cmd_train, "train one curriculum stage with Ray Train (local, or a Ray job on a cluster)")
    p.add_argument("--stage", type=int, choices=(1, 2, 3), required=True)
    p.add_argument("--init", type=Path, default=None, help="module exported by the previous stage")
    p.add_argument("--backbone", default=DEFAULTS["backbone"], type=Path)
    p.add_argument("--data", default=DEFAULTS["values"], type=Path)
    p.add_argument("--hidden", default=DEFAULTS["hidden"], type=Path)
    p.add_argument("--out", default=None, type=Path, help="default: models/stageN")
    p.add_argument("--metrics", default=DEFAULTS["metrics"], type=Path)
    p.add_argument("--plots", default=Path("plots"), type=Path)
    p.add_argument(
        "--in-cluster",
        action="store_true",
        help="run as a submitted Ray job's driver: join this cluster, export to the run's storage path",
    )
    p.add_argument(
        "--detach", action="store_true", help="with a job server address: submit the stage's Ray job, print its id"
    )
    p.add_argument(
        "--attach", metavar="JOB_ID", default=None, help="wait for a submitted stage job and collect its outputs"
    )
    p = add("judge", cmd_judge, "train the offline harm judge; check the refusal judge on human labels")
    p.add_argument("--data", default=DEFAULTS["values"], type=Path)
    p.add_argument("--out", default=Path("models/harm_judge"), type=Path)
    p.add_argument("--metrics", default=DEFAULTS["metrics"], type=Path)
    p = add("evaluate", cmd_evaluate, "every guidance method on the held-out prompt sets: the paper's table")
    p.add_argument("--module", default=Path("models/stage3"), type=Path)
    p.add_argument("--backbone", default=DEFAULTS["backbone"], type=Path)
    p.add_argument("--data", default=DEFAULTS["values"], type=Path)
    p.add_argument("--baselines", default=Path("models/baselines"), type=Path)
    p.add_argument("--harm-judge", default=Path("models/harm_judge"), type=Path)
    p.add_argument("--metrics", default=DEFAULTS["metrics"], type=Path)
    p.add_argument("--plots", default=Path("plots"), type=Path)
    p.add_argument("--report", default=Path("reports/eval.md"), type=Path)
    p.add_argument("--generations", default=Path("reports/generations.jsonl"), type=Path)
    p = add("register", cmd_register, "check the evaluation gates; register the module (alias challenger) if all pass")
    p.add_argument("--module", default=Path("models/stage3"), type=Path)
    p.add_argument("--metrics", default=DEFAULTS["metrics"], type=Path)
    p = add("promote", cmd_promote, "move an alias (default production) to a gate-passed version, or copy that "
                                    "version into another registry (--to-tracking-uri)")
    p.add_argument("--alias", default="production", help="the alias to set")
    p.add_argument("--version", default=None, type=int, help="default: the version holding --from-alias")
    p.add_argument("--from-alias", default="challenger", help="picks the version when --version is not given")
    p.add_argument("--to-tracking-uri", default=None,
                   help="copy the version into this MLflow registry (verified) and set --alias there")
    p.add_argument("--to-model-name", default=None, help="model name in the target registry (default: the same)")
    p.add_argument("--to-experiment", default=None, help="experiment for the copy's run (default: the same)")
    p = add("generate", cmd_generate, "generate with or without a value module (JSONL in, JSONL out)")
    p.add_argument("--module", default=None, help="value module: a directory, an fsspec URL or models:/NAME@ALIAS")
    p.add_argument("--tracking-uri", default=None,
                   help="MLflow registry that models:/ modules come from (default: registry.tracking_uri), e.g. "
                        "the production store `svgt promote --to-tracking-uri` copied a version into")
    p.add_argument("--method", default="svgt", choices=ALL_METHODS)
    p.add_argument("--baselines", default=Path("models/baselines"), type=Path,
                   help="fitted baselines (written by `svgt baselines`), for the baseline methods")
    p.add_argument("--prompt", default=None)
    p.add_argument("--prompts-file", default=None, type=Path)
    p.add_argument("--out", default=None, type=Path, help="default: stdout")
    p.add_argument("--backbone", default=DEFAULTS["backbone"], type=Path)
    p.add_argument("--refresh-interval", default=None, type=int, help="default: the module's r")
    p.add_argument("--threshold", default="module", type=_threshold,
                   help="score above which SVGT guides a prompt: a number (answers keep the module's calibrated "
                        "threshold), 'off' (guide every prompt) or 'module' (the module's own, calibrated in stage 3; "
                        "default)")
    p.add_argument("--max-new-tokens", default=128, type=int)
    p.add_argument("--batch-size", default=8, type=int)
    p.add_argument("--temperature", default=0.0, type=float, help="0 = greedy")
    p.add_argument("--top-p", default=1.0, type=float)
    p.add_argument("--seed", default=None, type=int)
    p.add_argument("--no-chat-template", action="store_true")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )
    for noisy in ("httpx", "urllib3", "filelock", "great_expectations"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    t0 = time.perf_counter()
    try:
        params = load_params(args.params)
        args.func(params, args)
    except (ConfigError, StepFailed) as err:
        print(f"svgt {args.step}: {err}", file=sys.stderr)
        return 2
    except (ValueError, RuntimeError, OSError) as err:
        # library errors carry file/row/key context in their message; no traceback needed
        if args.verbose:
            raise
        print(f"svgt {args.step}: {type(err).__name__}: {err}", file=sys.stderr)
        return 1
    log.info("svgt %s finished in %.1fs", args.step, time.perf_counter() - t0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
