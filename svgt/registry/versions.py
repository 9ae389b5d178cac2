"""MLflow model registry for value modules: register gate-passing modules, promote them by alias.

Lifecycle (aliases, not the deprecated stages)::

    register_module(...)   new version of cfg.model_name, alias "challenger" -> it (or, when the module is
                           byte-identical to a gate-passed version, "challenger" -> that version)
    promote(cfg)           alias "production" -> the version holding "challenger", if its gates_passed tag is "true"
    copy_version(src, dst) a gate-passed version of one registry into another (a production registry), alias there
    resolve_module_uri("models:/svgt-value-module@production")   downloaded + checksum-verified local directory

Every call uses an explicit ``MlflowClient(tracking_uri=cfg.tracking_uri, registry_uri=cfg.tracking_uri)``; the
process-global MLflow URIs and the fluent active-run API are never touched, so a test or a flow can talk to
several stores. Nothing taken from the environment is written to params or tags, and values that look like
credentials (URL userinfo, values of secret-looking environment variables) are redacted before logging.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from svgt.core.io import MANIFEST, sha256_file
from svgt.core.params import RegistryConfig
from svgt.eval.gates import GateReport, format_gate_report
from svgt.registry.build_inputs import BuildInputs, build_inputs
from svgt.registry.uri import (
    MODULE_ARTIFACT,
    ModelRef,
    RegistryError,
    download_version,
    mlflow_client,
    redact_url,
    resolve_module_uri,
    resolve_version,
    verify_module_dir,
)

__all__ = ["RegisteredVersion", "RegistryError", "built_from", "copy_version", "promote", "register_module",
           "resolve_module_uri"]

log = logging.getLogger(__name__)

CHALLENGER = "challenger"
PRODUCTION = "production"
GATES_PASSED_TAG = "gates_passed"
INPUT_TAGS = ("inputs_sha256", "params_sha256", "code_sha256")  # BuildInputs.tags()
_MAX_PARAM_LEN = 6000  # MLflow's limit for a param value
_MAX_TAG_LEN = 8000  # MLflow's limit for a run tag value
_BATCH = 100  # MLflow's limit for params/tags in one log_batch
_SECRET_ENV = re.compile(r"SECRET|PASSWORD|PASSWD|TOKEN|API_?KEY|ACCESS_KEY|CREDENTIAL|PRIVATE_KEY|AUTH", re.I)
_SECRET_KEY = re.compile(r"secret|password|passwd|api_?key|access_key|credential|private_key|(^|\.)(key|token)$",
                         re.I)


@dataclass(frozen=True)
class RegisteredVersion:
    name: str
    version: int
    run_id: str
    aliases: tuple[str, ...]
    reused: bool = False  # True: an identical module was already registered as this version


# ---------------------------------------------------------------------------------------------- redaction

def _secret_values() -> list[str]:
    """Values of secret-looking environment variables (long enough that replacing them is safe)."""
    return sorted({v for k, v in os.environ.items() if _SECRET_ENV.search(k) and len(v) >= 8}, key=len, reverse=True)


def _redact(text: str, secrets: list[str]) -> str:
    text = redact_url(text)
    for s in secrets:
        text = text.replace(s, "***")
    return text


def _flatten(data: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    if isinstance(data, dict):
        for k, v in data.items():
            yield from _flatten(v, f"{prefix}.{k}" if prefix else str(k))
    else:
        yield prefix, data


def _param_items(params: dict[str, Any], secrets: list[str]) -> dict[str, str]:
    out = {}
    for key, value in _flatten(params):
        text = value if isinstance(value, str) else json.dumps(value, sort_keys=True, default=str)
        text = "***" if _SECRET_KEY.search(key) and value not in (None, "") else _redact(text, secrets)
        out[_metric_key(key)] = text[:_MAX_PARAM_LEN]
    return out


def _metric_key(key: str) -> str:
    return re.sub(r"[^\w.\- /]", "_", key)[:250]


def _metric_items(metadata: dict[str, Any], report: GateReport) -> dict[str, float]:
    out: dict[str, float] = {}
    for key, value in _flatten(metadata.get("metrics") or {}):
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            out[_metric_key(key)] = float(value)
    for r in report.results:
        if r.measured is not None and math.isfinite(r.measured):
            out[f"gate.{r.name}"] = float(r.measured)
    return out


# ---------------------------------------------------------------------------------------------- MLflow helpers

def _ensure_experiment(client: Any, name: str, artifact_location: str | None) -> str:
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        if exp.lifecycle_stage != "active":
            raise RegistryError(f"MLflow experiment {name!r} is deleted; restore it or set another "
                                "registry.experiment")
        return exp.experiment_id
    return client.create_experiment(name, artifact_location=artifact_location)


def _ensure_registered_model(client: Any, name: str) -> None:
    from mlflow.exceptions import MlflowException

    try:
        client.get_registered_model(name)
    except MlflowException as err:
        if err.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
        client.create_registered_model(name, description="SVGT value modules (svgt.registry.versions); aliases: "
                                                          f"{CHALLENGER} = newest gate-passing, {PRODUCTION} = served")


def _log_batch(client: Any, run_id: str, *, params: dict[str, str], metrics: dict[str, float],
               tags: dict[str, str]) -> None:
    from mlflow.entities import Metric, Param, RunTag
    from mlflow.utils.time import get_current_time_millis

    now = get_current_time_millis()
    p = [Param(k, v) for k, v in params.items()]
    t = [RunTag(k, v[:_MAX_TAG_LEN]) for k, v in tags.items()]
    m = [Metric(k, v, now, 0) for k, v in metrics.items()]
    for i in range(0, max(len(p), len(t), 1), _BATCH):
        client.log_batch(run_id, params=p[i:i + _BATCH], tags=t[i:i + _BATCH])
    for i in range(0, len(m), 1000):
        client.log_batch(run_id, metrics=m[i:i + 1000])


def _verify_logged(client: Any, name: str, version: int | str) -> None:
    target = Path(tempfile.mkdtemp(prefix="svgt-verify-"))
    try:
        local = download_version(client, name, version, target)
        verify_module_dir(local, f"models:/{name}/{version}")
    finally:
        shutil.rmtree(target, ignore_errors=True)


def _newest_verified(client: Any, name: str, tag: str, value: str) -> Any | None:
    """The newest gate-passed version of ``name`` tagged ``tag=value`` (a sha256) whose stored copy still
    verifies; None if there is none (a version that fails verification is logged and passed over)."""
    from mlflow.exceptions import MlflowException

    found = client.search_model_versions(f"tags.{tag}='{value}'")  # hex values: safe to quote
    for mv in sorted((v for v in found if v.name == name), key=lambda v: -int(v.version)):
        if mv.tags.get(GATES_PASSED_TAG) != "true" or mv.status != "READY":
            continue
        try:
            _verify_logged(client, name, mv.version)
        except (RegistryError, MlflowException, OSError) as err:
            log.warning("version %s of %s matches %s but its stored copy does not verify (%s): passed over",
                        mv.version, name, tag, err)
            continue
        return mv
    return None


def _require_gates_passed(mv: Any, action: str, verb: str) -> None:
    """Only versions whose gates_passed tag is exactly "true" leave the registration step's hands."""
    tag = mv.tags.get(GATES_PASSED_TAG)
    if tag != "true":
        raise RegistryError(f"refusing to {action}: its {GATES_PASSED_TAG} tag is {tag!r}, and only versions that "
                            f"passed every quality gate (tag \"true\") can be {verb}")


