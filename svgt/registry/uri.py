"""Where a value module lives: a local directory, an fsspec URL, or an MLflow registry URI.

    /path/to/module            used in place
    s3://bucket/prefix         (any fsspec URL) downloaded to a fresh temp dir
    models:/NAME@ALIAS         the version an alias points at, downloaded from MLflow and checksum-verified
    models:/NAME/VERSION       one version, downloaded from MLflow and checksum-verified

MLflow is imported only for ``models:/`` URIs, so local use does not pay for it.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from svgt.core.errors import SvgtError
from svgt.core.urls import has_url_credentials, redact_url

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
MODULE_ARTIFACT = "value_module"  # where svgt.registry.versions logs the module inside a run
_ALIAS = re.compile(r"^models:/(?P<name>[^@]+)@(?P<alias>[^/@]+)/?$")
_VERSION = re.compile(r"^models:/(?P<name>.+)/(?P<version>[0-9]+)/?$")


class RegistryError(SvgtError, RuntimeError):
    """A registry operation was refused or failed (unknown model/alias, gates not passed, bad checksums)."""


@dataclass(frozen=True)
class ModelRef:
    name: str
    alias: str | None = None
    version: int | None = None

    def __str__(self) -> str:
        return f"models:/{self.name}@{self.alias}" if self.alias else f"models:/{self.name}/{self.version}"


def parse_models_uri(uri: str) -> ModelRef:
    """``models:/NAME@ALIAS`` or ``models:/NAME/VERSION`` (stages and ``latest`` are not supported)."""
    if m := _ALIAS.match(uri):
        return ModelRef(m["name"], alias=m["alias"])
    if m := _VERSION.match(uri):
        return ModelRef(m["name"], version=int(m["version"]))
    raise RegistryError(f"{uri}: expected models:/NAME@ALIAS or models:/NAME/VERSION "
                        "(stage names such as /Production are deprecated in MLflow and not supported)")


def tracking_uri_from_env(tracking_uri: str | None = None) -> str:
    return tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


def mlflow_client(tracking_uri: str) -> Any:
    """A client bound to ``tracking_uri`` for tracking *and* registry (never the process-global URIs)."""
    from mlflow import MlflowClient

    if has_url_credentials(tracking_uri):
        raise RegistryError(f"tracking URI {redact_url(tracking_uri)}: credentials inside the URI are refused; set "
                            "MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD (or MLFLOW_TRACKING_TOKEN) instead")
    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


def resolve_version(client: Any, ref: ModelRef) -> Any:
    """The ModelVersion ``ref`` names, with clear errors for an unknown model, alias or version."""
    from mlflow.exceptions import MlflowException

    try:
        registered = client.get_registered_model(ref.name)
    except MlflowException as err:
        if err.error_code == "RESOURCE_DOES_NOT_EXIST":
            where = redact_url(client.tracking_uri)
            raise RegistryError(f"{ref}: no registered model named {ref.name!r} in {where}") from None
        raise RegistryError(f"{ref}: registry lookup failed: {err.message}") from err  # keeps transient causes
    try:
        if ref.alias is not None:
            return client.get_model_version_by_alias(ref.name, ref.alias)
        return client.get_model_version(ref.name, str(ref.version))
    except MlflowException as err:
        # a missing alias is INVALID_PARAMETER_VALUE, a missing version RESOURCE_DOES_NOT_EXIST (sqlite store)
        if err.error_code not in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
            raise RegistryError(f"{ref}: registry lookup failed: {err.message}") from err
        if ref.alias is not None:
            known = ", ".join(f"{a}->v{v}" for a, v in sorted(registered.aliases.items())) or "none"
            raise RegistryError(f"{ref}: model {ref.name!r} has no alias {ref.alias!r} (aliases: {known})") from None
        raise RegistryError(f"{ref}: model {ref.name!r} has no version {ref.version}") from None


def download_version(client: Any, name: str, version: int | str, target: Path) -> Path:
    """Copy one model version's files into ``target`` and return the module directory inside it."""
    import mlflow.artifacts
    from mlflow.exceptions import MlflowException

    try:
        source = client.get_model_version_download_uri(name, str(version))
        local = mlflow.artifacts.download_artifacts(artifact_uri=source, dst_path=str(target),
                                                    tracking_uri=client.tracking_uri)
    except (MlflowException, OSError) as err:
        raise RegistryError(f"models:/{name}/{version}: could not download its files: {err}") from err
    return Path(local)


def verify_module_dir(directory: Path, what: str) -> dict[str, Any]:
    """Checksums (and config/weights fit) of a downloaded module; its metadata on success."""
    from svgt.model import ValueModuleError, load_value_module

    try:
        _, metadata = load_value_module(directory)
    except ValueModuleError as err:
        raise RegistryError(f"{what}: the downloaded value module failed verification: {err}") from None
    return metadata


def resolve_module_uri(uri: str, tracking_uri: str | None = None) -> Path:
    """A local directory holding the module's files (remote ones are downloaded to a temp dir)."""
    if uri.startswith("models:/"):
        return _resolve_registry(uri, tracking_uri_from_env(tracking_uri))
    if "://" in uri:
        import fsspec

        if has_url_credentials(uri):
            raise ValueError(f"--module {redact_url(uri)}: credentials inside the URL are refused; "
                             "use the environment or a profile (e.g. AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY)")
        fs, root = fsspec.core.url_to_fs(uri)
        target = Path(tempfile.mkdtemp(prefix="svgt-module-"))
        for remote in fs.find(root):
            rel = remote[len(root.rstrip("/")) + 1:]
            (target / rel).parent.mkdir(parents=True, exist_ok=True)
            fs.get(remote, str(target / rel))
        return target
    path = Path(uri)
    if not path.is_dir():
        raise ValueError(f"--module {uri}: no such directory")
    return path


def fetch_verified(client: Any, name: str, version: int | str, what: str) -> Path:
    """Download one model version into a new temp dir and verify it; on any failure nothing is left behind."""
    target = Path(tempfile.mkdtemp(prefix="svgt-module-"))
    try:
        local = download_version(client, name, version, target)
        verify_module_dir(local, f"{what} (version {version})")
    except BaseException:
        shutil.rmtree(target, ignore_errors=True)  # never leave a tampered copy behind for someone to use
        raise
    return local


def _resolve_registry(uri: str, tracking_uri: str) -> Path:
    ref = parse_models_uri(uri)
    client = mlflow_client(tracking_uri)
    return fetch_verified(client, ref.name, resolve_version(client, ref).version, uri)
