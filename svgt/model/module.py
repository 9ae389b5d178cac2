"""ValueModule: encoder + discriminator + bridge + inject projector, with verified save/load.

A saved module is a directory written atomically (whole or not at all)::

    weights.safetensors  the state dict (safetensors only: no pickle is ever loaded)
    config.json          {"format", "config": ValueModuleConfig, "metadata": {backbone hash, data version, ...}}
    README.md            the model card (svgt.model.card), as the Hugging Face Hub shows it
    manifest.json        {"format", "files": {name: sha256}} over the files above

Loading verifies every checksum, refuses a module trained on a different backbone (by weights hash),
and loads the weights strictly, so a module never runs silently against the wrong model or config.
``ValueModule.save_pretrained`` / ``from_pretrained`` / ``push_to_hub`` are the Hugging Face-style names for the
same format; ``from_pretrained`` also takes a Hub repo id (downloaded with huggingface_hub, then verified).
"""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from svgt.core.io import MANIFEST, atomic_dir, file_checksums, save_safetensors, sha256_file, write_json_atomic
from svgt.model.bridge import InjectProjector, LatentValueBridge
from svgt.model.card import CARD, model_card
from svgt.model.config import ValueModuleConfig, ValueModuleError
from svgt.model.correction import value_correction
from svgt.model.discriminator import Discriminator
from svgt.model.encoder import ValueEncoder

if TYPE_CHECKING:
    from svgt.backbone.snapshot import BackboneManifest

FORMAT = "svgt-value-module/1"
WEIGHTS = "weights.safetensors"
CONFIG = "config.json"
BACKBONE_SHA256 = "backbone_weights_sha256"  # metadata key checked by load_value_module
STAGES = (1, 2, 3)


