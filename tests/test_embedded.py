"""Integration: the embedded default backbone end to end (wheel GGUF -> snapshot -> extraction)."""

import pytest
import torch
from tiny import canonical_frame

from svgt.backbone import load_snapshot
from svgt.backbone.text import encode_prompt
from svgt.config import ExtractConfig
from svgt.extract import HiddenStateStore, extract_hidden_states

pytestmark = pytest.mark.integration


def test_embedded_snapshot_manifest(embedded_snapshot):
    _, manifest = embedded_snapshot
    assert manifest.architecture == "LlamaForCausalLM"
    assert (manifest.num_layers, manifest.hidden_size, manifest.vocab_size) == (30, 576, 49152)
    assert manifest.num_parameters == 134_515_008
    assert manifest.has_chat_template and len(manifest.weights_sha256) == 64


def test_embedded_backbone_answers_sensibly(embedded_snapshot):
    model, tok, _ = load_snapshot(embedded_snapshot[0])
    ids = torch.tensor([encode_prompt(tok, "What is the capital of France?")])
    out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=8, do_sample=False)
    assert "Paris" in tok.decode(out[0, ids.shape[1]:])


def test_embedded_extraction_default_layer(tmp_path, embedded_snapshot):
    snap, _ = embedded_snapshot
    data = tmp_path / "values.parquet"
    canonical_frame(6).to_parquet(data)
    summary = extract_hidden_states(snap, data, ExtractConfig(dtype="float32"), tmp_path / "h", progress=False)
    assert summary.layer == 15  # 30 layers > 20 -> middle layer
    store = HiddenStateStore(tmp_path / "h")
    ex = next(store.iter_split("train"))
    model, tok, _ = load_snapshot(snap)
    prompt = canonical_frame(6).set_index("id").loc[ex.id, "prompt"]
    ids = torch.tensor([encode_prompt(tok, prompt)])
    with torch.no_grad():
        ref = model(input_ids=ids, output_hidden_states=True).hidden_states[15][0]
    torch.testing.assert_close(ex.prompt_states, ref, atol=1e-4, rtol=0)
