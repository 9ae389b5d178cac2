"""MLflow registry: register / promote / resolve against a real SQLite store in tmp_path."""

import json
import shutil
from pathlib import Path

import pytest
import torch

from svgt.core.params import GatesConfig, RegistryConfig
from svgt.eval.gates import GateReport, GateResult, check_gates
from svgt.model import ValueModule, ValueModuleConfig, load_value_module, save_value_module
from svgt.registry.uri import resolve_module_uri
from svgt.registry.versions import RegistryError, copy_version, promote, register_module

SECRET = "supersecret123"
BACKBONE_SHA = "a" * 64
DATA_SHA = "b" * 64
PARAMS = {"model": {"d_v": 16, "encoder_heads": 2}, "train": {"stage3": {"lr": 1e-3, "epochs": 1}},
          "evaluate": {"methods": ["none", "svgt"]}}


@pytest.fixture(scope="session")
def template_db(tmp_path_factory):
    """An empty, migrated MLflow SQLite database (migrations take seconds; copying it takes none)."""
    from mlflow import MlflowClient

    path = tmp_path_factory.mktemp("mlflow-template") / "mlflow.db"
    uri = f"sqlite:///{path}"
    MlflowClient(tracking_uri=uri, registry_uri=uri).search_registered_models()
    return path


@pytest.fixture
def store(tmp_path, template_db, monkeypatch):
    monkeypatch.chdir(tmp_path)  # anything MLflow might default to "./mlruns" lands in tmp_path
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    db = tmp_path / "mlflow.db"
    shutil.copy(template_db, db)
    uri = f"sqlite:///{db}"
    cfg = RegistryConfig(tracking_uri=uri, model_name="svgt-test-module", experiment="svgt-test")
    return cfg, str(tmp_path / "artifacts")


def client_for(cfg):
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=cfg.tracking_uri, registry_uri=cfg.tracking_uri)


def make_module_dir(path, seed=0, **metadata):
    torch.manual_seed(seed)
    module = ValueModule(ValueModuleConfig(hidden_size=32, layer=2, d_v=16, encoder_heads=2, cross_attn_heads=2))
    meta = {"stage": 3, "backbone_source": "pypi://tiny==0.1/tiny.gguf", "backbone_weights_sha256": BACKBONE_SHA,
            "data_sha256": DATA_SHA, "metrics": {"test_pair_auroc": 0.91, "final_loss": 0.25, "nan_metric": None}}
    meta.update(metadata)
    save_value_module(module, path, meta)
    return path


def passing_report():
    return GateReport(passed=True, results=[
        GateResult("min_harmful_refusal_gain", 0.4, 0.2, passed=True, skipped=False, message="passed ..."),
        GateResult("max_perplexity_increase", None, None, passed=True, skipped=True, message="skipped ...")])


def failing_report(tmp_path):
    d = tmp_path / "metrics"
    d.mkdir()
    rate = {"rate": 0.1, "k": 4, "n": 40, "ci95": [0.0, 0.3]}
    method = {"refusal_harmful": rate, "over_refusal_benign": rate, "tokens_per_s": 1.0}
    (d / "eval.json").write_text(json.dumps({"methods": {"none": method, "svgt": method}}))
    (d / "stage2.json").write_text(json.dumps({"test_pair_auroc": 0.9}))
    report = check_gates(d, GatesConfig())
    assert not report.passed
    return report


def assert_nothing_registered(cfg):
    client = client_for(cfg)
    assert client.search_registered_models() == []
    assert client.search_model_versions() == []
    assert client.get_experiment_by_name(cfg.experiment) is None


def weights_in(directory):
    return directory / "weights.safetensors"


def flip_last_byte(path):
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01
    path.write_bytes(bytes(data))


