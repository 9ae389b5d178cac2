"""Prefect tasks for the svgt pipeline: thin wrappers, one per `svgt <step>`.

Each step task parses the argv its DVC stage runs (``STEP_ARGV``, read from dvc.yaml) with the CLI's own
parser and calls the command function the CLI calls (``svgt.cli.cmd_*``), so no step logic lives here. What
the tasks add is orchestration: retries for transient failures only, the step's log records in the Prefect
run log, and artifacts (validation summary, training curves, evaluation table, gate report, registered
version).

Paths are relative, as in dvc.yaml: the flows run them from the repository (``workdir``).
"""

from __future__ import annotations

import csv
import json
import logging
import os
import shlex
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml
from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE

from svgt.cli import build_parser
from svgt.core.errors import GatesFailed, StepFailed
from svgt.core.retry import is_transient

DVC_YAML = Path(__file__).resolve().parents[1] / "dvc.yaml"


def _step_argv() -> dict[str, list[str]]:
    """argv of each step exactly as its dvc.yaml stage runs it, minus the leading `svgt` (dvc.yaml declares the
    steps' paths; the flows read them from there)."""
    stages = yaml.safe_load(DVC_YAML.read_text(encoding="utf-8"))["stages"]
    return {name: shlex.split(stage["cmd"])[1:] for name, stage in stages.items()}


STEP_ARGV: dict[str, list[str]] = _step_argv()


def step_path(step: str, option: str) -> Path:
    """The path a step's ``--option`` takes when the flow runs it: dvc.yaml's argv, else the CLI's default."""
    return Path(getattr(build_parser().parse_args(STEP_ARGV[step]), option))


# the order the flow runs them: a topological order of dvc.yaml's DAG
STEP_ORDER = ("ingest", "validate", "backbone", "baselines", "judge", "extract", "card", "stage1", "stage2",
              "stage3", "evaluate", "register")

VALUES = step_path("ingest", "out")
BACKBONE_DIR = step_path("backbone", "out")
VALIDATION_SUMMARY = step_path("validate", "reports") / "validation_summary.json"
METRICS_DIR = step_path("register", "metrics")
PLOTS_DIR = step_path("stage1", "plots")
EVAL_REPORT = step_path("evaluate", "report")
GATE_REPORT = METRICS_DIR / "gates.json"
REGISTER_ALIAS = "challenger"  # svgt.registry.versions.register_module points it at the new version

# retries apply to transient failures only (see retry_transient); deterministic ones fail at once
RETRIES = 2
RETRY_DELAY_SECONDS = [30, 120]


# ----------------------------------------------------------------------------------------- retries

