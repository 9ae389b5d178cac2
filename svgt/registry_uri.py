"""Where a value module lives: a local directory, an fsspec URL, or (later) a registry URI."""

from __future__ import annotations

import tempfile
from pathlib import Path


def resolve_module_uri(uri: str) -> Path:
    """A local directory holding the module's files (remote ones are downloaded to a temp dir)."""
    if uri.startswith("models:/"):
        raise ValueError(f"{uri}: MLflow registry URIs need the registry (not configured in this build); "
                         "pass the module directory instead")
    if "://" in uri:
        import fsspec

        fs, root = fsspec.core.url_to_fs(uri)
        target = Path(tempfile.mkdtemp(prefix="svgt-module-"))
        for remote in fs.find(root):
            rel = remote[len(root.rstrip("/")) + 1:]
            (target / rel).parent.mkdir(parents=True, exist_ok=True)
            fs.get(remote, str(target / rel))
        return target
    path = Path(uri)
    if not path.is_dir():
        raise ValueError(f"--module {uri}: no such directory")
    return path
