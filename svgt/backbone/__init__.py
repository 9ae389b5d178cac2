"""Backbones: resolve any source to a verified snapshot; architecture access via LayerAdapter."""

from svgt.backbone.adapter import LayerAdapter, LayerError, default_layer
from svgt.backbone.snapshot import BackboneManifest, build_snapshot, load_snapshot
from svgt.backbone.sources import BackboneError, parse_source

__all__ = [
    "BackboneError",
    "BackboneManifest",
    "LayerAdapter",
    "LayerError",
    "build_snapshot",
    "default_layer",
    "load_snapshot",
    "parse_source",
]
