"""Reading extracted hidden states (``svgt extract`` writes them; see ``svgt/extract.py`` for the format).

Kept apart from extraction so that what reads the states (the training stages, their Ray workers) does
not import the backbone stack (transformers) it never uses.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from svgt.core.errors import VerificationFailed
from svgt.core.io import sha256_file

__all__ = ["FORMAT", "INDEX", "ExtractedExample", "ExtractionError", "HiddenStateStore"]

INDEX = "index.json"
FORMAT = "svgt-hidden-states/1"


class ExtractionError(VerificationFailed, RuntimeError):
    """Extraction could not produce valid hidden states."""


@dataclass(frozen=True)
class ExtractedExample:
    id: str
    prompt_states: torch.Tensor  # [m, d]
    response_states: torch.Tensor  # [r, d] (r = 0 without a response)
    pooled: torch.Tensor  # [d]


class HiddenStateStore:
    """Streams extracted examples shard by shard (what the training stages read)."""

    def __init__(self, directory: str | Path, verify: bool = True):
        self.directory = Path(directory)
        try:
            self.index = json.loads((self.directory / INDEX).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ExtractionError(f"{self.directory}: no {INDEX}; run `svgt extract` first") from None
        if self.index.get("format") != FORMAT:
            raise ExtractionError(f"{self.directory / INDEX}: unknown format {self.index.get('format')!r}")
        self.verify = verify

    @property
    def layer(self) -> int:
        return int(self.index["layer"])

    @property
    def hidden_size(self) -> int:
        return int(self.index["hidden_size"])

    def ids(self, split: str) -> list[str]:
        return [i for shard in self.index["splits"][split]["shards"] for i in shard["ids"]]

    def load_shard(self, entry: dict[str, Any]) -> dict[str, torch.Tensor]:
        path = self.directory / entry["file"]
        if self.verify and sha256_file(path) != entry["sha256"]:
            raise ExtractionError(f"{path}: checksum does not match {INDEX}; rerun `svgt extract`")
        with safe_open(path, framework="pt") as f:
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is not a dict)
        for name in ("prompt_states", "response_states", "pooled"):
            if not torch.isfinite(tensors[name]).all():
                raise ExtractionError(f"{path}: tensor {name!r} contains NaN or inf")
        return tensors

    def iter_split(self, split: str) -> Iterator[ExtractedExample]:
        for entry in self.index["splits"][split]["shards"]:
            t = self.load_shard(entry)
            po, ro = t["prompt_offsets"].tolist(), t["response_offsets"].tolist()
            for i, example_id in enumerate(entry["ids"]):
                yield ExtractedExample(
                    example_id,
                    t["prompt_states"][po[i] : po[i + 1]],
                    t["response_states"][ro[i] : ro[i + 1]],
                    t["pooled"][i],
                )
