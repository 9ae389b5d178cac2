"""`svgt <step>`: argument parsing only; each command calls one library function.

DVC stages and Prefect tasks both run these same entry points, so no step's logic exists twice.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from svgt.core.errors import (
    EXIT_FAILED,
    EXIT_GATES_FAILED,
    EXIT_OK,
    EXIT_TRANSIENT,
    EXIT_USAGE,
    GatesFailed,
    StepFailed,
    SvgtError,
    UsageError,
)
from svgt.core.method_names import ALL_METHODS
from svgt.core.params import ConfigError, Params, load_params

if TYPE_CHECKING:  # the registry imports MLflow: only the register step pays for it
    from svgt.registry.versions import RegisteredVersion

log = logging.getLogger("svgt")

DEFAULTS = {
    "backbone": Path("data/backbone"),
    "values": Path("data/values/values.parquet"),
    "card": Path("data/values/CARD.md"),
    "validation": Path("reports/validation"),
    "hidden": Path("data/hidden"),
    "metrics": Path("metrics"),
}


EXIT_CODES = f"""exit codes:
  {EXIT_OK}   the step finished
  {EXIT_FAILED}   the step failed: bad input, a failed validation or verification (the message names the file,
      row or key)
  {EXIT_USAGE}   usage error: unknown or conflicting options, a value out of range
  {EXIT_GATES_FAILED}   quality gates failed: the module was evaluated but not registered
  {EXIT_TRANSIENT}  transient failure (a connection that kept failing after its retries): try again later"""


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
    from svgt.extract.step import extract_hidden_states

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
    from svgt.core.io import write_json_atomic

    write_json_atomic(Path(args.metrics) / "extract.json", metrics)
    print(json.dumps(metrics))


def cmd_baselines(params: Params, args: argparse.Namespace) -> None:
    from svgt.baselines import fit_baselines
    from svgt.core.io import write_json_atomic

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
        raise UsageError(
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
        raise UsageError("give exactly one of --prompt TEXT or --prompts-file FILE.jsonl")
    out = open(args.out, "w", encoding="utf-8") if args.out else sys.stdout  # noqa: SIM115
    try:
        summary = run_generate(backbone_dir=args.backbone, module_uri=args.module, method=args.method,
                               prompts=[args.prompt] if args.prompt is not None else None,
                               prompts_file=args.prompts_file, out=out, max_new_tokens=args.max_new_tokens,
                               refresh_interval=args.refresh_interval, batch_size=args.batch_size,
                               chat_template=not args.no_chat_template, do_sample=args.temperature > 0,
                               temperature=args.temperature or 1.0, top_p=args.top_p, seed=args.seed,
                               tracking_uri=args.tracking_uri or params.registry.tracking_uri,
                               baselines_dir=args.baselines, threshold=args.threshold,
                               gate_budget=args.gate_budget)
    finally:
        if args.out:
            out.close()
    log.info("generated %d responses (%d tokens, %.1f tokens/s); %d bad input lines skipped", summary.prompts,
             summary.new_tokens, summary.new_tokens / max(summary.seconds, 1e-9), summary.bad_lines)


def cmd_judge(params: Params, args: argparse.Namespace) -> None:
    from svgt.core.io import write_json_atomic
    from svgt.eval.judges import write_refusal_judge_report
    from svgt.eval.judges.classifier import train_harm_classifier

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

    from svgt.eval.gates import check_gates, format_gate_report, write_gate_report
    from svgt.registry.versions import register_module

    report = check_gates(args.metrics, params.gates)
    write_gate_report(report, args.metrics / "gates.json")
    print(format_gate_report(report))
    if not report.passed:
        raise GatesFailed(f"not registered: {len(report.failed)} gate(s) failed (see above)")
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

    from svgt.registry.versions import promote

    src = params.registry
    if args.to_tracking_uri is None:
        if args.to_model_name or args.to_experiment:
            raise UsageError("--to-model-name and --to-experiment need --to-tracking-uri")
        version = promote(src, alias=args.alias, version=args.version, from_alias=args.from_alias)
        print(f"{src.model_name}@{args.alias} -> version {version}")
        return
    from svgt.core.urls import redact_url
    from svgt.registry.versions import copy_version

    dst = dataclasses.replace(src, tracking_uri=args.to_tracking_uri, model_name=args.to_model_name or src.model_name,
                              experiment=args.to_experiment or src.experiment)
    copied = copy_version(src, dst, version=args.version, from_alias=args.from_alias, alias=args.alias)
    how = "an identical version already there" if copied.reused else "a new version"
    print(f"{dst.model_name}@{args.alias} in {redact_url(dst.tracking_uri)} -> version {copied.version} ({how})")


def _require_validation(report_dir: Path, data: Path) -> None:
    """Downstream steps refuse data whose validation did not pass, never ran, or validated other bytes."""
    from svgt.core.io import sha256_file

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
        raise argparse.ArgumentTypeError(f"must be a number, 'off' or 'module', got {text!r}") from None


def _number(kind: type, minimum: float, *, strict: bool = False, maximum: float | None = None) -> Callable:
    """An argparse type: ``kind`` within [minimum, maximum] (``strict``: above minimum), else a usage error."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            expected = "an integer" if kind is int else "a number"
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
        low_ok = value > minimum if strict else value >= minimum
        if not low_ok or (maximum is not None and value > maximum):
            bound = f"{'>' if strict else '>='} {minimum:g}" + (f" and <= {maximum:g}" if maximum is not None else "")
            raise argparse.ArgumentTypeError(f"must be {bound}, got {text}")
        return value
    return parse


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    def of(dist: str) -> str:
        try:
            return version(dist)
        except PackageNotFoundError:
            return "not installed"

    python = sys.version.split()[0]
    return f"svgt {of('svgt')} (torch {of('torch')}, transformers {of('transformers')}, python {python})"


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Shows each option's default (unless its help already says it, or it is a flag or unset) and keeps the
    examples' line breaks."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        unset = action.default is None or action.default is False or action.default == argparse.SUPPRESS
        if "default" in text or unset or not action.option_strings:
            return text
        return f"{text} (default: %(default)s)"