def test_register_creates_version_with_challenger_tags_and_no_secrets(tmp_path, store, monkeypatch):
    cfg, artifacts = store
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    module_dir = make_module_dir(tmp_path / "vm")
    params = {**PARAMS, "backbone": {"source": f"s3://AKIAFAKE:{SECRET}@bucket/model"},
              "storage_options": {"secret": SECRET, "key": "AKIAFAKE"}, "note": f"pasted {SECRET} here"}
    reg = register_module(module_dir, passing_report(), cfg, params=params, git_commit="abc123",
                          artifact_location=artifacts)
    assert (reg.name, reg.version, reg.aliases) == (cfg.model_name, 1, ("challenger",))

    client = client_for(cfg)
    mv = client.get_model_version_by_alias(cfg.model_name, "challenger")
    assert str(mv.version) == "1" and mv.run_id == reg.run_id
    assert mv.source.startswith(artifacts) and mv.source.endswith("/value_module")
    tags = mv.tags
    assert tags["gates_passed"] == "true"
    assert tags["backbone_weights_sha256"] == BACKBONE_SHA
    assert tags["backbone_source"] == "pypi://tiny==0.1/tiny.gguf"
    assert tags["data_sha256"] == DATA_SHA
    assert tags["git_commit"] == "abc123"
    from svgt.core.io import sha256_file

    assert tags["manifest_sha256"] == sha256_file(module_dir / "manifest.json")
    assert json.loads(tags["gate_results"])["results"][0]["name"] == "min_harmful_refusal_gain"

    run = client.get_run(reg.run_id)
    assert run.info.status == "FINISHED"
    assert run.info.experiment_id == client.get_experiment_by_name(cfg.experiment).experiment_id
    assert run.data.params["model.d_v"] == "16"
    assert run.data.params["evaluate.methods"] == '["none", "svgt"]'
    assert run.data.metrics["test_pair_auroc"] == pytest.approx(0.91)
    assert run.data.metrics["gate.min_harmful_refusal_gain"] == pytest.approx(0.4)
    assert "nan_metric" not in run.data.metrics
    logged = {f.path for f in client.list_artifacts(reg.run_id, "value_module")}
    assert logged == {"value_module/weights.safetensors", "value_module/config.json", "value_module/README.md",
                      "value_module/manifest.json"}

    # the secret from the environment (and pasted into params) appears in no param, tag or description
    rm = client.get_registered_model(cfg.model_name)
    scanned = json.dumps([run.data.params, run.data.tags, mv.tags, mv.description, rm.tags, rm.description])
    assert SECRET not in scanned
    assert run.data.params["storage_options.secret"] == "***"
    assert run.data.params["backbone.source"] == "s3://***@bucket/model"


def test_failed_gate_report_registers_nothing(tmp_path, store):
    cfg, artifacts = store
    module_dir = make_module_dir(tmp_path / "vm")
    with pytest.raises(RegistryError, match=r"quality gates failed \(min_harmful_refusal_gain\)") as err:
        register_module(module_dir, failing_report(tmp_path), cfg, params=PARAMS, git_commit=None,
                        artifact_location=artifacts)
    assert "FAILED min_harmful_refusal_gain: measured 0.00 < required 0.20" in str(err.value)
    with pytest.raises(RegistryError, match="expected a GateReport"):
        register_module(module_dir, None, cfg, params=PARAMS, git_commit=None, artifact_location=artifacts)
    assert_nothing_registered(cfg)


def test_module_with_bad_checksum_registers_nothing(tmp_path, store):
    cfg, artifacts = store
    module_dir = make_module_dir(tmp_path / "vm")
    flip_last_byte(weights_in(module_dir))
    with pytest.raises(RegistryError, match="checksum"):
        register_module(module_dir, passing_report(), cfg, params=PARAMS, git_commit=None,
                        artifact_location=artifacts)
    assert_nothing_registered(cfg)


