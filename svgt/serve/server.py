"""Load what a server needs (backbone, value module, baselines) and run it with uvicorn."""

from __future__ import annotations

import json
import logging
import shutil
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from svgt.backbone import load_snapshot
from svgt.methods import GuidanceMethod, load_method
from svgt.model import load_value_module
from svgt.serve.app import Limits, ServedModule, create_app
from svgt.serve.engine import Engine

log = logging.getLogger("svgt.serve")


def resolve_served_module(uri: str, tracking_uri: str | None) -> tuple[Path, str, str | None]:
    """(local directory, version, alias): a registry URI is resolved once, so the version named in every answer
    is the one downloaded, even if the alias moves meanwhile."""
    from svgt.registry.uri import (
        fetch_verified,
        mlflow_client,
        parse_models_uri,
        resolve_module_uri,
        resolve_version,
        tracking_uri_from_env,
    )

    if not uri.startswith("models:/"):
        return resolve_module_uri(uri, tracking_uri), "local", None
    ref = parse_models_uri(uri)
    client = mlflow_client(tracking_uri_from_env(tracking_uri))
    version = resolve_version(client, ref)
    local = fetch_verified(client, ref.name, version.version, uri)
    return local, str(version.version), ref.alias


def module_methods(module: Any) -> dict[str, GuidanceMethod]:
    """The models a value module serves: ``svgt``, ``svgt-inject`` and ``none`` (the bare backbone)."""
    return {"svgt": GuidanceMethod("svgt", module=module), "svgt-inject": GuidanceMethod("svgt-inject", module=module),
            "none": GuidanceMethod("none", module=module)}


def weights_sha256(directory: Path) -> str:
    return json.loads((Path(directory) / "manifest.json").read_text())["files"].get("weights.safetensors", "")


class AliasPoller:
    """Watches ``models:/NAME@ALIAS``: when the alias moves, downloads and verifies the new version and asks the
    engine to swap it in between batches. A version that fails verification (checksums, config, another
    backbone) is refused once, logged and counted; the old one keeps serving."""

    def __init__(self, engine: Engine, served: ServedModule, tracking_uri: str | None, interval: float,
                 backbone_sha256: str | None = None):
        if not served.source.startswith("models:/") or served.alias is None:
            raise ValueError(f"--poll-alias needs --module models:/NAME@ALIAS, got {served.source}")
        self.engine, self.served, self.interval = engine, served, interval
        self.tracking_uri = tracking_uri
        self.backbone_sha256 = backbone_sha256 or engine.backbone_sha256  # a new version must fit this backbone
        self.refused_versions: set[str] = set()
        self.on_swapped: Any = None  # (ServedModule) -> None, set by the app
        self.on_refused: Any = None  # (version, reason) -> None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="svgt-alias-poller", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.check()
            except Exception:  # a registry hiccup must not stop the polling (or the server)
                log.exception("polling %s failed; trying again in %.0f s", self.served.source, self.interval)

    def check(self) -> str | None:
        """One poll: the version swapped in, or None."""
        from svgt.registry.uri import (
            RegistryError,
            fetch_verified,
            mlflow_client,
            parse_models_uri,
            resolve_version,
            tracking_uri_from_env,
        )

        ref = parse_models_uri(self.served.source)
        client = mlflow_client(tracking_uri_from_env(self.tracking_uri))
        version = str(resolve_version(client, ref).version)
        if version == self.served.version or version in self.refused_versions:
            return None
        local = None
        try:
            local = fetch_verified(client, ref.name, version, self.served.source)
            module, _ = load_value_module(local, expected_backbone_sha256=self.backbone_sha256)
        except (RegistryError, ValueError) as err:  # ValueModuleError is a ValueError
            if local is not None:  # verified files for another backbone: not kept either
                shutil.rmtree(local, ignore_errors=True)
            self.refused_versions.add(version)
            if self.on_refused is not None:
                self.on_refused(version, str(err))
            return None
        baselines = {k: m for k, m in self.engine.methods.items() if m.baseline is not None}
        served = ServedModule(self.served.source, version, ref.alias, weights_sha256(local))
        self.served = served
        callback = self.on_swapped
        self.engine.swap(module_methods(module) | baselines, served,
                         on_swapped=(lambda: callback(served)) if callback is not None else None)
        return version


def build_engine(backbone_dir: Path, module_uri: str, *, tracking_uri: str | None = None,
                 baselines_dir: Path | None = None, baselines: Sequence[str] = (), max_batch_size: int = 16,
                 max_queue: int = 256) -> tuple[Engine, ServedModule]:
    """The engine with models ``svgt`` and ``svgt-inject`` (the module), ``none`` and each named baseline."""
    model, tokenizer, manifest = load_snapshot(backbone_dir)
    directory, version, alias = resolve_served_module(module_uri, tracking_uri)
    module, _ = load_value_module(directory, expected_backbone_sha256=manifest.weights_sha256)
    methods = module_methods(module)
    for name in baselines:
        methods[name] = load_method(name, baselines_dir=baselines_dir, backbone_sha256=manifest.weights_sha256)
    engine = Engine(model, tokenizer, methods, max_batch_size=max_batch_size, max_queue=max_queue)
    engine.backbone_sha256 = manifest.weights_sha256
    return engine, ServedModule(module_uri, version, alias, weights_sha256(directory))


def context_length(model: object, default: int = 2048) -> int:
    config = getattr(model, "config", None)
    return int(getattr(config, "max_position_embeddings", None) or default)


def server_app(engine: Engine, served: ServedModule, *, max_tokens: int, poll_alias: float | None = None,
               tracking_uri: str | None = None) -> Any:
    """The FastAPI app `svgt serve` runs (uvicorn here, or each Ray Serve replica: svgt.serve.ray_serve)."""
    limits = Limits(max_tokens=max_tokens, default_max_tokens=min(128, max_tokens),
                    context_length=context_length(engine.model))
    poller = AliasPoller(engine, served, tracking_uri, poll_alias) if poll_alias else None
    return create_app(engine, served, limits, poller)


def run_server(engine: Engine, served: ServedModule, *, host: str, port: int, max_tokens: int,
               poll_alias: float | None = None, tracking_uri: str | None = None) -> None:
    import uvicorn

    app = server_app(engine, served, max_tokens=max_tokens, poll_alias=poll_alias, tracking_uri=tracking_uri)
    log.info("serving %s (version %s) on http://%s:%d/v1 (models: %s)", served.source, served.label, host, port,
             ", ".join(engine.methods))
    uvicorn.run(app, host=host, port=port, log_level="info", access_log=False)