# (name, one-line help, example) of each step, in pipeline order: `svgt --help` lists them so
STEPS = {
    "backbone": ("resolve backbone.source to a verified safetensors snapshot", "svgt backbone"),
    "ingest": ("build the canonical value dataset (the seed set, or data.sources)", "svgt ingest"),
    "validate": ("Great Expectations gate on the canonical dataset", "svgt validate"),
    "extract": ("layer-l* hidden states as sharded safetensors (needs a passed validation)", "svgt extract"),
    "card": ("the dataset card, with the hidden-state extraction statistics", "svgt card"),
    "baselines": ("fit the comparison baselines (system prompt, DPO-LoRA, ITI, RE-Control, ConVA, NeVA)",
                  "svgt baselines"),
    "judge": ("train the offline harm judge; check the refusal judge on human labels", "svgt judge"),
    "train": ("train one curriculum stage on Ray Train (a local Ray, a cluster, or a Ray job)",
              "svgt train --stage 1\n  svgt train --stage 2 --init models/stage1"),
    "evaluate": ("every guidance method on the held-out prompt sets: the paper's table, side effects, plots",
                 "svgt evaluate"),
    "register": ("check the quality gates; register the module (alias challenger) only if all pass",
                 "svgt register --module models/stage3"),
    "promote": ("move an alias (default production) to a gate-passed version, or copy that version into another "
                "registry", "svgt promote --alias production\n  svgt promote --to-tracking-uri https://mlflow.prod"),
    "generate": ("generate with or without a value module (a prompt, or JSONL in and JSONL out)",
                 "svgt generate --prompt 'How do vaccines work?'\n"
                 "  svgt generate --module models:/svgt-value-module@production --prompts-file prompts.jsonl "
                 "--out answers.jsonl"),
    "serve": ("serve guided generation over the OpenAI HTTP API (chat and text completions, metrics)",
              "svgt serve --module models:/svgt-value-module@production --port 8000"),
}