def _abandon(client: Any, run_id: str, name: str, mv: Any) -> None:
    """Best-effort cleanup after a failed registration: no half-registered version is left to promote."""
    try:
        if mv is not None:
            client.delete_model_version(name, mv.version)
        client.set_terminated(run_id, "FAILED")
    except Exception:  # the original error is the one to report
        pass


# ---------------------------------------------------------------------------------------------- public API

def register_module(module_dir: str | Path, gate_report: GateReport, cfg: RegistryConfig, *, params: dict[str, Any],
                    git_commit: str | None, artifact_location: str | None = None) -> RegisteredVersion:
    """Log ``module_dir`` to an MLflow run and register it as a new version of ``cfg.model_name``.

    Refuses (RegistryError; nothing is logged or registered) when the gates did not pass or the module's files
    do not match its manifest. ``artifact_location`` is used only when ``cfg.experiment`` is created here
    (default: the tracking store's default artifact root). The new version gets alias ``challenger``.
    What the module was built from (its metadata's data and backbone hashes, ``params``, this code) is tagged
    as ``inputs_sha256`` (see svgt.registry.build_inputs), which ``built_from`` finds.

    With ``cfg.reuse_identical``, a module whose manifest (the sha256 of every file) equals that of a
    gate-passed version already registered, and whose stored copy still verifies, is not registered again:
    alias ``challenger`` moves to that version and the result has ``reused=True``. Its tags (gate results,
    git commit) stay those of the run that registered it, except the build-inputs tags, which take this
    run's inputs.
    """
    module_dir = Path(module_dir)
    if not isinstance(gate_report, GateReport):
        raise RegistryError(f"refusing to register {module_dir}: expected a GateReport from "
                            "svgt.eval.gates.check_gates, "
                            f"got {type(gate_report).__name__}")
    if not gate_report.passed:
        failed = ", ".join(r.name for r in gate_report.failed) or "unknown"
        raise RegistryError(f"refusing to register {module_dir}: quality gates failed ({failed})\n"
                            + format_gate_report(gate_report))
    if not module_dir.is_dir():
        raise RegistryError(f"refusing to register {module_dir}: no such directory")
    metadata = verify_module_dir(module_dir, f"refusing to register {module_dir}")
    backbone_sha = metadata.get("backbone_weights_sha256")
    if not backbone_sha:
        raise RegistryError(f"refusing to register {module_dir}: its metadata records no backbone_weights_sha256, "
                            "so it could never be checked against a backbone")

    secrets = _secret_values()
    gates_json = json.dumps(gate_report.to_dict(), sort_keys=True)
    tags = {
        "backbone_source": _redact(str(metadata.get("backbone_source", "unknown")), secrets),
        "backbone_weights_sha256": str(backbone_sha),
        "data_sha256": str(metadata.get("data_sha256") or "unknown"),
        "git_commit": _redact(git_commit, secrets) if git_commit else "unknown",
        GATES_PASSED_TAG: "true",
        "gate_results": gates_json,
        "manifest_sha256": sha256_file(module_dir / MANIFEST),
        "module_stage": str(metadata.get("stage", "unknown")),
    }
    if metadata.get("data_sha256"):
        tags.update(build_inputs(params, data_sha256=str(metadata["data_sha256"]),
                                 backbone_weights_sha256=str(backbone_sha)).tags())
    else:
        log.warning("%s: its metadata records no data_sha256; registered without inputs_sha256, so a retrain "
                    "cannot recognise it as up to date", module_dir)
    return _store_version(mlflow_client(cfg.tracking_uri), cfg, module_dir, alias=CHALLENGER, tags=tags,
                          params=_param_items(params, secrets), metrics=_metric_items(metadata, gate_report),
                          description=format_gate_report(gate_report), artifact_location=artifact_location)


