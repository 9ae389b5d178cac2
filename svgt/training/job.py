"""What one curriculum stage needs, as plain data (it crosses into Ray workers as a dict)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from typing import Any

from svgt.core.params import RAY_PLACEMENT_KEYS, ModelConfig, TrainConfig, from_dict


@dataclass(frozen=True)
class StageJob:
    stage: int  # 1, 2 or 3
    hidden_dir: str  # extracted hidden states (index.json + shards)
    data_path: str  # canonical Parquet (labels, splits, texts)
    backbone_dir: str  # backbone snapshot (stage 3 runs its upper blocks; metadata for all)
    init_module: str | None  # stage 2 starts from stage 1's module, stage 3 from stage 2's
    model: dict[str, Any]
    train: dict[str, Any]

    @property
    def model_config(self) -> ModelConfig:
        return from_dict(ModelConfig, self.model, "model")

    @property
    def train_config(self) -> TrainConfig:
        return from_dict(TrainConfig, self.train, "train")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def result_params(self) -> dict[str, Any]:
        """The params that decide what the stage computes (no paths, no Ray placement)."""
        ray = {k: v for k, v in self.train["ray"].items() if k not in RAY_PLACEMENT_KEYS}
        return {"model": self.model, "train": {**self.train, "ray": ray}}

    def run_name(self, fingerprint: str) -> str:
        """Stable per (stage, input contents, result params): a rerun of the same job resumes Ray's run state,
        and the name (recorded in the module) does not depend on where the inputs or the run state live."""
        blob = json.dumps({"stage": self.stage, **self.result_params(), "inputs": fingerprint}, sort_keys=True,
                          default=str)
        return f"svgt-stage{self.stage}-{hashlib.sha256(blob.encode()).hexdigest()[:12]}"


def job_from_params(stage: int, model: ModelConfig, train: TrainConfig, *, hidden_dir: str, data_path: str,
                    backbone_dir: str, init_module: str | None) -> StageJob:
    return StageJob(stage, hidden_dir, data_path, backbone_dir, init_module, asdict(model), asdict(train))