def retry_transient(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect ``retry_condition_fn``: retry the failed task run only when its error is transient."""
    exc = state.result(raise_on_failure=False)
    return isinstance(exc, BaseException) and is_transient(exc)


# ------------------------------------------------------------------------------------- step running


class _RunLogHandler(logging.Handler):
    """Forwards the library's log records (logger ``svgt``) to the Prefect run logger."""

    def __init__(self, run_logger: Any) -> None:
        super().__init__(logging.INFO)
        self.run_logger = run_logger

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.run_logger.log(record.levelno, "%s: %s", record.name, record.getMessage())
        except Exception:  # logging must never fail the step
            self.handleError(record)


@contextmanager
def _svgt_logs_to_run_log() -> Iterator[None]:
    """During a step, the ``svgt`` logger's INFO+ records go to the run log (console + API), and only there.

    Not propagating avoids printing each record twice (Prefect's root console handler would print it again).
    Ray Train workers log in their own processes: their records stay in Ray's logs.
    """
    logger = logging.getLogger("svgt")
    handler = _RunLogHandler(get_run_logger())
    old_level, old_propagate = logger.level, logger.propagate
    logger.addHandler(handler)
    logger.propagate = False
    if logger.getEffectiveLevel() > logging.INFO:
        logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
        logger.propagate = old_propagate


def run_step(params_path: str | Path, argv: list[str]) -> Any:
    """``svgt --params PARAMS <argv>`` in-process, raising the step's exception instead of exiting; returns
    what the step's command function returns (most return None).

    The same parse-then-call as ``svgt.cli.main``; errors keep their type so retry_transient can judge them.
    """
    from svgt.cli import build_parser
    from svgt.core.params import load_params

    args = build_parser().parse_args(["--params", str(params_path), *argv])
    with _svgt_logs_to_run_log():
        return args.func(load_params(args.params), args)


def _step_task(step: str, **options: Any):
    options = {"name": step, "retries": RETRIES, "retry_delay_seconds": RETRY_DELAY_SECONDS,
               "retry_condition_fn": retry_transient, "cache_policy": NO_CACHE, **options}
    return task(**options)


# ---------------------------------------------------------------------------------------- the steps


@_step_task("ingest")
def ingest(params_path: str) -> None:
    """`svgt ingest`: the canonical value dataset and its card."""
    run_step(params_path, STEP_ARGV["ingest"])


@_step_task("validate")
def validate(params_path: str) -> dict[str, Any]:
    """`svgt validate`; publishes the verdict (every failure on its own line) as a markdown artifact.

    A failed validation raises StepFailed listing the failures: the flow stops before extraction.
    """
    started = time.time()
    try:
        run_step(params_path, STEP_ARGV["validate"])
    finally:
        # publish this run's verdict only (a failure before validate_dataset ran leaves an older summary)
        summary = _read_json(VALIDATION_SUMMARY) if _fresh(VALIDATION_SUMMARY, started) else None
        if summary is not None:
            _publish(create_markdown_artifact, markdown=validation_markdown(summary), key="svgt-validation",
                     description="Great Expectations verdict on the canonical value dataset")
    return summary or {}


@_step_task("backbone")
def backbone(params_path: str) -> None:
    """`svgt backbone`: the verified safetensors snapshot of backbone.source."""
    run_step(params_path, STEP_ARGV["backbone"])


@_step_task("extract")
def extract(params_path: str) -> dict[str, Any]:
    """`svgt extract` (refuses data whose validation did not pass)."""
    run_step(params_path, STEP_ARGV["extract"])
    return _read_json(METRICS_DIR / "extract.json") or {}


@_step_task("baselines")
def baselines(params_path: str) -> dict[str, Any]:
    """`svgt baselines`: the six comparison methods fitted on the train split."""
    run_step(params_path, STEP_ARGV["baselines"])
    return _read_json(METRICS_DIR / "baselines.json") or {}


@_step_task("judge")
def judge(params_path: str) -> dict[str, Any]:
    """`svgt judge`: the offline harm judge and the refusal judge's accuracy on human labels."""
    run_step(params_path, STEP_ARGV["judge"])
    return _read_json(METRICS_DIR / "harm_judge.json") or {}


@_step_task("card")
def card(params_path: str) -> None:
    """`svgt card`: the dataset card with the extraction statistics."""
    run_step(params_path, STEP_ARGV["card"])


@_step_task("train", task_run_name="train-stage{stage}")
def train(params_path: str, stage: int) -> dict[str, Any]:
    """`svgt train --stage N` (a Ray Train job); publishes the epoch curve as a table artifact."""
    run_step(params_path, STEP_ARGV[f"stage{stage}"])
    metrics = _read_json(METRICS_DIR / f"stage{stage}.json") or {}
    curve = read_curve(PLOTS_DIR / f"stage{stage}.csv")
    if curve:
        tested = ", ".join(f"{k}={_fmt(v)}" for k, v in metrics.items() if k.startswith("test_"))
        _publish(create_table_artifact, table=curve, key=f"svgt-stage{stage}-curve",
                 description=f"Stage {stage} training curve (one row per epoch). {tested}".strip())
    return metrics


@_step_task("evaluate")
def evaluate(params_path: str) -> dict[str, Any]:
    """`svgt evaluate`; publishes reports/eval.md as a markdown artifact."""
    run_step(params_path, STEP_ARGV["evaluate"])
    if EVAL_REPORT.is_file():
        _publish(create_markdown_artifact, markdown=EVAL_REPORT.read_text(encoding="utf-8"), key="svgt-eval",
                 description="The paper-style table: every method on the same held-out prompts and judges")
    return _read_json(METRICS_DIR / "eval.json") or {}


@_step_task("register")
def register(params_path: str) -> dict[str, Any]:
    """`svgt register`: check the quality gates, then register models/stage3 with alias ``challenger``.

    Publishes the gate report. A failed gate raises GatesFailed (never retried) whose message names each
    gate with its measured value and threshold; nothing is registered then.
    """
    from svgt.eval.gates import format_gate_report, read_gate_report

    started = time.time()
    try:
        registered = run_step(params_path, STEP_ARGV["register"])
    except StepFailed as err:
        report = read_gate_report(GATE_REPORT) if _fresh(GATE_REPORT, started) else None
        if report is not None and not report.passed:
            _publish_gates(format_gate_report(report))
            raise GatesFailed(f"quality gates failed, nothing registered:\n{format_gate_report(report)}") from err
        raise
    # registered: nothing below may fail the task, or a retry would register a second version
    try:
        _publish_gates(format_gate_report(read_gate_report(GATE_REPORT)))
    except Exception as err:
        get_run_logger().warning("registered, but could not read %s: %s", GATE_REPORT, err)
    version = _alias_version(params_path, REGISTER_ALIAS)
    if version is not None:
        # registry.reuse_identical: an identical module moves the alias to the version registered before
        version["reused"] = bool(getattr(registered, "reused", False))
        _publish(create_markdown_artifact, markdown=registered_markdown(version), key="svgt-registry",
                 description="The value module version this run registered (or found already registered)")
    return version or {}


@task(name="unchanged-since", retries=RETRIES, retry_delay_seconds=RETRY_DELAY_SECONDS,
      retry_condition_fn=retry_transient, cache_policy=NO_CACHE)
def unchanged_since(params_path: str) -> dict[str, Any] | None:
    """The registered, gate-passed version built from exactly this checkout's inputs (ingested data, resolved
    backbone, params, code), or None. Run after ingest and backbone; a retrain that finds one has nothing to do."""
    import dataclasses

    from svgt.core.params import load_params
    from svgt.registry.build_inputs import checkout_build_inputs
    from svgt.registry.versions import built_from

    params = load_params(params_path)
    try:
        inputs = checkout_build_inputs(dataclasses.asdict(params), VALUES, BACKBONE_DIR)
    except ValueError as err:
        raise StepFailed(str(err)) from err
    found = built_from(params.registry, inputs)
    logger = get_run_logger()
    if found is None:
        logger.info("no registered version was built from these inputs (inputs sha256 %s): training", inputs.sha256)
        return None
    logger.info("%s version %s was built from these exact inputs (inputs sha256 %s): nothing to retrain",
                found.name, found.version, inputs.sha256)
    aliases = ", ".join(f"`{a}`" for a in found.aliases) or "(none)"
    _publish(create_markdown_artifact, key="svgt-registry", description="Inputs unchanged: nothing retrained",
             markdown=(f"# Nothing to retrain\n\n{found.name} version {found.version} (aliases: {aliases}) was "
                       f"built from exactly these inputs: data `{inputs.data_sha256[:12]}`, backbone weights "
                       f"`{inputs.backbone_weights_sha256[:12]}`, params `{inputs.params_sha256[:12]}`, code "
                       f"`{inputs.code_sha256[:12]}`. Training is deterministic, so it would rebuild that module; "
                       f"run the flow with `skip_if_unchanged=False` to train anyway.\n"))
    return {"name": found.name, "version": found.version, "run_id": found.run_id, "aliases": list(found.aliases),
            "inputs_sha256": inputs.sha256}


@_step_task("promote")
def promote_alias(params_path: str, alias: str, version: int | None, from_alias: str,
                  to_tracking_uri: str | None = None) -> int:
    """`svgt promote`: point ``alias`` at ``version`` (default: the version ``from_alias`` points at); with
    ``to_tracking_uri``, copy that version into that registry (same model name) and set ``alias`` there."""
    argv = ["promote", "--alias", alias, "--from-alias", from_alias]
    argv += ["--version", str(version)] if version is not None else []
    run_step(params_path, argv + (["--to-tracking-uri", to_tracking_uri] if to_tracking_uri else []))
    promoted = _alias_version(params_path, alias, tracking_uri=to_tracking_uri)
    if promoted is None:
        return version if version is not None else -1
    source = f"version {version}" if version is not None else f"@{from_alias}"
    _publish(create_markdown_artifact,
             markdown=(f"# Promotion\n\n`models:/{promoted['name']}@{alias}` now points at version "
                       f"**{promoted['version']}** (chosen by {source}).\n\n"
                       f"Tracking URI: `{promoted['tracking_uri']}`\n"),
             key="svgt-promotion", description=f"{promoted['name']}@{alias}")
    return promoted["version"]


def _publish(create: Any, **kwargs: Any) -> None:
    """Publish an artifact, best effort: the step's outputs already exist, so a failure here must not fail
    (and re-run) the step; it is logged instead."""
    try:
        create(**kwargs)
    except Exception as err:
        get_run_logger().warning("could not publish artifact %r: %s: %s", kwargs.get("key"), type(err).__name__, err)


def _publish_gates(text: str) -> None:
    _publish(create_markdown_artifact, markdown=f"```\n{text}```\n", key="svgt-gates",
             description="Quality gates (all must pass to register)")


def _alias_version(params_path: str, alias: str, tracking_uri: str | None = None) -> dict[str, Any] | None:
    """The registry's view of ``models:/NAME@alias`` (what the step just set) in params' registry or in
    ``tracking_uri``; None (logged) if unreadable."""
    from svgt.core.params import load_params
    from svgt.core.urls import redact_url
    from svgt.registry.uri import mlflow_client

    cfg = load_params(params_path).registry
    uri = tracking_uri or cfg.tracking_uri
    try:
        mv = mlflow_client(uri).get_model_version_by_alias(cfg.model_name, alias)
    except Exception as err:
        get_run_logger().warning("registered, but could not read %s@%s back: %s", cfg.model_name, alias, err)
        return None
    return {"name": cfg.model_name, "version": int(mv.version), "run_id": mv.run_id,
            "aliases": sorted(mv.aliases), "tracking_uri": redact_url(uri)}


# ------------------------------------------------------------------------------------------ helpers


@contextmanager
def working_directory(path: str | Path) -> Iterator[Path]:
    """Run the steps from ``path`` (dvc.yaml's paths and params.yaml's relative paths are relative to it)."""
    old = Path.cwd()
    target = Path(path).resolve()
    if not target.is_dir():
        raise StepFailed(f"workdir {path}: no such directory")
    os.chdir(target)
    try:
        yield target
    finally:
        os.chdir(old)


def _fresh(path: Path, since: float) -> bool:
    """``path`` was written by this step run (not left over from an earlier one)."""
    return path.is_file() and path.stat().st_mtime >= since - 1


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def _number(text: str) -> Any:
    try:
        value = float(text)
    except ValueError:
        return text if text != "" else None
    return int(value) if value.is_integer() and "." not in text and "e" not in text.lower() else value


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def read_curve(path: Path) -> list[dict[str, Any]]:
    """plots/stageN.csv (one row per epoch) as table rows with numbers parsed."""
    try:
        with open(path, newline="", encoding="utf-8") as f:
            return [{k: _number(v) for k, v in row.items()} for row in csv.DictReader(f)]
    except FileNotFoundError:
        return []


def _md_cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def validation_markdown(summary: dict[str, Any]) -> str:
    """reports/validation/validation_summary.json as markdown: the verdict and one row per failure."""
    ok = summary.get("success") is True
    lines = [f"# Data validation: {'PASSED' if ok else 'FAILED'}", "",
             f"- dataset: `{summary.get('dataset')}` (sha256 `{str(summary.get('dataset_sha256'))[:12]}`)",
             f"- rows: {summary.get('n_rows')}",
             f"- Data Docs: `{summary.get('report_path')}`"]
    failures = summary.get("failures") or []
    if failures:
        lines += ["", f"## {len(failures)} failed check(s)", "",
                  "| check | column | offending rows | examples | message |", "|---|---|---|---|---|"]
        for f in failures:
            lines.append(f"| {_md_cell(f.get('expectation'))} | {_md_cell(f.get('column') or '(table)')} | "
                         f"{f.get('unexpected_count')} | {_md_cell(', '.join(f.get('example_ids') or []))} | "
                         f"{_md_cell(f.get('message'))} |")
    skipped = summary.get("skipped") or []
    if skipped:
        lines += ["", "## Skipped (column unusable)", "", *[f"- {s}" for s in skipped]]
    return "\n".join(lines) + "\n"


def registered_markdown(version: dict[str, Any]) -> str:
    aliases = ", ".join(f"`{a}`" for a in version["aliases"]) or "(none)"
    title = (f"# {version['name']} version {version['version']}: unchanged\n\nThis run's module is "
             f"byte-identical to this version, registered before; no new version was created.\n\n"
             if version.get("reused") else f"# Registered {version['name']} version {version['version']}\n\n")
    return (title +
            f"- aliases: {aliases}\n- MLflow run: `{version['run_id']}`\n"
            f"- tracking URI: `{version['tracking_uri']}`\n"
            f"- load: `models:/{version['name']}/{version['version']}`\n")
