"""svgt.core.io: deterministic safetensors files (DVC compares outputs by their bytes)."""

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save

from svgt.core.io import save_safetensors


def test_save_safetensors_writes_the_same_bytes_for_the_same_content(tmp_path):
    tensors = {"b": torch.arange(6, dtype=torch.float16).reshape(2, 3), "a": torch.ones(5, dtype=torch.long),
               "c": torch.randn(3, 4)}
    keys = ["fingerprint", "split", "layer", "prompt_tokens", "ümlaut", "z", "a"]
    metadata = {key: str(i) for i, key in enumerate(keys)}
    # plain safetensors orders the metadata from a randomly seeded hash map: the bytes vary between saves
    assert len({save(tensors, metadata=metadata) for _ in range(8)}) > 1
    paths = [tmp_path / f"{i}.safetensors" for i in range(8)]
    for path in paths:
        save_safetensors(tensors, path, metadata=metadata)
    assert len({p.read_bytes() for p in paths}) == 1
    assert (int.from_bytes(paths[0].read_bytes()[:8], "little") + 8) % 8 == 0  # data stays 8-byte aligned
    loaded = load_file(paths[0])
    for key, value in tensors.items():
        assert loaded[key].dtype == value.dtype and torch.equal(loaded[key], value)
    with safe_open(paths[0], framework="pt") as f:
        assert f.metadata() == metadata
    save_safetensors(tensors, tmp_path / "bare.safetensors")  # no metadata at all
    assert torch.equal(load_file(tmp_path / "bare.safetensors")["c"], tensors["c"])
