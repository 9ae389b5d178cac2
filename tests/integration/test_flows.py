"""Prefect wiring of the pipeline (flows/): DAG order, gating, failure handling, artifacts, deployments, events.

The flows run against one temporary Prefect server per session (``prefect_test_harness``) in a temporary
checkout. Real code runs wherever it is cheap: the CLI's step functions, ingest, Great Expectations
validation, the quality gates, MLflow registration and promotion (SQLite). Only the steps that need the
real backbone, real training or PyPI wheels are replaced by fast fakes that write the same files their real
versions write: ``build_snapshot``, ``fit_baselines``, ``train_harm_classifier`` with
``write_refusal_judge_report``, ``extract_hidden_states``, ``train_stage`` and ``evaluate_guidance``. Those
step functions are tested on their own (test_backbone, test_baselines, test_eval_judges, test_extract,
test_training*, test_stage3, test_generation, test_eval).
"""

from __future__ import annotations

import functools
import inspect
import json
import shlex
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml

from svgt.core.io import sha256_file
from tests.tiny import canonical_frame

REPO = Path(__file__).resolve().parents[2]
BACKBONE_SHA = "c" * 64
EVENT = "svgt.value-dataset.updated"
STEP_TASKS = ("ingest", "validate", "backbone", "baselines", "judge", "extract", "card", "train", "evaluate",
              "register", "promote_alias", "unchanged_since")


# ------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def prefect_server():
    """One temporary Prefect server (SQLite) for the session: starting it takes ~10-20 s."""
    from prefect.testing.utilities import prefect_test_harness

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PREFECT_SERVER_ANALYTICS_ENABLED", "false")  # no telemetry from the test server
        with prefect_test_harness(server_startup_timeout=120):
            yield


def make_checkout(root: Path, **validate_overrides) -> Path:
    """A tiny repository checkout: params.yaml reading a small canonical dataset, a SQLite MLflow store."""
    root.mkdir(parents=True, exist_ok=True)
    source = root / "source.parquet"
    canonical_frame(60).to_parquet(source)
    params = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))
    params["backbone"]["cache_dir"] = str(root / ".cache")
    params["data"]["sources"] = [{"path": str(source), "adapter": "canonical"}]
    params["validate"].update({"min_rows": 20, "stage1": {"min_rows": 10, "min_class_fraction": 0.2},
                               "stage2": {"min_rows": 10, "min_class_fraction": 0.0},
                               "stage3": {"min_rows": 10, "min_class_fraction": 0.0}, **validate_overrides})
    params["evaluate"]["methods"] = ["none", "svgt"]
    # absolute: MLflow caches its SQL store per URI string, so one relative URI would mean one process-wide file
    params["registry"] = {"tracking_uri": f"sqlite:///{root / 'mlflow.db'}", "model_name": "svgt-flow-test",
                          "experiment": "svgt-flow-test"}
    (root / "params.yaml").write_text(yaml.safe_dump(params), encoding="utf-8")
    return root