class ValueModule(nn.Module):
    """The trainable SVGT value module for one frozen backbone (width ``config.hidden_size``, layer l*)."""

    def __init__(self, config: ValueModuleConfig):
        super().__init__()
        self.config = config
        self.encoder = ValueEncoder(config)
        self.discriminator = Discriminator(config.d_v)
        self.bridge = LatentValueBridge(config.hidden_size, config.d_v, config.num_bridge_tokens, config.gate_init,
                                        config.bridge_retrieval, config.bridge_heads)
        self.inject = InjectProjector(config.hidden_size, config.d_v)
        self.metadata: dict[str, Any] = {}  # what the saved module records (backbone, data, training); see save

    def save_pretrained(self, directory: str | Path, metadata: dict[str, Any] | None = None,
                        data_card: dict[str, Any] | None = None) -> Path:
        """Write the module (weights, config, model card, manifest) atomically; ``metadata`` defaults to what
        it was loaded with."""
        return save_value_module(self, directory, self.metadata if metadata is None else metadata, data_card)

    @classmethod
    def from_pretrained(cls, name_or_path: str | Path, *, revision: str | None = None,
                        expected_backbone_sha256: str | None = None, device: str | torch.device = "cpu",
                        cache_dir: str | Path | None = None, token: str | None = None) -> ValueModule:
        """A saved module from a local folder or a Hugging Face Hub repo id (``org/name``, at ``revision``),
        verified like :func:`load_value_module` (checksums, backbone hash); its metadata is ``.metadata``."""
        local = Path(name_or_path)
        if not local.exists():
            local = _download_from_hub(str(name_or_path), revision, cache_dir, token)
        return load_value_module(local, expected_backbone_sha256, device)[0]

    def push_to_hub(self, repo_id: str, *, private: bool | None = None, token: str | None = None,
                    revision: str | None = None, commit_message: str = "Upload SVGT value module") -> str:
        """Upload the module (as ``save_pretrained`` writes it) to a Hub model repo, creating the repo if needed;
        returns the commit URL."""
        import tempfile

        from huggingface_hub import HfApi

        api = HfApi(token=token)
        with tempfile.TemporaryDirectory(prefix="svgt-push-") as tmp:
            folder = self.save_pretrained(Path(tmp) / "module")
            api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
            commit = api.upload_folder(repo_id=repo_id, folder_path=str(folder), repo_type="model",
                                       revision=revision, commit_message=commit_message)
        return str(getattr(commit, "commit_url", commit))

    def score(
        self,
        states: torch.Tensor,
        mask: torch.Tensor | None = None,
        prompt_states: torch.Tensor | None = None,
        prompt_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(z [B, d_v], s [B]) for token states [B, T, d]; s > 0 means harmful (a logit)."""
        z = self.encoder(states, mask, prompt_states, prompt_mask)
        return z, self.discriminator(z)

    def at_gate_budget(self, budget: float) -> ValueModule:
        """This module (sharing its weights) with the gate at its operating point for ``budget``: the share of
        validation benign prompts allowed to open it, calibrated in stage 3 (``model.gate_budgets``)."""
        points = {round(p.budget, 9): p for p in self.config.gate_points}
        point = points.get(round(budget, 9))
        if point is None:
            known = ", ".join(f"{b:g}" for b in sorted(points)) or "none (trained without model.gate_budgets)"
            raise ValueModuleError(f"no gate operating point for budget {budget:g}: this module has {known}")
        clone = copy.copy(self)  # a shallow copy: the same parameters, its own config attribute
        clone.config = dataclasses.replace(self.config, gate="fixed", gate_budget=point.budget,
                                           gate_threshold=point.threshold,
                                           gate_response_threshold=point.response_threshold)
        return clone

    def correction(self, z: torch.Tensor, create_graph: bool = False) -> torch.Tensor:
        """dz [B, d_v]: the step towards D = 0 (zero for rows judged safe)."""
        return value_correction(self.discriminator, z, self.config.correction_step, create_graph=create_graph)

    def bridge_tokens(self, h_v: torch.Tensor, z: torch.Tensor, create_graph: bool = False) -> torch.Tensor:
        """Bridge tokens [B, K, d] in ``h_v``'s dtype (ready to insert into the backbone's stream)."""
        return self.bridge(h_v, self.correction(z, create_graph)).to(h_v.dtype)

    def inject_delta(self, z: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
        """SVGT-Inject ablation: the residual-stream vector [B, d] to add instead of inserting bridge tokens."""
        delta = self.inject(self.correction(z))
        return delta if dtype is None else delta.to(dtype)

    def stage_parameters(self, stage: int) -> dict[str, list[nn.Parameter]]:
        """Named parameter groups trained in curriculum ``stage`` (everything else stays frozen).

        1: {"train": unconditional encoder + discriminator}
        2: {"new": conditional encoder path, "old": unconditional encoder + discriminator} (asymmetric lrs)
        3: {"train": bridge + inject projector}
        """
        old = self.encoder.unconditional_parameters() + list(self.discriminator.parameters())
        if stage == 1:
            return {"train": old}
        if stage == 2:
            return {"new": self.encoder.conditional_parameters(), "old": old}
        if stage == 3:
            return {"train": list(self.bridge.parameters()) + list(self.inject.parameters())}
        raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")

    def configure_stage(self, stage: int) -> dict[str, list[nn.Parameter]]:
        """Set ``requires_grad`` to exactly the stage's parameters and return its groups.

        Freezing the rest (not just leaving it out of the optimizer) stops autograd computing unused grads.
        """
        groups = self.stage_parameters(stage)
        trainable = {id(p) for params in groups.values() for p in params}
        for p in self.parameters():
            p.requires_grad_(id(p) in trainable)
        return groups


def backbone_metadata(manifest: BackboneManifest) -> dict[str, Any]:
    """The backbone facts a saved module records (``backbone_weights_sha256`` is what loading checks)."""
    return {
        "backbone_source": manifest.source,
        BACKBONE_SHA256: manifest.weights_sha256,
        "backbone_architecture": manifest.architecture,
        "backbone_num_layers": manifest.num_layers,
        "backbone_hidden_size": manifest.hidden_size,
    }


def save_value_module(module: ValueModule, directory: str | Path, metadata: dict[str, Any] | None = None,
                      data_card: dict[str, Any] | None = None) -> Path:
    """Write ``module`` to ``directory`` atomically (replacing an existing one only on success), with its model
    card (``data_card``: the dataset card's JSON, summarised in the model card when given)."""
    directory = Path(directory)
    config_text = _config_json(module.config, metadata or {})
    card = model_card(module.config, metadata or {}, data_card)
    state = {name: t.detach().to("cpu").contiguous() for name, t in module.state_dict().items()}
    with atomic_dir(directory) as tmp:
        save_safetensors(state, tmp / WEIGHTS, metadata={"format": FORMAT})
        (tmp / CONFIG).write_text(config_text, encoding="utf-8")
        (tmp / CARD).write_text(card, encoding="utf-8")
        write_json_atomic(tmp / MANIFEST, {"format": FORMAT, "files": file_checksums(tmp)})
    return directory


def _download_from_hub(repo_id: str, revision: str | None, cache_dir: str | Path | None,
                       token: str | None) -> Path:
    """The repo's module files in the local Hub cache (only what a module holds is fetched)."""
    if repo_id.count("/") != 1 or repo_id.startswith(("/", ".")):
        raise ValueModuleError(f"{repo_id}: no such folder, and not a Hub repo id (org/name)")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError

    try:
        path = snapshot_download(repo_id, revision=revision, cache_dir=cache_dir, token=token,
                                 allow_patterns=[WEIGHTS, CONFIG, CARD, MANIFEST])
    except RepositoryNotFoundError:
        raise ValueModuleError(f"{repo_id}: no such Hub repo (or no access to it)") from None
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError) as err:
        raise ValueModuleError(f"{repo_id}: could not download it from the Hub: {err}") from None
    return Path(path)


