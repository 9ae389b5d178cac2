"""`svgt serve` on Ray Serve: the same FastAPI app in every replica, each with its own backbone and engine.

``svgt serve --ray-replicas N`` deploys it on the local Ray (started for it) or on the cluster at
``--ray-address`` / ``RAY_ADDRESS``; with ``--ray-max-replicas M`` Ray Serve autoscales between N and M replicas
on the requests each replica holds (queued or decoding), aiming at ``--max-batch-size`` per replica, so a
replica is added when batches would otherwise wait. Ray Serve's proxy listens on ``--host``/``--port`` and
spreads requests over the replicas; every answer names the replica (``x-svgt-replica``) and the module version
that decoded it. In Kubernetes the same application runs as a KubeRay ``RayService``
(``infra/kuberay/rayservice.yaml``).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger("svgt.serve")

APP_NAME = "svgt"


@dataclass(frozen=True)
class ReplicaSpec:
    """What each replica loads; paths are absolute (replicas do not share the driver's working directory)."""

    backbone_dir: str
    module_uri: str
    tracking_uri: str | None = None
    baselines_dir: str | None = None
    baselines: tuple[str, ...] = ()
    max_batch_size: int = 16
    max_queue: int = 256
    max_tokens: int = 512
    poll_alias: float | None = None
    threads: int = 1  # torch threads per replica: replicas sharing a machine must not oversubscribe its cores


def absolute_tracking_uri(uri: str | None) -> str | None:
    """``sqlite:///mlflow.db`` relative to this directory made absolute, so replicas elsewhere find the store."""
    if uri and uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):
        return "sqlite:///" + str(Path(uri[len("sqlite:///"):]).resolve())
    return uri


def replica_app(spec: ReplicaSpec) -> Any:
    """The FastAPI app of one replica (Ray Serve builds it in the replica's process)."""
    import torch

    from svgt.serve.server import build_engine, server_app

    torch.set_num_threads(spec.threads)
    engine, served = build_engine(Path(spec.backbone_dir), spec.module_uri, tracking_uri=spec.tracking_uri,
                                  baselines_dir=Path(spec.baselines_dir) if spec.baselines_dir else None,
                                  baselines=spec.baselines, max_batch_size=spec.max_batch_size,
                                  max_queue=spec.max_queue)
    return server_app(engine, served, max_tokens=spec.max_tokens, poll_alias=spec.poll_alias,
                      tracking_uri=spec.tracking_uri)


def serve_application(spec: ReplicaSpec, *, replicas: int = 1, max_replicas: int | None = None,
                      cpus_per_replica: float = 1.0) -> Any:
    """The Ray Serve application: ``replicas`` replicas, or autoscaling up to ``max_replicas``."""
    from ray import serve

    options: dict[str, Any] = {
        "ray_actor_options": {"num_cpus": cpus_per_replica},
        # what a replica accepts at once: its engine's queue plus a batch; beyond it the proxy holds requests back
        "max_ongoing_requests": spec.max_queue + spec.max_batch_size,
    }
    if max_replicas is not None and max_replicas > replicas:
        options["autoscaling_config"] = {"min_replicas": replicas, "max_replicas": max_replicas,
                                         "target_ongoing_requests": spec.max_batch_size}
    else:
        options["num_replicas"] = replicas
    def build() -> Any:  # a plain function: Ray Serve calls it in each replica (a partial would pass as an ASGI app)
        return replica_app(spec)

    ingress = serve.ingress(build)
    server = ingress(type("SvgtServer", (), {"__doc__": "svgt serve in a Ray Serve replica"}))
    return serve.deployment(name=APP_NAME, **options)(server).bind()


def deploy(spec: ReplicaSpec, *, host: str, port: int, replicas: int = 1, max_replicas: int | None = None,
           cpus_per_replica: float = 1.0, address: str | None = None, blocking: bool = True) -> None:
    """Start Ray Serve (on the local Ray or the cluster at ``address``/RAY_ADDRESS) and run the application."""
    import ray
    from ray import serve

    if not ray.is_initialized():
        address = address or os.environ.get("RAY_ADDRESS")
        ray.init(address=address, num_cpus=None if address else max(os.cpu_count() or 1,
                                                                     int(replicas * cpus_per_replica) + 1))
    serve.start(http_options={"host": host, "port": port})
    log.info("deploying %s on Ray Serve: %s replica(s)%s, http://%s:%d/v1", spec.module_uri, replicas,
             f" (autoscaling to {max_replicas})" if max_replicas and max_replicas > replicas else "", host, port)
    serve.run(serve_application(spec, replicas=replicas, max_replicas=max_replicas,
                                cpus_per_replica=cpus_per_replica),
              name=APP_NAME, route_prefix="/", blocking=blocking)


def build_app(args: dict[str, Any]) -> Any:
    """An application builder for Ray Serve's config files and CLI (a KubeRay ``RayService``'s
    ``import_path: svgt.serve.ray_serve:build_app`` with ``args``, or ``serve run svgt.serve.ray_serve:build_app
    backbone_dir=... module_uri=...``). Keys: the :class:`ReplicaSpec` fields, plus ``replicas``,
    ``max_replicas`` and ``cpus_per_replica``."""
    args = dict(args)
    placement = {k: args.pop(k) for k in ("replicas", "max_replicas", "cpus_per_replica") if k in args}
    known = set(ReplicaSpec.__dataclass_fields__)
    unknown = sorted(set(args) - known)
    if unknown or "backbone_dir" not in args or "module_uri" not in args:
        raise ValueError(f"svgt Ray Serve app: unknown args {unknown} (known: {sorted(known)}, plus replicas, "
                         "max_replicas, cpus_per_replica); backbone_dir and module_uri are required")
    if "baselines" in args:
        args["baselines"] = tuple(args["baselines"])
    spec = ReplicaSpec(**args)
    cpus = float(placement.get("cpus_per_replica", spec.threads))
    return serve_application(spec, replicas=int(placement.get("replicas", 1)),
                             max_replicas=placement.get("max_replicas"), cpus_per_replica=cpus)
