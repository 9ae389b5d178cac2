"""Load what a server needs (backbone, value module, baselines) and run it with uvicorn."""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

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
        download_version,
        mlflow_client,
        parse_models_uri,
        resolve_module_uri,
        resolve_version,
        tracking_uri_from_env,
        verify_module_dir,
    )

    if not uri.startswith("models:/"):
        return resolve_module_uri(uri, tracking_uri), "local", None
    ref = parse_models_uri(uri)
    client = mlflow_client(tracking_uri_from_env(tracking_uri))
    version = resolve_version(client, ref)
    target = Path(tempfile.mkdtemp(prefix="svgt-serve-"))
    try:
        local = download_version(client, ref.name, version.version, target)
        verify_module_dir(local, f"{uri} (version {version.version})")
    except BaseException:
        shutil.rmtree(target, ignore_errors=True)
        raise
    return local, str(version.version), ref.alias


def build_engine(backbone_dir: Path, module_uri: str, *, tracking_uri: str | None = None,
                 baselines_dir: Path | None = None, baselines: Sequence[str] = (), max_batch_size: int = 16,
                 max_queue: int = 256) -> tuple[Engine, ServedModule]:
    """The engine with models ``svgt`` and ``svgt-inject`` (the module), ``none`` and each named baseline."""
    model, tokenizer, manifest = load_snapshot(backbone_dir)
    directory, version, alias = resolve_served_module(module_uri, tracking_uri)
    module, _ = load_value_module(directory, expected_backbone_sha256=manifest.weights_sha256)
    sha = json.loads((Path(directory) / "manifest.json").read_text())["files"].get("weights.safetensors", "")
    methods: dict[str, GuidanceMethod] = {
        "svgt": GuidanceMethod("svgt", module=module),
        "svgt-inject": GuidanceMethod("svgt-inject", module=module),
        "none": GuidanceMethod("none", module=module),
    }
    for name in baselines:
        methods[name] = load_method(name, baselines_dir=baselines_dir, backbone_sha256=manifest.weights_sha256)
    engine = Engine(model, tokenizer, methods, max_batch_size=max_batch_size, max_queue=max_queue)
    return engine, ServedModule(module_uri, version, alias, sha)


def context_length(model: object, default: int = 2048) -> int:
    config = getattr(model, "config", None)
    return int(getattr(config, "max_position_embeddings", None) or default)


def run_server(engine: Engine, served: ServedModule, *, host: str, port: int, max_tokens: int) -> None:
    import uvicorn

    limits = Limits(max_tokens=max_tokens, default_max_tokens=min(128, max_tokens),
                    context_length=context_length(engine.model))
    app = create_app(engine, served, limits)
    log.info("serving %s (version %s) on http://%s:%d/v1 (models: %s)", served.source, served.label, host, port,
             ", ".join(engine.methods))
    uvicorn.run(app, host=host, port=port, log_level="info", access_log=False)