def test_promote_only_gate_passed_versions_and_second_registration(tmp_path, store):
    cfg, artifacts = store
    client = client_for(cfg)
    with pytest.raises(RegistryError, match="no registered model"):
        promote(cfg)
    first = register_module(make_module_dir(tmp_path / "vm1", seed=1), passing_report(), cfg, params=PARAMS,
                            git_commit="c1", artifact_location=artifacts)
    assert promote(cfg) == first.version == 1
    assert str(client.get_model_version_by_alias(cfg.model_name, "production").version) == "1"

    second = register_module(make_module_dir(tmp_path / "vm2", seed=2), passing_report(), cfg, params=PARAMS,
                             git_commit="c2", artifact_location=artifacts)
    assert (second.version, second.aliases) == (2, ("challenger",))
    assert str(client.get_model_version_by_alias(cfg.model_name, "challenger").version) == "2"
    assert str(client.get_model_version_by_alias(cfg.model_name, "production").version) == "1"
    assert client.get_model_version(cfg.model_name, "1").aliases == ["production"]

    # a version whose gates_passed tag is not "true" is never promoted
    client.set_model_version_tag(cfg.model_name, "2", "gates_passed", "false")
    with pytest.raises(RegistryError, match=r"gates_passed tag is 'false'"):
        promote(cfg)
    client.delete_model_version_tag(cfg.model_name, "2", "gates_passed")
    with pytest.raises(RegistryError, match=r"gates_passed tag is None"):
        promote(cfg, version=2)
    assert str(client.get_model_version_by_alias(cfg.model_name, "production").version) == "1"

    with pytest.raises(RegistryError, match=r"has no alias 'staging' \(aliases: challenger->v2, production->v1\)"):
        promote(cfg, from_alias="staging")
    with pytest.raises(RegistryError, match="has no version 7"):
        promote(cfg, version=7)
    client.set_model_version_tag(cfg.model_name, "2", "gates_passed", "true")
    assert promote(cfg, version=2) == 2
    assert str(client.get_model_version_by_alias(cfg.model_name, "production").version) == "2"


def test_resolve_registry_uri_downloads_a_verified_module(tmp_path, store, monkeypatch):
    cfg, artifacts = store
    module_dir = make_module_dir(tmp_path / "vm", seed=3)
    register_module(module_dir, passing_report(), cfg, params=PARAMS, git_commit=None, artifact_location=artifacts)
    promote(cfg)
    expected, _ = load_value_module(module_dir)

    local = resolve_module_uri(f"models:/{cfg.model_name}@production", tracking_uri=cfg.tracking_uri)
    assert local.is_dir() and not str(local).startswith(artifacts)  # a copy, not the store itself
    module, meta = load_value_module(local, expected_backbone_sha256=BACKBONE_SHA)
    assert meta["data_sha256"] == DATA_SHA
    for (k, a), (_, b) in zip(module.state_dict().items(), expected.state_dict().items(), strict=True):
        assert torch.equal(a, b), k

    monkeypatch.setenv("MLFLOW_TRACKING_URI", cfg.tracking_uri)  # the CLI's way of naming the store
    local2 = resolve_module_uri(f"models:/{cfg.model_name}/1")
    assert (local2 / "manifest.json").read_bytes() == (module_dir / "manifest.json").read_bytes()

    with pytest.raises(RegistryError, match=r"no registered model named 'nope'"):
        resolve_module_uri("models:/nope@production")
    with pytest.raises(RegistryError, match=r"has no alias 'staging'"):
        resolve_module_uri(f"models:/{cfg.model_name}@staging")
    with pytest.raises(RegistryError, match="has no version 9"):
        resolve_module_uri(f"models:/{cfg.model_name}/9")
    with pytest.raises(RegistryError, match="stage names"):
        resolve_module_uri(f"models:/{cfg.model_name}/Production")


def test_tampered_stored_artifact_is_refused(tmp_path, store):
    cfg, artifacts = store
    reg = register_module(make_module_dir(tmp_path / "vm"), passing_report(), cfg, params=PARAMS, git_commit=None,
                          artifact_location=artifacts)
    stored = client_for(cfg).get_model_version(cfg.model_name, str(reg.version)).source
    flip_last_byte(weights_in(Path(stored.removeprefix("file://"))))
    with pytest.raises(RegistryError, match=r"failed verification: .*weights\.safetensors: checksum"):
        resolve_module_uri(f"models:/{cfg.model_name}@challenger", tracking_uri=cfg.tracking_uri)
    with pytest.raises(RegistryError, match="checksum"):
        promote(cfg)
    # production was never set; the version keeps only its challenger alias
    assert client_for(cfg).get_model_version(cfg.model_name, "1").aliases == ["challenger"]


