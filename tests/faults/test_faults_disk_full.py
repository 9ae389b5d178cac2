"""Faults: the disk fills up while extraction writes a shard, or while a value module is saved.

Each test runs twice. ``tmpfs``: the output goes to a real, small tmpfs (where the test process may mount:
root with CAP_SYS_ADMIN, as in our containers and CI), so the write fails with the kernel's own ENOSPC
from ``svgt.core.io.save_safetensors``'s file writes; skipped, and reported, where mounting is not allowed.
``simulated``: ``save_safetensors`` is wrapped where extraction and module saving call it, to write part of
the file and raise OSError(ENOSPC) once the directory would exceed the same size limit (a mock, for machines
that cannot mount; run here too so that it cannot rot unnoticed).
"""

from __future__ import annotations

import errno
import json
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

import svgt.extract.shards
import svgt.extract.store
import svgt.model.module
from svgt.core.io import DiskFullError
from svgt.core.params import ExtractConfig
from svgt.data.schema import SPLITS
from svgt.extract.step import extract_hidden_states
from svgt.extract.store import HiddenStateStore
from svgt.model import ValueModule, ValueModuleConfig, load_value_module, save_value_module

pytestmark = pytest.mark.faults

PAGE = 4096


def used_bytes(root: Path) -> int:
    """What the files under ``root`` occupy on tmpfs (whole pages)."""
    return sum(-(-p.stat().st_size // PAGE) * PAGE for p in root.rglob("*") if p.is_file())


class SmallDisk:
    """A directory with a byte limit: a real tmpfs, or a simulated one."""

    # where the writers look ``save_safetensors`` up (they import the name): the simulation wraps it there
    WRITERS = (svgt.extract.shards, svgt.model.module)

    def __init__(self, path: Path, kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
        self.path, self.real = path, kind == "tmpfs"
        path.mkdir()
        self.limit = 64 << 20
        if self.real:
            try:
                mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(path)],
                                         capture_output=True).returncode == 0
            except OSError:  # no mount binary
                mounted = False
            if not mounted:
                pytest.skip("mounting a tmpfs is not allowed here; the simulated variant covers this machine")
        else:
            for module in self.WRITERS:
                monkeypatch.setattr(module, "save_safetensors", self._limited(module.save_safetensors))

    def resize(self, nbytes: int) -> None:
        self.limit = -(-nbytes // PAGE) * PAGE
        if self.real:
            subprocess.run(["mount", "-o", f"remount,size={self.limit}", str(self.path)], check=True)

    def _limited(self, save_safetensors):
        from safetensors.torch import save

        def wrapper(tensors, path, metadata=None):
            data = save(tensors, metadata=metadata)
            room = self.limit - used_bytes(self.path)
            if len(data) > room:
                Path(path).write_bytes(data[: max(room, 0)])  # what a full disk leaves: a truncated file
                raise OSError(errno.ENOSPC, "No space left on device (simulated)")
            return save_safetensors(tensors, path, metadata=metadata)

        return wrapper

    def close(self) -> None:
        if self.real:
            subprocess.run(["umount", "-l", str(self.path)], check=False)


@pytest.fixture(params=["tmpfs", "simulated"])
def small_disk(request, tmp_path, monkeypatch):
    disk = SmallDisk(tmp_path / "disk", request.param, monkeypatch)
    yield disk
    disk.close()


def same_shard(a: Path, b: Path) -> bool:
    """Same tensors and metadata (not bytes: safetensors writes its metadata map in no fixed order)."""
    with safe_open(a, framework="pt") as fa, safe_open(b, framework="pt") as fb:
        return (
            fa.metadata() == fb.metadata()
            and sorted(fa.keys()) == sorted(fb.keys())
            and all(
                torch.equal(fa.get_tensor(k), fb.get_tensor(k))
                for k in fa.keys()  # noqa: SIM118
            )
        )


def leftovers(root: Path) -> list[str]:
    return sorted(p.name for p in root.rglob(".*") if p.name.endswith((".tmp", ".old")))


def test_disk_full_mid_extraction_then_rerun_completes(tiny_pipeline, tmp_path, small_disk):
    cfg = ExtractConfig(layer=2, dtype="float32", shard_size=8)
    ref = tmp_path / "ref"
    extract_hidden_states(tiny_pipeline / "backbone", tiny_pipeline / "values.parquet", cfg, ref, progress=False)
    index = json.loads((ref / "index.json").read_text())
    shards = [ref / s["file"] for split in SPLITS for s in index["splits"][split]["shards"]]  # in write order
    assert len(shards) == 13 and all(s.stat().st_size > 2 * PAGE for s in shards)
    # room for three shards plus less than the fourth: the fourth write hits ENOSPC
    small_disk.resize(sum(-(-s.stat().st_size // PAGE) * PAGE for s in shards[:3]) + PAGE)

    out = small_disk.path / "hidden"
    with pytest.raises(DiskFullError) as info:
        extract_hidden_states(tiny_pipeline / "backbone", tiny_pipeline / "values.parquet", cfg, out, progress=False)
    message = str(info.value)
    assert message.startswith(f"disk full while writing {out / shards[3].name} (No space left on device")
    assert message.endswith("the partial write was removed and nothing was replaced; free some space and rerun")
    assert info.value.errno == errno.ENOSPC and info.value.filename == str(out / shards[3].name)
    # nothing partial: the three finished shards are complete (byte-identical to an unhindered run), no temp
    # file is left and no index was written, so no reader can mistake this for an extraction
    assert sorted(p.name for p in out.iterdir()) == sorted(s.name for s in shards[:3])
    assert all(same_shard(out / s.name, s) for s in shards[:3])
    assert not (out / "index.json").exists()
    with pytest.raises(svgt.extract.store.ExtractionError, match="no index.json; run `svgt extract` first"):
        HiddenStateStore(out)

    small_disk.resize(64 << 20)  # space returns: the rerun keeps the finished shards and writes the rest
    summary = extract_hidden_states(
        tiny_pipeline / "backbone", tiny_pipeline / "values.parquet", cfg, out, progress=False
    )
    assert (summary.shards_skipped, summary.shards_written) == (3, 10)
    assert all(same_shard(out / s.name, s) for s in shards)
    assert leftovers(out) == []
    assert sum(1 for _ in HiddenStateStore(out).iter_split("train")) == 54  # every checksum verifies


def test_disk_full_while_saving_a_module_keeps_the_old_one(tmp_path, small_disk):
    cfg = ValueModuleConfig(hidden_size=32, layer=2, d_v=16, encoder_heads=2, cross_attn_heads=2)
    torch.manual_seed(0)
    old, new = ValueModule(cfg), ValueModule(cfg)
    target = small_disk.path / "models" / "stage1"
    save_value_module(old, target, {"stage": 1})
    size = used_bytes(target)
    small_disk.resize(used_bytes(small_disk.path) + size // 2)  # not room for a second copy

    with pytest.raises(DiskFullError) as info:
        save_value_module(new, target, {"stage": 1, "run": "second"})
    assert str(info.value).startswith(f"disk full while writing {target} (")
    # the old module is untouched and still verifies; the half-written copy is gone
    loaded, meta = load_value_module(target)
    assert "run" not in meta
    for (k, a), b in zip(loaded.state_dict().items(), old.state_dict().values(), strict=True):
        assert torch.equal(a, b), k
    assert leftovers(small_disk.path) == []
    assert sorted(p.name for p in target.parent.iterdir()) == ["stage1"]

    small_disk.resize(64 << 20)
    save_value_module(new, target, {"stage": 1, "run": "second"})
    assert load_value_module(target)[1]["run"] == "second"
    shutil.rmtree(target)


def test_disk_full_while_writing_a_training_checkpoint(tmp_path, small_disk):
    """Training checkpoints go through safetensors' own (Rust) writer, which reports a full disk only in its
    message ("No space left on device (os error 28)"): that must still become a DiskFullError naming the file,
    with nothing partial left. Only a real full disk produces that message, so the simulated variant skips."""
    if not small_disk.real:
        pytest.skip("needs the kernel's ENOSPC inside safetensors' writer: only the tmpfs variant has it")
    from svgt.training.checkpoint import Progress, load_checkpoint, save_checkpoint

    torch.manual_seed(0)
    module = torch.nn.Linear(512, 512)
    optimizer = torch.optim.AdamW(module.parameters())
    module(torch.randn(2, 512)).sum().backward()
    optimizer.step()  # optimizer state: three tensors the size of the weights
    small_disk.resize(256 << 10)  # a quarter of a MiB; the checkpoint needs about 4 MiB
    target = small_disk.path / "ckpt"
    with pytest.raises(DiskFullError) as info:
        save_checkpoint(target, module, optimizer, Progress(step=3))
    assert str(info.value).startswith(f"disk full while writing {target / 'state.safetensors'} (")
    assert info.value.errno == errno.ENOSPC and leftovers(small_disk.path) == []
    assert not (target / "state.json").exists()  # no progress record for tensors that were never written
    small_disk.resize(64 << 20)
    save_checkpoint(target, module, optimizer, Progress(step=3))
    fresh = torch.nn.Linear(512, 512)
    assert load_checkpoint(target, fresh, torch.optim.AdamW(fresh.parameters())).step == 3
    assert torch.equal(fresh.weight, module.weight)
