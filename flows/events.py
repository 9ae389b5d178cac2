"""The ``svgt.value-dataset.updated`` event: what starts an event-triggered retrain (see prefect.yaml).

Emit it whenever a value dataset changes (a new export, a new DVC version of data/values):

    python -m flows.events --dataset s3://bucket/values/wildguardmix.parquet --version 2026-11-03

The event's resource is ``svgt.dataset.<name>`` (name: the URI's file or folder name without extension,
or --name); its payload carries ``uri`` and ``version``.
"""

from __future__ import annotations

import argparse
import re
import sys
from typing import Any

from prefect.events import Event, emit_event

DATASET_UPDATED = "svgt.value-dataset.updated"
RESOURCE_PREFIX = "svgt.dataset."


def dataset_name(dataset_uri: str) -> str:
    """``s3://b/values/v3.parquet`` -> ``v3``; ``hf://allenai/wildguardmix`` -> ``wildguardmix``."""
    last = dataset_uri.rstrip("/").rsplit("/", 1)[-1].split("?", 1)[0].split(":", 1)[0]
    stem = last.split(".", 1)[0] if not last.startswith(".") else last
    name = re.sub(r"[^a-z0-9_-]+", "-", stem.lower()).strip("-")
    if not name:
        raise ValueError(f"cannot derive a dataset name from {dataset_uri!r}: pass name=")
    return name


def emit_dataset_updated(dataset_uri: str, version: str | None = None, *, name: str | None = None,
                         payload: dict[str, Any] | None = None) -> Event | None:
    """Emit ``svgt.value-dataset.updated`` for ``dataset_uri``; returns the event (None when events are off)."""
    if not dataset_uri:
        raise ValueError("dataset_uri must not be empty")
    name = name or dataset_name(dataset_uri)
    return emit_event(
        event=DATASET_UPDATED,
        resource={"prefect.resource.id": f"{RESOURCE_PREFIX}{name}", "prefect.resource.name": name},
        payload={**(payload or {}), "uri": dataset_uri, "version": version},
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flows.events", description="emit " + DATASET_UPDATED)
    parser.add_argument("--dataset", required=True, help="the dataset's URI (path, s3://..., hf://...)")
    parser.add_argument("--version", default=None, help="its new version (DVC md5, git tag, date, ...)")
    parser.add_argument("--name", default=None, help="resource name (default: derived from --dataset)")
    args = parser.parse_args(argv)
    from prefect.events.worker import EventsWorker
    from prefect.settings import PREFECT_API_URL

    if not PREFECT_API_URL.value():
        # without a server Prefect would start a throwaway one and the event (and its trigger) would be lost
        print("PREFECT_API_URL is not set: point it at the Prefect server whose deployments should react "
              "(e.g. prefect config set PREFECT_API_URL=http://127.0.0.1:4200/api)", file=sys.stderr)
        return 2
    event = emit_dataset_updated(args.dataset, args.version, name=args.name)
    EventsWorker.drain_all()  # send before the process exits
    if event is None:
        print("events are disabled for this Prefect profile: nothing sent", file=sys.stderr)
        return 1
    print(f"emitted {event.event} for {event.resource.id} (id {event.id})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