def cmd_serve(params: Params, args: argparse.Namespace) -> None:
    from svgt.serve.server import build_engine, run_server

    if args.ray_max_replicas is not None and args.ray_replicas is None:
        raise UsageError("--ray-max-replicas needs --ray-replicas (the replicas to start with)")
    if args.ray_replicas is not None:  # the same app in Ray Serve replicas (svgt/serve/ray_serve.py)
        from svgt.serve.ray_serve import ReplicaSpec, absolute_tracking_uri, deploy

        spec = ReplicaSpec(str(args.backbone.resolve()), args.module,
                           absolute_tracking_uri(args.tracking_uri or params.registry.tracking_uri),
                           str(args.baselines.resolve()), tuple(args.baseline), args.max_batch_size, args.max_queue,
                           args.max_tokens, args.poll_alias, max(1, int(args.ray_cpus_per_replica)))
        module = Path(args.module)
        if not args.module.startswith("models:/") and module.exists():
            spec = dataclasses.replace(spec, module_uri=str(module.resolve()))
        deploy(spec, host=args.host, port=args.port, replicas=args.ray_replicas, max_replicas=args.ray_max_replicas,
               cpus_per_replica=args.ray_cpus_per_replica, address=args.ray_address)
        return
    engine, served = build_engine(args.backbone, args.module,
                                  tracking_uri=args.tracking_uri or params.registry.tracking_uri,
                                  baselines_dir=args.baselines, baselines=args.baseline,
                                  max_batch_size=args.max_batch_size, max_queue=args.max_queue)
    run_server(engine, served, host=args.host, port=args.port, max_tokens=args.max_tokens,
               poll_alias=args.poll_alias, tracking_uri=args.tracking_uri or params.registry.tracking_uri)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="svgt", formatter_class=_HelpFormatter,
        description="Train, evaluate and ship SVGT value modules. Each step reads params.yaml and the previous "
                    "steps' outputs (the paths `dvc repro` uses by default).",
        epilog="example:\n  svgt --params params.yaml train --stage 1\n\n" + EXIT_CODES)
    parser.add_argument("--params", default="params.yaml", help="params file")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging, and tracebacks on errors")
    parser.add_argument("--version", action="version", version=_version(), help="print svgt, torch and "
                        "transformers versions and exit")
    sub = parser.add_subparsers(dest="step", required=True, metavar="STEP")
    count = _number(int, 1)
    commands = {name: globals()[f"cmd_{name}"] for name in STEPS}

    def add(name: str) -> argparse.ArgumentParser:
        help_, example = STEPS[name]
        p = sub.add_parser(name, help=help_, description=help_[0].upper() + help_[1:] + ".",
                           epilog=f"example:\n  {example}\n\n{EXIT_CODES}", formatter_class=_HelpFormatter)
        p.set_defaults(func=commands[name])
        return p

    def path(p: argparse.ArgumentParser, flag: str, default: Path | None, help_: str) -> None:
        p.add_argument(flag, default=default, type=Path, help=help_)

    p = add("backbone")
    path(p, "--out", DEFAULTS["backbone"], "snapshot directory to write")
    p = add("ingest")
    path(p, "--out", DEFAULTS["values"], "canonical Parquet to write")
    path(p, "--card", DEFAULTS["card"], "dataset card (markdown) to write")
    p = add("validate")
    path(p, "--data", DEFAULTS["values"], "canonical Parquet to check")
    path(p, "--reports", DEFAULTS["validation"], "where the summary and Data Docs go")
    p = add("extract")
    path(p, "--backbone", DEFAULTS["backbone"], "backbone snapshot")
    path(p, "--data", DEFAULTS["values"], "canonical Parquet")
    path(p, "--validation", DEFAULTS["validation"], "validation reports; extraction refuses data that did not pass")
    path(p, "--out", DEFAULTS["hidden"], "hidden-state store to write")
    path(p, "--metrics", DEFAULTS["metrics"], "metrics directory (extract.json)")
    p = add("card")
    path(p, "--summary", Path("data/values/CARD.json"), "the ingest summary")
    path(p, "--extract-metrics", Path("metrics/extract.json"), "extraction metrics")
    path(p, "--out", Path("reports/dataset_card.md"), "card to write")
    p = add("baselines")
    path(p, "--backbone", DEFAULTS["backbone"], "backbone snapshot")
    path(p, "--data", DEFAULTS["values"], "canonical Parquet (train split)")
    path(p, "--out", Path("models/baselines"), "one directory per fitted baseline")
    path(p, "--metrics", DEFAULTS["metrics"], "metrics directory (baselines.json)")
    p = add("judge")
    path(p, "--data", DEFAULTS["values"], "canonical Parquet (the harm judge trains on its train split)")
    path(p, "--out", Path("models/harm_judge"), "harm judge directory to write")
    path(p, "--metrics", DEFAULTS["metrics"], "metrics directory (refusal_judge.json, harm_judge.json)")
    p = add("train")
    p.add_argument("--stage", type=int, choices=(1, 2, 3), required=True,
                   help="1 discrimination, 2 conditional pairs, 3 behaviour (the bridge)")
    path(p, "--init", None, "module exported by the previous stage (stages 2 and 3)")
    path(p, "--backbone", DEFAULTS["backbone"], "backbone snapshot (stage 3 runs its upper blocks)")
    path(p, "--data", DEFAULTS["values"], "canonical Parquet")
    path(p, "--hidden", DEFAULTS["hidden"], "hidden-state store")
    path(p, "--out", None, "module directory to write (default: models/stageN)")
    path(p, "--metrics", DEFAULTS["metrics"], "metrics directory (stageN.json)")
    path(p, "--plots", Path("plots"), "training curves (stageN.csv)")
    p.add_argument("--in-cluster", action="store_true",
                   help="run as a submitted Ray job's driver: join this cluster, export to the run's storage path")
    p.add_argument("--detach", action="store_true",
                   help="with a job server address: submit the stage's Ray job, print its id and return")
    p.add_argument("--attach", metavar="JOB_ID", default=None,
                   help="wait for a submitted stage job and collect its outputs")
    p = add("evaluate")
    path(p, "--module", Path("models/stage3"), "value module to evaluate")
    path(p, "--backbone", DEFAULTS["backbone"], "backbone snapshot")
    path(p, "--data", DEFAULTS["values"], "canonical Parquet (test split)")
    path(p, "--baselines", Path("models/baselines"), "fitted baselines")
    path(p, "--harm-judge", Path("models/harm_judge"), "harm judge directory")
    path(p, "--metrics", DEFAULTS["metrics"], "metrics directory (eval.json)")
    path(p, "--plots", Path("plots"), "plots directory")
    path(p, "--report", Path("reports/eval.md"), "markdown table to write")
    path(p, "--generations", Path("reports/generations.jsonl"), "every generated answer, one JSON line each")
    p = add("register")
    path(p, "--module", Path("models/stage3"), "value module to register")
    path(p, "--metrics", DEFAULTS["metrics"], "metrics the gates read; gates.json is written here")
    p = add("promote")
    p.add_argument("--alias", default="production", help="the alias to set")
    p.add_argument("--version", default=None, type=count, help="version to promote (default: the one holding "
                                                                 "--from-alias)")
    p.add_argument("--from-alias", default="challenger", help="picks the version when --version is not given")
    p.add_argument("--to-tracking-uri", default=None,
                   help="copy the version into this MLflow registry (verified) and set --alias there")
    p.add_argument("--to-model-name", default=None, help="model name in the target registry (default: the same)")
    p.add_argument("--to-experiment", default=None, help="experiment for the copy's run (default: the same)")
    p = add("generate")
    p.add_argument("--module", default=None, help="value module: a directory, an fsspec URL or models:/NAME@ALIAS")
    p.add_argument("--tracking-uri", default=None,
                   help="MLflow registry that models:/ modules come from (default: registry.tracking_uri), e.g. "
                        "the production store `svgt promote --to-tracking-uri` copied a version into")
    p.add_argument("--method", default="svgt", choices=ALL_METHODS, help="guidance method")
    path(p, "--baselines", Path("models/baselines"), "fitted baselines (`svgt baselines`), for the baseline methods")
    p.add_argument("--prompt", default=None, help="one prompt (or use --prompts-file)")
    path(p, "--prompts-file", None, 'JSONL, one {"prompt": ...} object per line')
    path(p, "--out", None, "JSONL to write (default: stdout)")
    path(p, "--backbone", DEFAULTS["backbone"], "backbone snapshot")
    p.add_argument("--refresh-interval", default=None, type=count,
                   help="refresh the bridge every N generated tokens (default: the module's r)")
    p.add_argument("--threshold", default="module", type=_threshold,
                   help="score above which SVGT guides a prompt: a number (answers keep the module's calibrated "
                        "threshold), 'off' (guide every prompt) or 'module' (the module's own, calibrated in stage 3)")
    p.add_argument("--gate-budget", default=None, type=_number(float, 0.0, maximum=1.0),
                   help="use the module's gate operating point for this over-refusal budget (one of the budgets "
                        "stage 3 calibrated: model.gate_budgets; the module's config lists them as gate_points)")
    p.add_argument("--max-new-tokens", default=128, type=count, help="tokens to generate at most per prompt")
    p.add_argument("--batch-size", default=8, type=count, help="prompts decoded together")
    p.add_argument("--temperature", default=0.0, type=_number(float, 0.0), help="0 decodes greedily")
    p.add_argument("--top-p", default=1.0, type=_number(float, 0.0, strict=True, maximum=1.0),
                   help="nucleus sampling mass (with --temperature > 0)")
    p.add_argument("--seed", default=None, type=int, help="sampling seed (default: nondeterministic)")
    p.add_argument("--no-chat-template", action="store_true", help="feed prompts as plain text")
    p = add("serve")
    p.add_argument("--module", required=True, help="value module: a directory, an fsspec URL or models:/NAME@ALIAS")
    p.add_argument("--tracking-uri", default=None, help="MLflow registry of models:/ modules (default: "
                   "registry.tracking_uri)")
    path(p, "--backbone", DEFAULTS["backbone"], "backbone snapshot")
    path(p, "--baselines", Path("models/baselines"), "fitted baselines, for --baseline")
    p.add_argument("--baseline", action="append", default=[], choices=[m for m in ALL_METHODS if m not in
                   ("none", "svgt", "svgt-inject")], help="also serve this fitted baseline as a model (repeatable)")
    p.add_argument("--host", default="127.0.0.1", help="interface to listen on (0.0.0.0: every interface)")
    p.add_argument("--port", default=8000, type=_number(int, 1, maximum=65535), help="TCP port")
    p.add_argument("--max-batch-size", default=16, type=count, help="requests decoded together at most")
    p.add_argument("--max-queue", default=256, type=count, help="requests waiting at most (more get 429)")
    p.add_argument("--max-tokens", default=512, type=count, help="the most new tokens a request may ask for")
    p.add_argument("--poll-alias", default=None, type=_number(float, 0.0, strict=True), metavar="SECONDS",
                   help="with --module models:/NAME@ALIAS: check the alias this often and swap in the version it "
                        "moves to (verified first; requests in flight finish on the old one)")
    p.add_argument("--ray-replicas", default=None, type=count, metavar="N",
                   help="serve on Ray Serve with N replicas (one backbone each) behind Ray's proxy at --host/--port")
    p.add_argument("--ray-max-replicas", default=None, type=count, metavar="M",
                   help="with --ray-replicas: autoscale between N and M replicas on the requests each one holds")
    p.add_argument("--ray-cpus-per-replica", default=1.0, type=_number(float, 0.0, strict=True),
                   help="CPUs Ray reserves per replica (also its torch threads, at least 1)")
    p.add_argument("--ray-address", default=None, help="the Ray cluster to deploy on (default: RAY_ADDRESS, else a "
                   "local Ray started for the server)")
    return parser


def exit_code(err: BaseException) -> int:
    """The exit code for an error that ended a step (see EXIT_CODES)."""
    from svgt.core.retry import is_transient

    if is_transient(err):
        return EXIT_TRANSIENT
    return err.exit_code if isinstance(err, SvgtError) else EXIT_FAILED


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
        return exit_code(err)
    except (ValueError, RuntimeError, OSError) as err:
        # library errors carry file/row/key context in their message; no traceback needed
        if args.verbose:
            raise
        print(f"svgt {args.step}: {type(err).__name__}: {err}", file=sys.stderr)
        return exit_code(err)
    log.info("svgt %s finished in %.1fs", args.step, time.perf_counter() - t0)
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