def test_resolve_local_dir_and_fsspec_url(tmp_path):
    module_dir = make_module_dir(tmp_path / "vm")
    assert resolve_module_uri(str(module_dir)) == module_dir
    copied = resolve_module_uri(f"file://{module_dir}")
    try:
        assert copied != module_dir
        load_value_module(copied, expected_backbone_sha256=BACKBONE_SHA)
    finally:
        shutil.rmtree(copied)
    with pytest.raises(ValueError, match="no such directory"):
        resolve_module_uri(str(tmp_path / "missing"))


def test_failure_after_logging_leaves_no_promotable_version(tmp_path, store, monkeypatch):
    import svgt.registry.versions as registry

    cfg, artifacts = store

    def broken_upload(client, name, version):
        raise RegistryError("simulated: stored copy does not verify")

    monkeypatch.setattr(registry, "_verify_logged", broken_upload)
    with pytest.raises(RegistryError, match="simulated"):
        register_module(make_module_dir(tmp_path / "vm"), passing_report(), cfg, params=PARAMS, git_commit=None,
                        artifact_location=artifacts)
    client = client_for(cfg)
    assert client.search_model_versions() == []  # the half-made version was deleted again
    runs = client.search_runs([client.get_experiment_by_name(cfg.experiment).experiment_id])
    assert [r.info.status for r in runs] == ["FAILED"]
    with pytest.raises(RegistryError, match="has no alias 'challenger'"):
        promote(cfg)


def test_module_without_backbone_hash_is_refused(tmp_path, store):
    cfg, artifacts = store
    module_dir = make_module_dir(tmp_path / "vm", backbone_weights_sha256=None)
    with pytest.raises(RegistryError, match="records no backbone_weights_sha256"):
        register_module(module_dir, passing_report(), cfg, params=PARAMS, git_commit=None,
                        artifact_location=artifacts)
    assert_nothing_registered(cfg)


def test_identical_module_is_not_registered_twice(tmp_path, store, caplog):
    """A scheduled retrain on unchanged inputs rebuilds a byte-identical module: no second version; challenger
    moves back to the identical version even after another module took it. A changed module, or
    reuse_identical off, registers a new version; a version whose gates_passed tag was withdrawn is not reused."""
    import dataclasses
    import logging

    cfg, artifacts = store
    client = client_for(cfg)
    first = register_module(make_module_dir(tmp_path / "a", seed=1), passing_report(), cfg, params=PARAMS,
                            git_commit="c1", artifact_location=artifacts)
    other = register_module(make_module_dir(tmp_path / "b", seed=2), passing_report(), cfg, params=PARAMS,
                            git_commit="c2", artifact_location=artifacts)
    assert (first.version, other.version, first.reused, other.reused) == (1, 2, False, False)

    rebuilt = make_module_dir(tmp_path / "a-again", seed=1)  # same seed and metadata: same bytes
    with caplog.at_level(logging.INFO, logger="svgt.registry.versions"):
        again = register_module(rebuilt, passing_report(), cfg, params=PARAMS, git_commit="c3",
                                artifact_location=artifacts)
    assert (again.version, again.reused, again.aliases, again.run_id) == (1, True, ("challenger",), first.run_id)
    assert "byte-identical to svgt-test-module version 1" in caplog.text
    assert len(client.search_model_versions(f"name='{cfg.model_name}'")) == 2
    assert client.get_model_version(cfg.model_name, "1").tags["git_commit"] == "c1"  # its own run's tags stay
    other_params = {**PARAMS, "evaluate": {"methods": ["none"]}}  # rebuilt from other inputs: same bytes
    register_module(rebuilt, passing_report(), cfg, params=other_params, git_commit="c3",
                    artifact_location=artifacts)
    from svgt.registry.build_inputs import build_inputs

    newest = build_inputs(other_params, data_sha256=DATA_SHA, backbone_weights_sha256=BACKBONE_SHA)
    assert client.get_model_version(cfg.model_name, "1").tags["inputs_sha256"] == newest.sha256

    changed = make_module_dir(tmp_path / "a-changed", seed=1, data_sha256="c" * 64)
    assert register_module(changed, passing_report(), cfg, params=PARAMS, git_commit="c4",
                           artifact_location=artifacts).version == 3
    forced = dataclasses.replace(cfg, reuse_identical=False)
    assert register_module(rebuilt, passing_report(), forced, params=PARAMS, git_commit="c5",
                           artifact_location=artifacts).version == 4
    for version in ("1", "4"):
        client.set_model_version_tag(cfg.model_name, version, "gates_passed", "false")
    renewed = register_module(rebuilt, passing_report(), cfg, params=PARAMS, git_commit="c6",
                              artifact_location=artifacts)
    assert (renewed.version, renewed.reused) == (5, False)