class Pipeline:
    """Records which step functions ran (in order); fakes the four that need the backbone or training."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, *, stage2_auroc: float = 0.9, svgt_harmful: float = 0.6,
                 extract_transient_failures: int = 0) -> None:
        import svgt.backbone
        import svgt.baselines
        import svgt.data.ingest
        import svgt.data.validation
        import svgt.eval.gates
        import svgt.eval.guidance_eval
        import svgt.eval.judges
        import svgt.eval.judges.classifier
        import svgt.extract.step
        import svgt.registry.versions
        import svgt.training.step
        from flows import tasks

        self.calls: list[str] = []
        self.stage2_auroc, self.svgt_harmful = stage2_auroc, svgt_harmful
        self.extract_failures_left = extract_transient_failures
        for module, name, label in ((svgt.data.ingest, "run_ingest", "ingest"),
                                    (svgt.data.validation, "validate_dataset", "validate"),
                                    (svgt.eval.gates, "check_gates", "gates"),
                                    (svgt.registry.versions, "register_module", "register"),
                                    (svgt.registry.versions, "promote", "promote")):
            monkeypatch.setattr(module, name, self._record(label, inspect.unwrap(getattr(module, name))))
        monkeypatch.setattr(svgt.backbone, "build_snapshot", self._record("backbone", self.fake_backbone))
        monkeypatch.setattr(svgt.baselines, "fit_baselines", self._record("baselines", self.fake_baselines))
        monkeypatch.setattr(svgt.eval.judges, "write_refusal_judge_report", self._record("judge", self.fake_refusal))
        monkeypatch.setattr(svgt.eval.judges.classifier, "train_harm_classifier", self.fake_harm_judge)
        monkeypatch.setattr(svgt.extract.step, "extract_hidden_states", self._record("extract", self.fake_extract))
        monkeypatch.setattr(svgt.training.step, "train_stage", self._record("train", self.fake_train))
        monkeypatch.setattr(svgt.eval.guidance_eval, "evaluate_guidance", self._record("evaluate", self.fake_eval))
        for name in STEP_TASKS:  # same tasks, no waiting between retries
            monkeypatch.setattr(tasks, name, getattr(tasks, name).with_options(retry_delay_seconds=0))

    def _record(self, label, fn):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            self.calls.append(f"train{args[1]}" if label == "train" else label)
            return fn(*args, **kwargs)

        return wrapper

    @staticmethod
    def fake_backbone(cfg, out_dir, storage_options=None):
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "manifest.json").write_text(json.dumps({"weights_sha256": BACKBONE_SHA}))
        return SimpleNamespace(architecture="FakeForCausalLM", num_layers=4, hidden_size=32,
                               weights_sha256=BACKBONE_SHA)

    @staticmethod
    def fake_baselines(backbone_dir, data_path, cfg, out_dir, **kwargs):
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        return {"methods": {"system-prompt": {"fit_seconds": 0.0}}, "total_seconds": 0.0}

    @staticmethod
    def fake_refusal(cache_dir, out_path):
        report = {"accuracy": 0.7, "precision": 1.0, "recall": 0.55, "n": 169}
        Path(out_path).parent.mkdir(parents=True, exist_ok=True)
        Path(out_path).write_text(json.dumps(report))
        return report

    @staticmethod
    def fake_harm_judge(cache_dir, values_parquet, out_dir, **kwargs):
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        return {"held_out": {"accuracy": 0.7}}

    def fake_extract(self, backbone_dir, data_path, cfg, out_dir, **kwargs):
        from svgt.extract.step import ExtractionSummary

        if self.extract_failures_left:
            self.extract_failures_left -= 1
            raise ConnectionResetError("object store connection reset (simulated)")
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "index.json").write_text(json.dumps({"format": "fake"}))
        return ExtractionSummary(layer=2, hidden_size=32, dtype="float16", examples={"train": 20}, tokens=100,
                                 shards_written=1, compute_seconds=1.0)

    def fake_train(self, params, stage, *, hidden_dir, data_path, backbone_dir, init_module, out_dir, metrics_dir,
                   plots_dir):
        from svgt.model import ValueModule, ValueModuleConfig, save_value_module

        assert (init_module is None) == (stage == 1)
        if init_module is not None:  # wired to the previous stage's export, which must exist
            assert Path(init_module) == Path(f"models/stage{stage - 1}") and Path(init_module).is_dir()
        metrics = {"stage": stage, "epochs": 2, "final_val_auroc": 0.8}
        if stage == 2:
            metrics["test_pair_auroc"] = self.stage2_auroc
        torch.manual_seed(stage)  # like real training on unchanged inputs: the same module bytes every run
        module = ValueModule(ValueModuleConfig(hidden_size=32, layer=2, d_v=16, encoder_heads=2, cross_attn_heads=2))
        save_value_module(module, out_dir, {"stage": stage, "backbone_source": "fake", "metrics": metrics,
                                            "backbone_weights_sha256": BACKBONE_SHA,
                                            "data_sha256": sha256_file(data_path)})
        Path(metrics_dir).mkdir(parents=True, exist_ok=True)
        (Path(metrics_dir) / f"stage{stage}.json").write_text(json.dumps(metrics))
        Path(plots_dir).mkdir(parents=True, exist_ok=True)
        (Path(plots_dir) / f"stage{stage}.csv").write_text("epoch,train_loss,val_auroc\n1,0.9,0.7\n2,0.5,0.8\n")
        return metrics

    def fake_eval(self, *, backbone_dir, module_dir, data_path, cfg, metrics_path, report_path, generations_path,
                  **kwargs):
        from svgt.eval.guidance_eval import rate
        from svgt.eval.report import render_report

        def entry(harmful):
            k = round(harmful * 10)
            return {"refusal_harmful": rate([True] * k + [False] * (10 - k)), "over_refusal_benign": rate([False] * 10),
                    "over_refusal_sensitive": rate([False] * 10),
                    "perplexity": {"value": 5.0, "n": 20, "ci95": [4.5, 5.5]}, "tokens_per_s": 12.0}

        results = {"harm_judge": "fake@0", "refusal_judge": "fake", "module": str(module_dir), "backbone": "fake",
                   "max_new_tokens": 8, "sample_sizes": {"harmful": 10, "benign": 10},
                   "methods": {"none": entry(0.1), "svgt": entry(self.svgt_harmful)}}
        for path, text in ((metrics_path, json.dumps(results)), (report_path, render_report(results)),
                           (generations_path, "")):
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            Path(path).write_text(text)
        return results


def run_flow(root: Path, **kwargs):
    from flows.train_value_module import train_value_module

    return train_value_module(params_path="params.yaml", workdir=str(root), return_state=True, **kwargs)


def artifacts_of(state) -> dict[str, object]:
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    flow_run_id = state.state_details.flow_run_id
    with get_client(sync_client=True) as client:
        found = client.read_artifacts(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    return {a.key: a for a in found}


def failure_message(state) -> str:
    exc = state.result(raise_on_failure=False)
    return f"{state.message}\n{exc}"


@pytest.fixture(scope="module")
def passed_run(prefect_server, tmp_path_factory):
    """One successful flow run (its extract step fails once with a transient error and is retried)."""
    with pytest.MonkeyPatch.context() as mp:
        root = make_checkout(tmp_path_factory.mktemp("flow-pass"))
        pipeline = Pipeline(mp, extract_transient_failures=1)
        state = run_flow(root)
        yield SimpleNamespace(root=root, state=state, calls=pipeline.calls, mp=mp, pipeline=pipeline)


# ------------------------------------------------------------------------------------ the main flow


def test_flow_runs_steps_in_dag_order_and_registers(passed_run):
    state, root = passed_run.state, passed_run.root
    assert state.is_completed(), failure_message(state)
    assert passed_run.calls == ["ingest", "validate", "backbone", "baselines", "judge", "extract", "extract", "train1",
                                "train2",
                                "train3", "evaluate", "gates", "register"]
    result = state.result()
    assert result["registered"]["version"] == 1 and "challenger" in result["registered"]["aliases"]
    assert result["stage2"]["test_pair_auroc"] == 0.9
    assert json.loads((root / "metrics/gates.json").read_text())["passed"] is True

    from mlflow import MlflowClient

    uri = f"sqlite:///{root / 'mlflow.db'}"
    mv = MlflowClient(tracking_uri=uri, registry_uri=uri).get_model_version_by_alias("svgt-flow-test", "challenger")
    assert int(mv.version) == 1 and mv.tags["gates_passed"] == "true"


def test_rerun_on_unchanged_inputs_adds_no_registry_version(prefect_server, tmp_path, monkeypatch):
    """A scheduled retrain that rebuilds a byte-identical module points challenger at the version it already
    has (registry.reuse_identical) and says so in its registry artifact."""
    from mlflow import MlflowClient

    root = make_checkout(tmp_path / "checkout")
    Pipeline(monkeypatch)
    first, second = run_flow(root), run_flow(root)
    assert first.is_completed() and second.is_completed(), failure_message(second)
    assert (first.result()["registered"]["reused"], second.result()["registered"]["reused"]) == (False, True)
    assert second.result()["registered"]["version"] == 1
    uri = f"sqlite:///{root / 'mlflow.db'}"
    assert len(MlflowClient(tracking_uri=uri, registry_uri=uri).search_model_versions("name='svgt-flow-test'")) == 1
    text = artifacts_of(second)["svgt-registry"].data
    assert "version 1: unchanged" in text and "no new version was created" in text
    assert "# Registered svgt-flow-test version 1" in artifacts_of(first)["svgt-registry"].data


def test_retrain_on_unchanged_inputs_stops_before_training(prefect_server, tmp_path, monkeypatch):
    """skip_if_unchanged (the retrain flow's default): once a version built from these exact inputs is
    registered, a rerun stops after ingest, validate and backbone; changing a param trains again."""
    root = make_checkout(tmp_path / "checkout")
    pipeline = Pipeline(monkeypatch)
    first = run_flow(root, skip_if_unchanged=True)
    assert first.is_completed(), failure_message(first)
    assert "train3" in pipeline.calls and first.result()["registered"]["version"] == 1

    calls = len(pipeline.calls)
    second = run_flow(root, skip_if_unchanged=True)
    assert second.is_completed(), failure_message(second)
    assert pipeline.calls[calls:] == ["ingest", "validate", "backbone"]
    result = second.result()
    assert result["registered"] is None and result["unchanged"]["version"] == 1
    text = artifacts_of(second)["svgt-registry"].data
    assert "# Nothing to retrain" in text and "svgt-flow-test version 1" in text

    params = yaml.safe_load((root / "params.yaml").read_text())
    params.setdefault("train", {})["seed"] = 7
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    calls = len(pipeline.calls)
    third = run_flow(root, skip_if_unchanged=True)
    assert third.is_completed(), failure_message(third)
    assert "train1" in pipeline.calls[calls:] and "unchanged" not in third.result()


def test_transient_failure_is_retried_and_the_task_states_say_so(passed_run):
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(
            id=FlowRunFilterId(any_=[passed_run.state.state_details.flow_run_id])))
    by_name = {r.name if r.name.startswith("train-stage") else r.name.rsplit("-", 1)[0]: r for r in runs}
    assert set(by_name) == {"ingest", "validate", "backbone", "baselines", "judge", "extract", "card", "train-stage1",
                            "train-stage2", "train-stage3", "evaluate", "register"}
    assert by_name["extract"].run_count == 2  # ConnectionResetError once, then success
    assert all(r.run_count == 1 for name, r in by_name.items() if name != "extract")
    assert all(r.state.is_completed() for r in runs)


def test_library_logs_and_step_output_reach_the_run_log(passed_run):
    from prefect import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.logging.handlers import APILogWorker

    APILogWorker.drain_all()
    flow_run_id = passed_run.state.state_details.flow_run_id
    with get_client(sync_client=True) as client:
        logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])))
    messages = [entry.message for entry in logs]
    assert any(m.startswith("svgt.data.ingest: wrote data/values/values.parquet") for m in messages)  # logger
    assert any(m.startswith("validation passed: 60 rows") for m in messages)  # the step's print()
    assert sum("svgt.data.ingest: wrote" in m for m in messages) == 1


def test_dag_order_and_step_commands_match_dvc_yaml():
    from flows.tasks import STEP_ARGV, STEP_ORDER

    stages = yaml.safe_load((REPO / "dvc.yaml").read_text(encoding="utf-8"))["stages"]
    assert set(STEP_ORDER) == set(stages) == set(STEP_ARGV)
    for name, stage in stages.items():
        assert shlex.split(stage["cmd"]) == ["svgt", *STEP_ARGV[name]], name

    def outs(stage):
        entries = [*stage.get("outs", []), *stage.get("metrics", []), *stage.get("plots", [])]
        return {next(iter(o)) if isinstance(o, dict) else o for o in entries}

    producer = {out: name for name, stage in stages.items() for out in outs(stage)}
    position = {name: i for i, name in enumerate(STEP_ORDER)}
    for name, stage in stages.items():
        for dep in stage.get("deps", []):
            if dep in producer:
                assert position[producer[dep]] < position[name], f"{name} runs before {producer[dep]} ({dep})"


def test_artifacts_are_published(passed_run):
    arts = artifacts_of(passed_run.state)
    assert {"svgt-validation", "svgt-stage1-curve", "svgt-stage2-curve", "svgt-stage3-curve", "svgt-eval",
            "svgt-gates", "svgt-registry"} <= set(arts)
    assert arts["svgt-validation"].type == "markdown" and "PASSED" in arts["svgt-validation"].data
    curve = arts["svgt-stage2-curve"]
    assert curve.type == "table"
    rows = json.loads(curve.data) if isinstance(curve.data, str) else curve.data
    assert rows == [{"epoch": 1, "train_loss": 0.9, "val_auroc": 0.7},
                    {"epoch": 2, "train_loss": 0.5, "val_auroc": 0.8}]
    assert "test_pair_auroc=0.9" in curve.description
    assert arts["svgt-eval"].data == (passed_run.root / "reports/eval.md").read_text()
    assert "| svgt | - | - | - | - | 60.0 (31.3-83.2) | - |" in arts["svgt-eval"].data  # refusal on harmful, test split
    assert "gates PASSED" in arts["svgt-gates"].data and "passed min_stage2_auroc" in arts["svgt-gates"].data
    assert "version 1" in arts["svgt-registry"].data and "`challenger`" in arts["svgt-registry"].data


def test_promote_flow_moves_production_to_the_challenger(passed_run):
    from mlflow import MlflowClient

    from flows.promote import promote

    state = promote(params_path="params.yaml", workdir=str(passed_run.root), return_state=True)
    assert state.is_completed(), failure_message(state)
    assert state.result() == 1
    uri = f"sqlite:///{passed_run.root / 'mlflow.db'}"
    assert MlflowClient(tracking_uri=uri, registry_uri=uri).get_model_version_by_alias(
        "svgt-flow-test", "production").version in (1, "1")
    arts = artifacts_of(state)
    assert "`models:/svgt-flow-test@production` now points at version **1**" in arts["svgt-promotion"].data

    # a platform team's production registry: another store, the version copied and verified there
    prod = f"sqlite:///{passed_run.root / 'production.db'}"
    state = promote(params_path="params.yaml", workdir=str(passed_run.root), to_tracking_uri=prod, return_state=True)
    assert state.is_completed(), failure_message(state)
    assert state.result() == 1
    copied = MlflowClient(tracking_uri=prod, registry_uri=prod).get_model_version_by_alias("svgt-flow-test",
                                                                                          "production")
    assert copied.tags["copied_from"] == f"models:/svgt-flow-test/1 in {uri}"
    assert f"Tracking URI: `{prod}`" in artifacts_of(state)["svgt-promotion"].data

    # a version that does not exist: a deterministic failure, not retried
    calls = len(passed_run.calls)
    state = promote(version=7, params_path="params.yaml", workdir=str(passed_run.root), return_state=True)
    assert state.is_failed()
    assert passed_run.calls[calls:] == ["promote"]


def test_failed_gate_fails_the_flow_and_registers_nothing(prefect_server, tmp_path, monkeypatch):
    root = make_checkout(tmp_path / "checkout")
    pipeline = Pipeline(monkeypatch, stage2_auroc=0.55)
    state = run_flow(root)
    assert state.is_failed()
    message = failure_message(state)
    assert "FAILED min_stage2_auroc: measured 0.55 < required 0.70" in message
    assert "passed min_harmful_refusal_gain" in message
    assert pipeline.calls[-2:] == ["evaluate", "gates"]  # gates ran once (not retried); register_module never ran
    assert "register" not in pipeline.calls
    assert not (root / "mlflow.db").exists()
    arts = artifacts_of(state)
    assert "FAILED min_stage2_auroc: measured 0.55" in arts["svgt-gates"].data and "svgt-registry" not in arts


def test_artifact_errors_never_fail_a_step_nor_register_twice(prefect_server, tmp_path, monkeypatch):
    from flows import tasks

    def unreachable(**kwargs):
        raise ConnectionError("Prefect API unreachable (simulated)")  # transient: would be retried if raised

    monkeypatch.setattr(tasks, "create_markdown_artifact", unreachable)
    monkeypatch.setattr(tasks, "create_table_artifact", unreachable)
    root = make_checkout(tmp_path / "checkout")
    pipeline = Pipeline(monkeypatch)
    state = run_flow(root)
    assert state.is_completed(), failure_message(state)
    assert pipeline.calls.count("register") == 1 and pipeline.calls.count("train3") == 1
    assert state.result()["registered"]["version"] == 1
    assert not artifacts_of(state)


def test_validation_failure_stops_before_extract_and_publishes_failures(prefect_server, tmp_path, monkeypatch):
    root = make_checkout(tmp_path / "checkout", min_rows=1000)
    pipeline = Pipeline(monkeypatch)
    state = run_flow(root)
    assert state.is_failed()
    assert pipeline.calls == ["ingest", "validate"]  # not retried, nothing downstream ran
    message = failure_message(state)
    assert "validation of data/values/values.parquet failed" in message
    assert "FAILED" in message and "1000" in message
    arts = artifacts_of(state)
    md = arts["svgt-validation"].data
    assert md.startswith("# Data validation: FAILED") and "| check | column |" in md and "1000" in md
    assert not (root / "data/hidden").exists()


def test_retrain_runs_the_training_flow_as_a_subflow(prefect_server, tmp_path, monkeypatch):
    from flows.retrain import retrain

    root = make_checkout(tmp_path / "checkout", min_rows=1000)  # fails fast at validation
    pipeline = Pipeline(monkeypatch)
    state = retrain(params_path="params.yaml", reason="dataset updated: test", workdir=str(root),
                    return_state=True)
    assert state.is_failed() and pipeline.calls == ["ingest", "validate"]
    assert "validation of data/values/values.parquet failed" in failure_message(state)


# ----------------------------------------------------------------------------------- retry decisions


@pytest.mark.parametrize(("exc", "retry"), [
    (ConnectionResetError("reset"), True),
    (TimeoutError("slow"), True),
    (OSError("EIO"), True),
    (FileNotFoundError("gone"), False),
    (PermissionError("no"), False),
    (ValueError("bad data"), False),
    (KeyError("k"), False),
    (RuntimeError("bug"), False),
    # the same rule as svgt.core.retry: a full disk or a read-only filesystem will not go away by itself
    (OSError(28, "No space left on device"), False),
    (OSError(30, "Read-only file system"), False),
])
def test_retry_condition(exc, retry):
    from prefect.states import Failed

    from flows.tasks import retry_transient

    assert retry_transient(None, None, Failed(data=exc)) is retry


def test_retry_condition_follows_causes_but_never_retries_step_failures():
    from flows.tasks import GatesFailed, is_transient
    from svgt.core.errors import StepFailed
    from svgt.registry.uri import RegistryError

    try:
        try:
            raise ConnectionRefusedError("mlflow down")
        except OSError as err:
            raise RegistryError("registering failed") from err
    except RegistryError as wrapped:
        assert is_transient(wrapped)
    assert not is_transient(StepFailed("validation failed"))
    assert not is_transient(GatesFailed("gate failed"))
    step = StepFailed("x")
    step.__cause__ = ConnectionError("y")
    assert not is_transient(step)


# ------------------------------------------------------------------------------------------ prefect.yaml


def test_prefect_yaml_deployments_resolve_and_validate():
    from prefect.cli.deploy._models import PrefectYamlModel
    from prefect.client.schemas.schedules import CronSchedule
    from prefect.events import DeploymentTriggerTypes
    from prefect.flows import Flow, load_flow_from_entrypoint
    from pydantic import TypeAdapter

    raw = yaml.safe_load((REPO / "prefect.yaml").read_text(encoding="utf-8"))
    model = PrefectYamlModel.model_validate(raw)
    deployments = {d.name: d for d in model.deployments}
    assert set(deployments) == {"retrain", "promote"}
    flows = {}
    for name, d in deployments.items():
        path, func = d.entrypoint.split(":")
        assert (REPO / path).is_file(), d.entrypoint
        flow = load_flow_from_entrypoint(str(REPO / path) + ":" + func, use_placeholder_flow=False)
        assert isinstance(flow, Flow), d.entrypoint
        flows[name] = flow
        accepted = set(inspect.signature(flow.fn).parameters)
        assert set(d.parameters) <= accepted, (name, d.parameters)
        assert d.work_pool is not None and d.work_pool.name == "svgt-process"
    assert flows["retrain"].name == "retrain-value-module" and flows["promote"].name == "promote-value-module"
    assert not raw["deployments"][1].get("schedules") and not raw["deployments"][1].get("triggers")  # manual

    retrain = raw["deployments"][0]
    [schedule] = retrain["schedules"]
    CronSchedule(cron=schedule["cron"], timezone=schedule["timezone"])  # validates the cron string and timezone
    assert len(schedule["cron"].split()) == 5
    assert set(schedule["parameters"]) <= set(inspect.signature(flows["retrain"].fn).parameters)

    [spec] = retrain["triggers"]
    trigger = TypeAdapter(DeploymentTriggerTypes).validate_python({**spec, "name": "retrain-on-dataset"})
    assert trigger.expect == {EVENT}
    assert set(trigger.parameters) <= set(inspect.signature(flows["retrain"].fn).parameters)


def test_trigger_matches_the_emitted_resource_and_renders_its_parameters():
    from jinja2.sandbox import SandboxedEnvironment
    from prefect.events import Event
    from prefect.events.schemas.events import ResourceSpecification

    from flows.events import RESOURCE_PREFIX, dataset_name

    spec = yaml.safe_load((REPO / "prefect.yaml").read_text(encoding="utf-8"))["deployments"][0]["triggers"][0]
    resource_id = RESOURCE_PREFIX + dataset_name("s3://bucket/values/wildguard-v7.parquet")
    event = Event(event=EVENT, resource={"prefect.resource.id": resource_id},
                  payload={"uri": "s3://bucket/values/wildguard-v7.parquet", "version": "v7"})
    assert ResourceSpecification(spec["match"]).includes([event.resource])
    assert not ResourceSpecification(spec["match"]).includes([Event(event=EVENT, resource={
        "prefect.resource.id": "other.dataset.x"}).resource])
    reason = SandboxedEnvironment().from_string(spec["parameters"]["reason"]).render(event=event)
    assert reason == "dataset updated: svgt.dataset.wildguard-v7 (s3://bucket/values/wildguard-v7.parquet, version v7)"


def test_prefect_deploy_creates_the_deployments_and_the_event_trigger_starts_a_retrain(prefect_server, tmp_path):
    """`prefect deploy --all` against the test server; then a dataset event schedules a retrain run."""
    import os
    import shutil
    import subprocess
    import sys

    from prefect import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId
    from prefect.events.worker import EventsWorker
    from prefect.settings import PREFECT_API_URL

    from flows.events import emit_dataset_updated

    # deploy from a copy (the checkout stays untouched); the flows read the steps from dvc.yaml
    for name in ("flows", "prefect.yaml", "params.yaml", "dvc.yaml"):
        (shutil.copytree if (REPO / name).is_dir() else shutil.copy)(REPO / name, tmp_path / name)
    with get_client(sync_client=True) as client:
        client.create_work_pool(WorkPoolCreate(name="svgt-process", type="process"))
    done = subprocess.run([sys.executable, "-m", "prefect", "--no-prompt", "deploy", "--all"], cwd=tmp_path,
                          env={**os.environ, "PREFECT_API_URL": PREFECT_API_URL.value()}, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]

    with get_client(sync_client=True) as client:
        deployments = {d.name: d for d in client.read_deployments()}
        retrain, promote = deployments["retrain"], deployments["promote"]
        assert retrain.entrypoint == "flows/retrain.py:retrain" and promote.entrypoint == "flows/promote.py:promote"
        assert [s.schedule.cron for s in retrain.schedules] == ["0 3 * * 1"] and not promote.schedules
        assert retrain.work_pool_name == "svgt-process"
        automations = client.request("POST", "/automations/filter", json={}).json()
        [automation] = [a for a in automations if a["actions"][0].get("deployment_id") == str(retrain.id)]
        assert automation["trigger"]["expect"] == [EVENT]

        emit_dataset_updated("s3://bucket/values/v9.parquet", "v9-e2e")
        EventsWorker.drain_all()
        deadline, runs = time.monotonic() + 30, []
        while not runs and time.monotonic() < deadline:
            runs = [r for r in client.read_flow_runs(deployment_filter=DeploymentFilter(
                id=DeploymentFilterId(any_=[retrain.id]))) if "v9-e2e" in r.parameters.get("reason", "")]
            time.sleep(0.5)
    assert runs, "the dataset event did not schedule a retrain run"
    assert runs[0].parameters["reason"] == ("dataset updated: svgt.dataset.v9 (s3://bucket/values/v9.parquet, "
                                            "version v9-e2e)")


# ---------------------------------------------------------------------------------------------- events


def test_emit_dataset_updated_reaches_the_server(prefect_server):
    from prefect import get_client
    from prefect.events.filters import EventFilter, EventNameFilter, EventResourceFilter
    from prefect.events.worker import EventsWorker

    from flows.events import emit_dataset_updated

    event = emit_dataset_updated("s3://bucket/values/values-2026.parquet", "abc123")
    assert event is not None
    assert event.event == EVENT and event.resource.id == "svgt.dataset.values-2026"
    assert event.payload == {"uri": "s3://bucket/values/values-2026.parquet", "version": "abc123"}
    EventsWorker.drain_all()
    flt = EventFilter(event=EventNameFilter(name=[EVENT]),
                      resource=EventResourceFilter(id=["svgt.dataset.values-2026"]))
    deadline = time.monotonic() + 20
    with get_client(sync_client=True) as client:
        while True:
            page = client.read_events(filter=flt, limit=50)
            if any(e.id == event.id for e in page.events) or time.monotonic() > deadline:
                break
            time.sleep(0.5)
    stored = [e for e in page.events if e.id == event.id]
    assert stored and stored[0].payload["version"] == "abc123"


def test_dataset_names():
    from flows.events import dataset_name

    assert dataset_name("s3://b/values/v3.parquet") == "v3"
    assert dataset_name("hf://allenai/wildguardmix") == "wildguardmix"
    assert dataset_name("data/values/Values 2.parquet") == "values-2"
    with pytest.raises(ValueError):
        dataset_name("s3://b/values/...")


def test_events_cli(prefect_server, capsys):
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.events import main

    assert main(["--dataset", "hf://allenai/wildguardmix", "--version", "r2"]) == 0
    assert "emitted svgt.value-dataset.updated for svgt.dataset.wildguardmix" in capsys.readouterr().out
    with temporary_settings(restore_defaults={PREFECT_API_URL}):  # no server: refuse instead of losing the event
        assert main(["--dataset", "hf://allenai/wildguardmix"]) == 2
    assert "PREFECT_API_URL is not set" in capsys.readouterr().err


def test_a_step_that_fills_the_disk_is_not_retried(prefect_server, tmp_path, monkeypatch):
    """The Prefect task around a step that hits a full disk fails at once (not after 30 s + 120 s of retries),
    by the library's own retry rule; a dropped connection in the same place is retried twice."""
    import errno

    from prefect import flow

    from flows import tasks
    from svgt.core.io import disk_full_error

    calls = []

    def failing_step(error):
        def run(*_args, **_kwargs):
            calls.append(type(error).__name__)
            raise error
        return run

    ingest = tasks.ingest.with_options(retry_delay_seconds=[0, 0])

    @flow(name="svgt-disk-full-probe")
    def probe():
        return ingest("params.yaml", return_state=True)

    full = disk_full_error(tmp_path / "values.parquet", OSError(errno.ENOSPC, "No space left on device"))
    for error, attempts in ((full, 1), (ConnectionResetError(104, "reset"), 1 + tasks.RETRIES)):
        calls.clear()
        monkeypatch.setattr(tasks, "run_step", failing_step(error))
        assert probe(return_state=True).is_failed() and calls == [type(error).__name__] * attempts
