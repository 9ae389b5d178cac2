"""Every artifact directory carries checksums that its reader verifies; one changed byte is refused.

* backbone snapshot: ``manifest.json`` lists the sha256 of every file (weights, config, tokenizer, chat
  template), checked by ``load_snapshot`` (before, only the weights were: a swapped chat template or tokenizer
  went unnoticed);
* extracted hidden states: ``index.json`` holds each shard's sha256, checked by ``HiddenStateStore``;
* value module: ``manifest.json`` over weights and config, checked by ``load_value_module``;
* registry downloads (``models:/``) are verified the same way after download: see
  test_registry.py::test_tampered_stored_artifact_is_refused.
"""

from __future__ import annotations

import json
import shutil

import pytest

from svgt.backbone import build_snapshot, load_snapshot
from svgt.backbone.sources import BackboneError
from svgt.core.params import BackboneConfig
from svgt.extract.store import ExtractionError, HiddenStateStore
from svgt.model import ValueModule, ValueModuleConfig, ValueModuleError, load_value_module, save_value_module
from tests.tiny import save_tiny_model_dir

pytestmark = pytest.mark.faults


def flip_last_byte(path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.fixture(scope="module")
def snapshot(tmp_path_factory):
    root = tmp_path_factory.mktemp("manifest-snapshot")
    build_snapshot(
        BackboneConfig(source=str(save_tiny_model_dir(root / "src")), cache_dir=str(root / "c")), root / "snap"
    )
    return root / "snap"


@pytest.mark.parametrize("name", ["tokenizer.json", "chat_template.jinja", "config.json", "tokenizer_config.json"])
def test_backbone_snapshot_lists_every_file_and_refuses_a_changed_one(snapshot, tmp_path, name):
    manifest = json.loads((snapshot / "manifest.json").read_text())
    on_disk = sorted(p.name for p in snapshot.iterdir() if p.name != "manifest.json")
    assert sorted(manifest["files"]) == on_disk and manifest["files"]["model.safetensors"] == manifest["weights_sha256"]
    copy = tmp_path / "snap"
    shutil.copytree(snapshot, copy)
    load_snapshot(copy)  # intact: loads
    flip_last_byte(copy / name)
    with pytest.raises(BackboneError) as info:
        load_snapshot(copy)
    assert str(info.value) == f"{copy / name}: sha256 does not match manifest.json; the snapshot was modified"


def test_backbone_snapshot_missing_file_is_refused(snapshot, tmp_path):
    copy = tmp_path / "snap"
    shutil.copytree(snapshot, copy)
    (copy / "tokenizer.json").unlink()
    with pytest.raises(BackboneError) as info:
        load_snapshot(copy)
    assert (
        str(info.value) == f"{copy / 'tokenizer.json'}: listed in manifest.json but missing; the snapshot is incomplete"
    )


def test_backbone_snapshot_without_file_list_still_verifies_its_weights(snapshot, tmp_path):
    """Snapshots written before the file list existed load, with the weights hash still checked."""
    copy = tmp_path / "snap"
    shutil.copytree(snapshot, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    del manifest["files"]
    (copy / "manifest.json").write_text(json.dumps(manifest))
    load_snapshot(copy)
    flip_last_byte(copy / "model.safetensors")
    with pytest.raises(BackboneError, match="does not match the manifest"):
        load_snapshot(copy)


def test_extraction_shards_and_modules_are_verified(tiny_pipeline, tmp_path):
    hidden = tmp_path / "hidden"
    shutil.copytree(tiny_pipeline / "hidden", hidden)
    index = json.loads((hidden / "index.json").read_text())
    assert all(len(s["sha256"]) == 64 for split in index["splits"].values() for s in split["shards"])
    shard = hidden / index["splits"]["train"]["shards"][0]["file"]
    flip_last_byte(shard)
    with pytest.raises(ExtractionError) as info:
        list(HiddenStateStore(hidden).iter_split("train"))
    assert str(info.value) == f"{shard}: checksum does not match index.json; rerun `svgt extract`"

    module_dir = tmp_path / "module"
    save_value_module(
        ValueModule(ValueModuleConfig(hidden_size=32, layer=2, d_v=16, encoder_heads=2, cross_attn_heads=2)),
        module_dir,
        {"stage": 1},
    )
    assert sorted(json.loads((module_dir / "manifest.json").read_text())["files"]) == [
        "README.md",
        "config.json",
        "weights.safetensors",
    ]
    flip_last_byte(module_dir / "weights.safetensors")
    with pytest.raises(ValueModuleError, match=r"weights\.safetensors: checksum"):
        load_value_module(module_dir)
