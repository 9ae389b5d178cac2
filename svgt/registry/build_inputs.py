"""What a value module is built from, as one hash: data, backbone weights, params and code.

Registration tags each version with it (``inputs_sha256``). A scheduled retrain computes it from the freshly
ingested data and resolved backbone before any training, and stops when a gate-passed version was built from
exactly the same inputs: training is byte-deterministic, so it would only rebuild that very module.

The backbone counts by its weights' sha256 (as in the module metadata); the params by every section except
``registry`` (where a module is registered does not change what is built); the code by the source of the
``svgt`` package plus the torch and transformers versions, whose kernels decide the numerics.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import svgt

UNHASHED_PARAMS = ("registry",)


@dataclass(frozen=True)
class BuildInputs:
    data_sha256: str
    backbone_weights_sha256: str
    params_sha256: str
    code_sha256: str

    @property
    def sha256(self) -> str:
        return hashlib.sha256(json.dumps(dataclasses.asdict(self), sort_keys=True).encode()).hexdigest()

    def tags(self) -> dict[str, str]:
        """Registry tags: the combined hash, and the parts a person compares when it differs."""
        return {"inputs_sha256": self.sha256, "params_sha256": self.params_sha256, "code_sha256": self.code_sha256}


def params_sha256(params: dict[str, Any]) -> str:
    """sha256 of the params (``dataclasses.asdict(Params)``) minus ``UNHASHED_PARAMS``, key order ignored."""
    kept = {k: v for k, v in params.items() if k not in UNHASHED_PARAMS}
    return hashlib.sha256(json.dumps(kept, sort_keys=True, default=str).encode()).hexdigest()


def code_sha256() -> str:
    """sha256 over the ``svgt`` package's Python sources (relative path and bytes) and the torch and
    transformers versions."""
    import torch
    import transformers

    root = Path(svgt.__file__).resolve().parent
    digest = hashlib.sha256(f"torch {torch.__version__}\ntransformers {transformers.__version__}\n".encode())
    for path in sorted(root.rglob("*.py")):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def build_inputs(params: dict[str, Any], *, data_sha256: str, backbone_weights_sha256: str) -> BuildInputs:
    return BuildInputs(data_sha256=data_sha256, backbone_weights_sha256=backbone_weights_sha256,
                       params_sha256=params_sha256(params), code_sha256=code_sha256())


def checkout_build_inputs(params: dict[str, Any], data_path: str | Path, backbone_dir: str | Path) -> BuildInputs:
    """The build inputs of a checkout about to train: its canonical data file and backbone snapshot."""
    from svgt.core.io import sha256_file

    manifest = Path(backbone_dir) / "manifest.json"
    try:
        backbone_sha = json.loads(manifest.read_text(encoding="utf-8"))["weights_sha256"]
    except (OSError, ValueError, KeyError) as err:
        raise ValueError(f"{manifest}: cannot read the backbone's weights_sha256 ({err}); build the backbone "
                         "snapshot first (`svgt backbone`)") from err
    try:
        data_sha = sha256_file(data_path)
    except OSError as err:
        raise ValueError(f"{data_path}: cannot hash the canonical data ({err}); run `svgt ingest` first") from err
    return build_inputs(params, data_sha256=data_sha, backbone_weights_sha256=backbone_sha)