def _store_version(client: Any, cfg: RegistryConfig, module_dir: Path, *, alias: str, tags: dict[str, str],
                   params: dict[str, str], metrics: dict[str, float], description: str,
                   artifact_location: str | None) -> RegisteredVersion:
    """Log a checked module directory to a new run of ``cfg``'s store, register it, verify the stored copy and
    point ``alias`` at it; or, with ``cfg.reuse_identical``, point ``alias`` at an identical gate-passed version.
    A failure leaves no version behind."""
    from mlflow.exceptions import MlflowException

    try:
        experiment_id = _ensure_experiment(client, cfg.experiment, artifact_location)
        _ensure_registered_model(client, cfg.model_name)
        same = (_newest_verified(client, cfg.model_name, "manifest_sha256", tags["manifest_sha256"])
                if cfg.reuse_identical else None)
        if same is not None:
            # the same module rebuilt from other inputs (say, code that changed nothing it computes): the
            # version is now known by the newest inputs, so a retrain from them finds it
            for key in INPUT_TAGS:
                if key in tags and same.tags.get(key) != tags[key]:
                    client.set_model_version_tag(cfg.model_name, same.version, key, tags[key])
            client.set_registered_model_alias(cfg.model_name, alias, same.version)
            log.info("%s is byte-identical to %s version %s (manifest sha256 %s): no new version, alias %s -> %s",
                     module_dir, cfg.model_name, same.version, tags["manifest_sha256"], alias, same.version)
            mv = client.get_model_version(cfg.model_name, same.version)
            return RegisteredVersion(cfg.model_name, int(mv.version), mv.run_id, tuple(sorted(mv.aliases)),
                                     reused=True)
        run = client.create_run(experiment_id, run_name=f"register-{cfg.model_name}",
                                tags={k: v for k, v in tags.items() if k != "gate_results"})
    except MlflowException as err:
        raise RegistryError(f"registering {module_dir}: MLflow at {redact_url(cfg.tracking_uri)} failed: "
                            f"{err.message}") from err
    run_id = run.info.run_id
    mv = None
    try:
        client.log_artifacts(run_id, str(module_dir), MODULE_ARTIFACT)
        client.log_text(run_id, tags["gate_results"], "gates.json")
        _log_batch(client, run_id, params=params, metrics=metrics, tags={"gate_results": tags["gate_results"]})
        source = f"{run.info.artifact_uri.rstrip('/')}/{MODULE_ARTIFACT}"
        mv = client.create_model_version(cfg.model_name, source, run_id=run_id, tags=tags, description=description)
        _verify_logged(client, cfg.model_name, mv.version)  # what was stored is what was checked
        client.set_registered_model_alias(cfg.model_name, alias, mv.version)
    except (MlflowException, OSError, RegistryError) as err:
        _abandon(client, run_id, cfg.model_name, mv)
        raise RegistryError(f"registering {module_dir} as {cfg.model_name} failed: {err}") from err
    except BaseException:
        _abandon(client, run_id, cfg.model_name, mv)
        raise
    client.set_terminated(run_id, "FINISHED")
    mv = client.get_model_version(cfg.model_name, mv.version)
    return RegisteredVersion(cfg.model_name, int(mv.version), run_id, tuple(sorted(mv.aliases)))


