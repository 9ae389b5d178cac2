"""The one interface every baseline implements, and its on-disk format.

A baseline changes generation in at most two places: the prompt's token ids (``prompt_ids``; only the
system-prompt baseline overrides the default ``encode_prompt``) and the model's computation while
``applied(model)`` is active (forward hooks or merged LoRA weights). ``applied`` is an ``ExitStack``:
whatever ``install`` registers is undone on exit, also when the body raises, so the backbone object is
unchanged for the next method.

Saved form: a directory with ``baseline.json`` (format, method, config, metadata, sha256 of every weight
file) and, for trained methods, ``weights.safetensors``. Written to a temporary directory and renamed;
``load_baseline`` re-hashes every listed file and refuses a mismatch, naming the file.
"""

from __future__ import annotations

import contextlib
import importlib
import json
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from transformers import PreTrainedModel

from svgt.backbone.text import encode_prompt
from svgt.core.errors import BadInput
from svgt.core.io import atomic_dir, save_safetensors, sha256_file

FORMAT = "svgt-baseline/1"
CONFIG = "baseline.json"
WEIGHTS = "weights.safetensors"


class BaselineError(BadInput):
    """A baseline cannot be fitted, saved, loaded or applied as asked."""


class Baseline(ABC):
    """A guidance method compared against SVGT; see the module docstring for the contract."""

    method: ClassVar[str]
    # True where the method leaves the backbone's blocks and the prompt text alone (it may edit the LM
    # head's input): its prompt pass is the plain backbone's and may be reused (PromptPassCache)
    plain_prompt_pass: ClassVar[bool] = False

    def prompt_ids(self, tokenizer: Any, prompts: Sequence[str], chat_template: bool = True) -> list[list[int]]:
        return [encode_prompt(tokenizer, p, chat_template) for p in prompts]

    @contextlib.contextmanager
    def applied(self, model: PreTrainedModel) -> Iterator[PreTrainedModel]:
        """Install the method on ``model`` for the duration of the block; always removed on exit."""
        with contextlib.ExitStack() as stack:
            self.install(model, stack)
            yield model

    @abstractmethod
    def install(self, model: PreTrainedModel, stack: contextlib.ExitStack) -> None:
        """Change ``model``; push every undo step onto ``stack`` as soon as the change is made."""

    @abstractmethod
    def config_dict(self) -> dict[str, Any]:
        """JSON-serialisable settings (everything but the tensors)."""

    def tensors(self) -> dict[str, torch.Tensor]:
        return {}

    def write_exports(self, directory: Path, metadata: dict[str, Any]) -> list[str]:
        """Write the baseline in another tool's format under ``directory`` too (e.g. a peft adapter); returns
        the files written (relative), which ``baseline.json`` then lists with their checksums."""
        return []

    @classmethod
    @abstractmethod
    def from_saved(cls, config: dict[str, Any], tensors: dict[str, torch.Tensor]) -> Baseline:
        """Rebuild from ``config_dict()`` and ``tensors()`` as saved."""

    def save(self, directory: str | Path, metadata: dict[str, Any] | None = None) -> Path:
        """Write the baseline to ``directory`` atomically (an existing one is replaced only on success)."""
        directory = Path(directory)
        tensors = {k: v.detach().to("cpu").contiguous() for k, v in self.tensors().items()}
        payload: dict[str, Any] = {
            "format": FORMAT,
            "method": self.method,
            "config": self.config_dict(),
            "metadata": metadata or {},
        }
        try:
            json.dumps(payload)  # fail before anything is written
        except (TypeError, ValueError) as err:
            raise BaselineError(f"{self.method}: config or metadata is not JSON-serialisable: {err}") from None
        with atomic_dir(directory) as tmp:
            files = {}
            if tensors:
                save_safetensors(tensors, tmp / WEIGHTS, metadata={"format": FORMAT, "method": self.method})
                files[WEIGHTS] = sha256_file(tmp / WEIGHTS)
            for name in self.write_exports(tmp, payload["metadata"]):
                files[name] = sha256_file(tmp / name)
            payload["files"] = files
            (tmp / CONFIG).write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        return directory


def baseline_classes() -> dict[str, type[Baseline]]:
    """method name -> class; imported lazily because every method module imports this one."""
    return importlib.import_module("svgt.baselines.registry").BASELINES


def read_config(directory: Path) -> dict[str, Any]:
    path = directory / CONFIG
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BaselineError(f"{path}: missing; not a saved baseline") from None
    except json.JSONDecodeError as err:
        raise BaselineError(f"{path}: not valid JSON: {err}") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise BaselineError(f"{path}: not a baseline config (format {FORMAT})")
    if not isinstance(payload.get("files"), dict) or not isinstance(payload.get("config"), dict):
        raise BaselineError(f"{path}: 'files' and 'config' must be JSON objects")
    return payload


def verify_files(directory: Path, files: dict[str, str]) -> None:
    for name, expected in files.items():
        path = directory / name
        if not path.is_file():
            raise BaselineError(f"{path}: listed in {CONFIG} but missing")
        actual = sha256_file(path)
        if actual != expected:
            raise BaselineError(
                f"{path}: checksum {actual[:12]} does not match {CONFIG} ({str(expected)[:12]}); "
                "the file was modified or corrupted"
            )


def load_baseline(directory: str | Path, expected_backbone_sha256: str | None = None) -> Baseline:
    """A baseline saved by ``Baseline.save``, after checking every weight file against its sha256.

    With ``expected_backbone_sha256`` a baseline fitted on other backbone weights is refused (its hooks
    and adapters are only meaningful for the weights it was fitted on); one that records no backbone is
    refused too, since it cannot be checked.
    """
    directory = Path(directory)
    payload = read_config(directory)
    if expected_backbone_sha256 is not None:
        recorded = (payload.get("metadata") or {}).get("backbone_sha256")
        if recorded != expected_backbone_sha256:
            raise BaselineError(
                f"{directory / CONFIG}: fitted on backbone weights {str(recorded)[:12]}, but the backbone in use "
                f"has {expected_backbone_sha256[:12]}; refit it with `svgt baselines` for this backbone"
            )
    classes = baseline_classes()
    method = payload.get("method")
    if method not in classes:
        raise BaselineError(f"{directory / CONFIG}: unknown method {method!r} (known: {', '.join(classes)})")
    files = payload["files"]
    verify_files(directory, files)
    tensors: dict[str, torch.Tensor] = {}
    if WEIGHTS in files:
        try:
            tensors = load_file(directory / WEIGHTS)
        except (SafetensorError, OSError) as err:
            raise BaselineError(f"{directory / WEIGHTS}: unreadable safetensors file: {err}") from None
    try:
        return classes[method].from_saved(payload["config"], tensors)
    except (KeyError, TypeError, ValueError) as err:
        raise BaselineError(f"{directory}: saved {method} baseline does not fit its config: {err}") from None
