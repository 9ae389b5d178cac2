"""Integration: the embedded default backbone end to end (wheel GGUF -> snapshot -> extraction)."""

import pytest
import torch

from svgt.backbone import load_snapshot
from svgt.backbone.text import encode_prompt
from svgt.core.params import ExtractConfig
from svgt.extract.step import extract_hidden_states
from svgt.extract.store import HiddenStateStore
from tests.tiny import canonical_frame

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


def test_closed_gate_bridge_barely_changes_the_backbone(embedded_snapshot):
    """A bridge whose gate is closed inserts K copies of h_v: the next-token distribution barely moves."""
    from svgt.backbone.runner import BlockRunner
    from svgt.decoding.guidance import generate_with_module
    from svgt.decoding.loop import guided_generate
    from svgt.model import ValueModule, ValueModuleConfig

    model, tok, _ = load_snapshot(embedded_snapshot[0])
    runner = BlockRunner(model)
    prompts = ["What is the capital of France?", "Give me three tips for sleeping better.", "How do I boil an egg?"]
    plain = guided_generate(model, tok, prompts, max_new_tokens=1, return_scores=True, runner=runner)
    module = ValueModule(ValueModuleConfig(hidden_size=576, layer=15, gate_init=-30.0)).eval()
    guided = generate_with_module(model, tok, prompts, module=module, method="svgt", runner=runner, max_new_tokens=1,
                                  return_scores=True)
    for i in range(len(prompts)):
        p = torch.log_softmax(plain.logits[i][0].float(), -1)
        q = torch.log_softmax(guided.logits[i][0].float(), -1)
        kl = float((p.exp() * (p - q)).sum())
        assert 0.0 < kl < 0.25  # measured 0.07-0.13 nats on these prompts (2026-11)
    # a bridge off the backbone's scale (plain LayerNorm, |B| ~ sqrt(d) instead of |h_v| ~ 137) moves it far more
    with torch.no_grad():
        module.bridge.anchor_norm = lambda x, h_v: module.bridge.norm(x)  # type: ignore[method-assign]
    off = generate_with_module(model, tok, prompts[:1], module=module, method="svgt", runner=runner, max_new_tokens=1,
                               return_scores=True)
    p = torch.log_softmax(plain.logits[0][0].float(), -1)
    q = torch.log_softmax(off.logits[0][0].float(), -1)
    assert float((p.exp() * (p - q)).sum()) > 0.5