def promote(cfg: RegistryConfig, alias: str = PRODUCTION, version: int | None = None,
            from_alias: str = CHALLENGER, *, verify: bool = True) -> int:
    """Point ``alias`` at ``version`` (default: the version holding ``from_alias``) and return that version.

    Refused (RegistryError) unless the version's ``gates_passed`` tag is exactly "true"; with ``verify`` its files
    are also downloaded and checked against the module manifest first.
    """
    client = mlflow_client(cfg.tracking_uri)
    ref = ModelRef(cfg.model_name, alias=from_alias) if version is None else ModelRef(cfg.model_name, version=version)
    mv = resolve_version(client, ref)
    _require_gates_passed(mv, f"point {alias!r} at {cfg.model_name} version {mv.version}", "promoted")
    if verify:
        _verify_logged(client, cfg.model_name, mv.version)
    client.set_registered_model_alias(cfg.model_name, alias, mv.version)
    return int(mv.version)


def copy_version(src: RegistryConfig, dst: RegistryConfig, *, version: int | None = None,
                 from_alias: str = CHALLENGER, alias: str = PRODUCTION,
                 artifact_location: str | None = None) -> RegisteredVersion:
    """Copy a gate-passed version of ``src``'s model into ``dst``'s registry and point ``alias`` there at it.

    For platform teams whose production registry is another MLflow store. The version (default: the one
    holding ``from_alias``) must have ``gates_passed`` "true"; its files are downloaded and checked against
    the module manifest before anything is written to ``dst``, and the stored copy is verified again. The
    copy keeps the version's tags (gate results, git commit, data and backbone hashes) and its run's params
    and metrics, and adds ``copied_from``. With ``dst.reuse_identical`` an identical version already in
    ``dst`` gets the alias instead of a new version. ``artifact_location`` as in ``register_module``.
    """
    from mlflow.exceptions import MlflowException

    if (src.tracking_uri, src.model_name) == (dst.tracking_uri, dst.model_name):
        raise RegistryError(f"copying {src.model_name} into the registry it is in: use promote to move an alias "
                            "within one registry")
    src_client = mlflow_client(src.tracking_uri)
    ref = ModelRef(src.model_name, alias=from_alias) if version is None else ModelRef(src.model_name, version=version)
    mv = resolve_version(src_client, ref)
    _require_gates_passed(mv, f"copy {src.model_name} version {mv.version}", "copied")
    try:
        run = src_client.get_run(mv.run_id)
        params, metrics = dict(run.data.params), dict(run.data.metrics)
    except MlflowException as err:
        raise RegistryError(f"{src.model_name} version {mv.version}: could not read its run {mv.run_id}: "
                            f"{err.message}") from err
    target = Path(tempfile.mkdtemp(prefix="svgt-copy-"))
    try:
        what = f"models:/{src.model_name}/{mv.version} in {redact_url(src.tracking_uri)}"
        local = download_version(src_client, src.model_name, mv.version, target)
        verify_module_dir(local, what)
        tags = {**mv.tags, "manifest_sha256": sha256_file(local / MANIFEST), "copied_from": what}
        tags.setdefault("gate_results", "{}")
        return _store_version(mlflow_client(dst.tracking_uri), dst, local, alias=alias, tags=tags, params=params,
                              metrics=metrics, description=mv.description or "", artifact_location=artifact_location)
    finally:
        shutil.rmtree(target, ignore_errors=True)


def built_from(cfg: RegistryConfig, inputs: BuildInputs) -> RegisteredVersion | None:
    """The newest gate-passed version registered with these exact build inputs (``inputs_sha256`` tag) whose
    stored copy still verifies, or None: a retrain from the same inputs would rebuild that module."""
    from mlflow.exceptions import MlflowException

    client = mlflow_client(cfg.tracking_uri)
    try:
        mv = _newest_verified(client, cfg.model_name, "inputs_sha256", inputs.sha256)
    except MlflowException as err:
        raise RegistryError(f"looking up {cfg.model_name} in {redact_url(cfg.tracking_uri)} failed: "
                            f"{err.message}") from err
    if mv is None:
        return None
    mv = client.get_model_version(cfg.model_name, mv.version)
    return RegisteredVersion(cfg.model_name, int(mv.version), mv.run_id, tuple(sorted(mv.aliases)), reused=True)