def test_identical_version_whose_stored_copy_fails_verification_is_not_reused(tmp_path, store):
    cfg, artifacts = store
    first = register_module(make_module_dir(tmp_path / "a", seed=1), passing_report(), cfg, params=PARAMS,
                            git_commit="c1", artifact_location=artifacts)
    stored = next(Path(artifacts).rglob("weights.safetensors"))
    flip_last_byte(stored)
    again = register_module(make_module_dir(tmp_path / "a-again", seed=1), passing_report(), cfg, params=PARAMS,
                            git_commit="c2", artifact_location=artifacts)
    assert (first.version, again.version, again.reused) == (1, 2, False)


@pytest.fixture
def production_store(tmp_path, template_db):
    """A second registry (another SQLite store and artifact root): a platform team's production registry."""
    db = tmp_path / "prod" / "mlflow.db"
    db.parent.mkdir()
    shutil.copy(template_db, db)
    uri = f"sqlite:///{db}"
    return RegistryConfig(tracking_uri=uri, model_name="svgt-prod-module", experiment="svgt-prod"), str(db.parent / "a")


def test_copy_version_into_a_production_registry(tmp_path, store, production_store):
    cfg, artifacts = store
    prod, prod_artifacts = production_store
    module_dir = make_module_dir(tmp_path / "vm", seed=1)
    register_module(module_dir, passing_report(), cfg, params=PARAMS, git_commit="c1", artifact_location=artifacts)
    register_module(make_module_dir(tmp_path / "vm2", seed=2), passing_report(), cfg, params=PARAMS,
                    git_commit="c2", artifact_location=artifacts)

    copied = copy_version(cfg, prod, version=1, artifact_location=prod_artifacts)
    assert (copied.name, copied.version, copied.aliases, copied.reused) == ("svgt-prod-module", 1, ("production",),
                                                                            False)
    prod_client = client_for(prod)
    mv = prod_client.get_model_version("svgt-prod-module", "1")
    assert mv.tags["git_commit"] == "c1" and mv.tags["gates_passed"] == "true"
    assert mv.tags["copied_from"] == f"models:/{cfg.model_name}/1 in {cfg.tracking_uri}"
    assert json.loads(mv.tags["gate_results"])["passed"] is True
    run = prod_client.get_run(mv.run_id).data
    assert run.metrics["test_pair_auroc"] == 0.91 and run.params["model.d_v"] == "16"
    local = resolve_module_uri("models:/svgt-prod-module@production", tracking_uri=prod.tracking_uri)
    assert (local / "weights.safetensors").read_bytes() == (module_dir / "weights.safetensors").read_bytes()
    assert client_for(cfg).get_model_version(cfg.model_name, "1").aliases == []  # the source's aliases stay

    again = copy_version(cfg, prod, version=1, alias="stable", artifact_location=prod_artifacts)
    assert (again.version, again.reused, again.aliases) == (1, True, ("production", "stable"))
    assert copy_version(cfg, prod, artifact_location=prod_artifacts).version == 2  # default: @challenger, v2
    assert len(prod_client.search_model_versions("name='svgt-prod-module'")) == 2