def load_value_module(
    directory: str | Path, expected_backbone_sha256: str | None = None, device: str | torch.device = "cpu"
) -> tuple[ValueModule, dict[str, Any]]:
    """(module in eval mode, metadata) from a directory written by :func:`save_value_module`.

    Raises ValueModuleError when a file is missing or does not match the manifest, the config is invalid,
    the module was trained on another backbone than ``expected_backbone_sha256``, or the weights do not fit.
    """
    directory = Path(directory)
    _verify_checksums(directory)
    payload = _read_json(directory / CONFIG)
    if payload.get("format") != FORMAT:
        raise ValueModuleError(f"{directory / CONFIG}: unknown format {payload.get('format')!r} (expected {FORMAT})")
    config = ValueModuleConfig.from_dict(payload.get("config"))
    metadata = payload.get("metadata") or {}
    if expected_backbone_sha256 is not None:
        _check_backbone(directory, metadata, expected_backbone_sha256)
    module = ValueModule(config)
    _load_weights(module, directory / WEIGHTS)
    module.metadata = metadata
    return module.to(device).eval(), metadata


def _config_json(config: ValueModuleConfig, metadata: dict[str, Any]) -> str:
    """Serialise before anything is written, so unserialisable metadata fails without a half-made directory."""
    try:
        return json.dumps({"format": FORMAT, "config": config.to_dict(), "metadata": metadata}, indent=2,
                          sort_keys=True) + "\n"
    except (TypeError, ValueError) as err:
        raise ValueModuleError(f"value module metadata is not JSON-serialisable: {err}") from None


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueModuleError(f"{path}: missing; not a saved value module") from None
    except json.JSONDecodeError as err:
        raise ValueModuleError(f"{path}: not valid JSON: {err}") from None
    if not isinstance(data, dict):
        raise ValueModuleError(f"{path}: expected a JSON object")
    return data


def _verify_checksums(directory: Path) -> None:
    """Every required file is listed in the manifest, present, and hashes to the recorded value."""
    manifest = _read_json(directory / MANIFEST)
    files = manifest.get("files")
    if manifest.get("format") != FORMAT or not isinstance(files, dict):
        raise ValueModuleError(f"{directory / MANIFEST}: not a value-module manifest (format {FORMAT})")
    for required in (WEIGHTS, CONFIG):
        if required not in files:
            raise ValueModuleError(f"{directory / MANIFEST}: does not list {required}")
    for name, expected in files.items():
        path = directory / name
        if not path.is_file():
            raise ValueModuleError(f"{path}: listed in {MANIFEST} but missing")
        actual = sha256_file(path)
        if actual != expected:
            raise ValueModuleError(
                f"{path}: checksum {actual[:12]} does not match {MANIFEST} ({str(expected)[:12]}); "
                "the file was modified or corrupted"
            )


def _check_backbone(directory: Path, metadata: dict[str, Any], expected: str) -> None:
    """Refuse a module whose recorded backbone differs from (or cannot be compared with) the loaded one."""
    recorded = metadata.get(BACKBONE_SHA256)
    if recorded is None:
        raise ValueModuleError(
            f"{directory}: records no {BACKBONE_SHA256}, so it cannot be checked against backbone {expected[:12]}"
        )
    if recorded != expected:
        raise ValueModuleError(
            f"{directory}: trained on backbone {str(recorded)[:12]} but the backbone given is {expected[:12]}; "
            "a value module only works with the exact backbone weights it was trained on"
        )


def _load_weights(module: ValueModule, path: Path) -> None:
    try:
        state = load_file(path)
    except (SafetensorError, OSError) as err:
        raise ValueModuleError(f"{path}: unreadable safetensors file: {err}") from None
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise ValueModuleError(f"{path}: weights do not fit the saved config: {err}") from None
