"""Atomic writes, checksums and manifests shared by every artifact writer."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from svgt.core.errors import SvgtError

MANIFEST = "manifest.json"
_DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
# writers implemented outside Python (safetensors' Rust core) report the OS error in their message only
_DISK_FULL_TEXT = (f"(os error {errno.ENOSPC})", f"(os error {errno.EDQUOT})", "No space left on device")


class DiskFullError(SvgtError, OSError):
    """The disk (or quota) filled up while writing an artifact; the partial write was removed."""

    def __str__(self) -> str:  # the message alone (OSError would prefix "[Errno 28]" once errno is set)
        return str(self.args[0]) if self.args else super().__str__()


def disk_full_error(target: Path, err: BaseException) -> DiskFullError:
    """A DiskFullError naming ``target`` and the space left, for an error that :func:`is_disk_full`."""
    code = getattr(err, "errno", None) or (errno.EDQUOT if f"(os error {errno.EDQUOT})" in str(err) else errno.ENOSPC)
    try:
        free = f"{shutil.disk_usage(target.parent).free / 2**20:.1f} MiB free"
    except OSError:
        free = "free space unknown"
    full = DiskFullError(
        f"disk full while writing {target} ({os.strerror(code)}; {free} on that filesystem): "
        "the partial write was removed and nothing was replaced; free some space and rerun"
    )
    full.errno, full.filename = code, str(target)
    return full


def is_disk_full(err: BaseException) -> bool:
    """``err`` says the disk or quota is full (an OSError's errno, or a native writer's message)."""
    if isinstance(err, OSError):
        return isinstance(err, DiskFullError) or err.errno in _DISK_FULL_ERRNOS
    return any(text in str(err) for text in _DISK_FULL_TEXT)


def sha256_file(path: str | Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


@contextlib.contextmanager
def atomic_path(target: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; rename it over ``target`` only on success.

    Readers therefore see either the old file or the complete new one, never a partial write. A full disk
    raises :class:`DiskFullError` naming ``target`` (the temporary file is removed).
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o644)  # mkstemp creates 0600; artifacts are meant to be shared
        os.replace(tmp_path, target)
    except Exception as err:
        if is_disk_full(err) and not isinstance(err, DiskFullError):
            raise disk_full_error(target, err) from err
        raise
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_text_atomic(target: str | Path, text: str) -> None:
    with atomic_path(target) as tmp:
        tmp.write_text(text, encoding="utf-8")


def json_safe(data: Any) -> Any:
    """``data`` with every NaN / inf float replaced by None: JSON has no NaN and strict readers refuse it."""
    if isinstance(data, float) and not math.isfinite(data):
        return None
    if isinstance(data, dict):
        return {k: json_safe(v) for k, v in data.items()}
    if isinstance(data, list | tuple):
        return [json_safe(v) for v in data]
    return data


def write_json_atomic(target: str | Path, data: Any) -> None:
    """Strict JSON (not-measured numbers become null), written atomically."""
    text = json.dumps(json_safe(data), indent=2, sort_keys=True, default=str, allow_nan=False)
    write_text_atomic(target, text + "\n")


def without_timings(data: Any) -> Any:
    """``data`` without its ``*_seconds`` entries, at any depth: they belong in the metrics, not in an
    artifact, whose bytes should depend only on its inputs (DVC compares outputs by their bytes)."""
    if isinstance(data, dict):
        return {k: without_timings(v) for k, v in data.items() if not k.endswith("_seconds")}
    if isinstance(data, list):
        return [without_timings(v) for v in data]
    return data


def save_safetensors(tensors: dict[str, Any], path: str | Path, metadata: dict[str, str] | None = None) -> None:
    """``safetensors.torch.save_file``, but the same tensors and metadata always give the same bytes.

    safetensors serialises ``__metadata__`` from a hash map whose order changes from process to process,
    so two saves of identical content differed and DVC saw a changed output. The header is rewritten with
    the metadata keys sorted (tensor entries and their data offsets unchanged) and padded to 8 bytes.
    Not atomic by itself: callers write into an ``atomic_path`` / ``atomic_dir``.
    """
    from safetensors.torch import save

    blob = save(tensors, metadata=metadata)
    size = int.from_bytes(blob[:8], "little")
    header = json.loads(blob[8 : 8 + size])
    if "__metadata__" in header:
        header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(len(text).to_bytes(8, "little"))
        f.write(text)
        f.write(memoryview(blob)[8 + size :])


@contextlib.contextmanager
def atomic_dir(target: str | Path) -> Iterator[Path]:
    """Build a directory under a temporary name and swap it in whole on success.

    A full disk raises :class:`DiskFullError` naming ``target``; the partial directory is removed and an
    existing ``target`` is left as it was.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        try:
            yield tmp
        except Exception as err:
            # name the artifact the caller asked for, not a file inside the temporary directory
            if is_disk_full(err):
                raise disk_full_error(target, err) from err
            raise
        os.chmod(tmp, 0o755)
        if target.exists():
            old = target.with_name(f".{target.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def file_checksums(directory: str | Path, exclude: tuple[str, ...] = (MANIFEST,)) -> dict[str, str]:
    directory = Path(directory)
    return {
        str(p.relative_to(directory)): sha256_file(p)
        for p in sorted(directory.rglob("*"))
        if p.is_file() and p.name not in exclude and not p.name.startswith(".")
    }