def test_copy_refuses_unpassed_tampered_or_same_registry_versions(tmp_path, store, production_store):
    cfg, artifacts = store
    prod, prod_artifacts = production_store
    register_module(make_module_dir(tmp_path / "vm", seed=1), passing_report(), cfg, params=PARAMS, git_commit="c1",
                    artifact_location=artifacts)
    client = client_for(cfg)
    client.set_model_version_tag(cfg.model_name, "1", "gates_passed", "false")
    with pytest.raises(RegistryError, match=r"refusing to copy svgt-test-module version 1: its gates_passed tag is "
                                            r"'false'"):
        copy_version(cfg, prod, artifact_location=prod_artifacts)
    client.set_model_version_tag(cfg.model_name, "1", "gates_passed", "true")
    flip_last_byte(weights_in(Path(client.get_model_version(cfg.model_name, "1").source.removeprefix("file://"))))
    with pytest.raises(RegistryError, match=r"models:/svgt-test-module/1 in .*weights\.safetensors: checksum"):
        copy_version(cfg, prod, artifact_location=prod_artifacts)
    assert_nothing_registered(prod)
    with pytest.raises(RegistryError, match="use promote"):
        copy_version(cfg, cfg)


def test_promote_cli_copies_into_another_registry(tmp_path, store, production_store, capsys):
    import yaml

    from svgt.cli import main

    cfg, artifacts = store
    prod, _ = production_store
    register_module(make_module_dir(tmp_path / "vm", seed=1), passing_report(), cfg, params=PARAMS, git_commit="c1",
                    artifact_location=artifacts)
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"registry": {"tracking_uri": cfg.tracking_uri, "model_name": cfg.model_name,
                                                   "experiment": cfg.experiment}}))
    assert main(["--params", str(params), "promote", "--to-tracking-uri", prod.tracking_uri]) == 0
    assert f"svgt-test-module@production in {prod.tracking_uri} -> version 1 (a new version)" in capsys.readouterr().out
    assert main(["--params", str(params), "promote", "--to-model-name", "x"]) != 0
    assert "--to-model-name and --to-experiment need --to-tracking-uri" in capsys.readouterr().err


def test_built_from_finds_the_version_registered_from_the_same_inputs(tmp_path, store):
    from svgt.registry.build_inputs import build_inputs
    from svgt.registry.versions import built_from

    cfg, artifacts = store
    inputs = build_inputs(PARAMS, data_sha256=DATA_SHA, backbone_weights_sha256=BACKBONE_SHA)
    assert built_from(cfg, inputs) is None  # no registered model yet
    reg = register_module(make_module_dir(tmp_path / "vm", seed=1), passing_report(), cfg, params=PARAMS,
                          git_commit="c1", artifact_location=artifacts)
    tags = client_for(cfg).get_model_version(cfg.model_name, "1").tags
    assert tags["inputs_sha256"] == inputs.sha256 and tags["params_sha256"] == inputs.params_sha256
    found = built_from(cfg, inputs)
    assert (found.version, found.run_id, found.aliases) == (1, reg.run_id, ("challenger",))
    other_params = {**PARAMS, "train": {"stage3": {"lr": 2e-3, "epochs": 1}}}
    assert built_from(cfg, build_inputs(other_params, data_sha256=DATA_SHA, backbone_weights_sha256=BACKBONE_SHA)) \
        is None
    assert built_from(cfg, build_inputs(PARAMS, data_sha256="e" * 64, backbone_weights_sha256=BACKBONE_SHA)) is None
    client_for(cfg).set_model_version_tag(cfg.model_name, "1", "gates_passed", "false")  # withdrawn: not a match
    assert built_from(cfg, inputs) is None
