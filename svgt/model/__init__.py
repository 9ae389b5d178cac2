"""SVGT value-module networks: encoder, discriminator, value correction, latent value bridge, save/load."""

from svgt.model.bridge import (
    InjectProjector,
    LatentValueBridge,
    manifold_penalties,
    manifold_regulariser,
    momentum_update,
)
from svgt.model.config import ValueModuleConfig, ValueModuleError
from svgt.model.correction import value_correction
from svgt.model.discriminator import Discriminator
from svgt.model.encoder import AttentionPooling, LastTokenPooling, ValueEncoder
from svgt.model.module import (
    BACKBONE_SHA256,
    ValueModule,
    backbone_metadata,
    load_value_module,
    save_value_module,
)

__all__ = [
    "BACKBONE_SHA256",
    "AttentionPooling",
    "Discriminator",
    "InjectProjector",
    "LastTokenPooling",
    "LatentValueBridge",
    "ValueEncoder",
    "ValueModule",
    "ValueModuleConfig",
    "ValueModuleError",
    "backbone_metadata",
    "load_value_module",
    "manifold_penalties",
    "manifold_regulariser",
    "momentum_update",
    "save_value_module",
    "value_correction",
]
