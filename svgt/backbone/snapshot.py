"""A backbone snapshot: safetensors weights + tokenizer + manifest, built once, verified on load."""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from svgt.backbone.adapter import LayerAdapter
from svgt.backbone.sources import DTYPES, BackboneError, load_from_source
from svgt.core.io import MANIFEST, atomic_dir, file_checksums, sha256_file, write_json_atomic
from svgt.core.params import BackboneConfig

log = logging.getLogger(__name__)

WEIGHTS = "model.safetensors"


@dataclass(frozen=True)
class BackboneManifest:
    source: str
    weights_sha256: str
    architecture: str
    model_type: str
    num_layers: int
    hidden_size: int
    vocab_size: int
    num_parameters: int
    dtype: str
    has_chat_template: bool
    transformers_version: str
    # sha256 of every file of the snapshot (tokenizer, chat template, config...), not only the weights;
    # empty in snapshots written before it existed (then only the weights are verified)
    files: dict[str, str] = field(default_factory=dict)

    @classmethod
    def read(cls, directory: str | Path) -> BackboneManifest:
        path = Path(directory) / MANIFEST
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise BackboneError(
                f"{directory}: not a backbone snapshot (no {MANIFEST}); run `svgt backbone` first"
            ) from None
        data.pop("created_unix", None)  # written by snapshots before 2026-12: a timestamp made rebuilds differ
        return cls(**data)


def build_snapshot(
    cfg: BackboneConfig, out_dir: str | Path, storage_options: dict[str, Any] | None = None
) -> BackboneManifest:
    """Resolve ``cfg.source`` and write a verified snapshot to ``out_dir`` (atomically, whole)."""
    t0 = time.perf_counter()
    model, tokenizer = load_from_source(
        cfg.source,
        cfg.cache_dir,
        revision=cfg.revision,
        trust_remote_code=cfg.trust_remote_code,
        storage_options=storage_options,
    )
    model = model.to(DTYPES[cfg.dtype])
    adapter = LayerAdapter(model)
    adapter.decoder_layers()  # fail now, not at extraction time, if the structure is unusable
    model.config.architectures = [type(model).__name__]
    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(tmp, safe_serialization=True, max_shard_size="100GB")
        tokenizer.save_pretrained(tmp)
        weights = sorted(tmp.glob("*.safetensors"))
        if [w.name for w in weights] != [WEIGHTS]:
            raise BackboneError(f"unexpected weight files written: {[w.name for w in weights]}")
        manifest = BackboneManifest(
            source=cfg.source,
            weights_sha256=sha256_file(tmp / WEIGHTS),
            architecture=type(model).__name__,
            model_type=str(model.config.model_type),
            num_layers=adapter.num_layers,
            hidden_size=adapter.hidden_size,
            vocab_size=int(model.config.vocab_size),
            num_parameters=sum(p.numel() for p in model.parameters()),
            dtype=cfg.dtype,
            has_chat_template=bool(getattr(tokenizer, "chat_template", None)),
            transformers_version=transformers.__version__,
            files=file_checksums(tmp),
        )
        write_json_atomic(tmp / MANIFEST, asdict(manifest))
    log.info(
        "backbone snapshot %s: %s, %d layers, width %d, %.1fM params (%.1fs)",
        out_dir,
        manifest.architecture,
        manifest.num_layers,
        manifest.hidden_size,
        manifest.num_parameters / 1e6,
        time.perf_counter() - t0,
    )
    return manifest


def load_snapshot(
    directory: str | Path, dtype: str | None = None, device: str = "cpu", verify: bool = True
) -> tuple[PreTrainedModel, Any, BackboneManifest]:
    """Load a snapshot written by :func:`build_snapshot`, refusing weights whose hash changed."""
    directory = Path(directory)
    manifest = BackboneManifest.read(directory)
    if verify:
        actual = sha256_file(directory / WEIGHTS)
        if actual != manifest.weights_sha256:
            raise BackboneError(
                f"{directory / WEIGHTS}: sha256 {actual[:12]}... does not match the "
                f"manifest ({manifest.weights_sha256[:12]}...); the snapshot was modified"
            )
        for name, expected in manifest.files.items():
            path = directory / name
            if not path.is_file():
                raise BackboneError(f"{path}: listed in {MANIFEST} but missing; the snapshot is incomplete")
            if name != WEIGHTS and sha256_file(path) != expected:  # the weights were hashed just above
                raise BackboneError(f"{path}: sha256 does not match {MANIFEST}; the snapshot was modified")
    model = AutoModelForCausalLM.from_pretrained(
        directory, dtype=DTYPES[dtype or manifest.dtype], use_safetensors=True, trust_remote_code=False
    )
    model.to(device).eval()
    model.requires_grad_(False)
    tokenizer = AutoTokenizer.from_pretrained(directory)
    return model, tokenizer, manifest
