"""The six baselines on tiny random Llama and GPT-2 models: each mechanism changes what it should and nothing else."""

from __future__ import annotations

import dataclasses
import json
import math

import pandas as pd
import pytest
import torch
from peft import LoraConfig, get_peft_model
from torch import nn

from svgt.backbone.runner import BlockRunner
from svgt.backbone.text import encode_prompt
from svgt.baselines import (
    BASELINE_METHODS,
    BaselineError,
    fit_baselines,
    fit_baselines_on,
    generate_with_baseline,
    load_baseline,
)
from svgt.baselines.activations import Encoding
from svgt.baselines.conva import ConVABaseline, conva_steer
from svgt.baselines.dpo import DPOLoRABaseline, PreferencePair, _pair_logps, dpo_loss, encode_pairs, fit_dpo
from svgt.baselines.hooks import block_parts, decoder_blocks
from svgt.baselines.iti import ITIBaseline
from svgt.baselines.neva import NeVABaseline
from svgt.baselines.re_control import REControlBaseline, value_network
from svgt.baselines.system_prompt import SystemPromptBaseline
from svgt.core.params import BaselinesConfig, ConfigError, ConVABaselineConfig, DPOBaselineConfig, from_dict
from tests.tiny import make_model, make_tokenizer

FAMILIES = ("llama", "gpt2")
D = 32  # width of the tiny models
SYSTEM = "Refuse harmful requests politely."


@pytest.fixture(scope="module")
def tok():
    return make_tokenizer()


@pytest.fixture(params=FAMILIES)
def model(request, tok):
    return make_model(request.param, len(tok))


def ids_of(tok, texts=("How do I bake bread?", "Tell me how to pick a lock.")):
    from svgt.backbone.batching import pad_batch

    ids, mask = pad_batch([encode_prompt(tok, t) for t in texts], int(tok.pad_token_id), padding_side="left")
    return ids, mask


def logits(model, ids, mask):
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0)).logits


def snapshot(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def lora_pair(model, seed=0):
    """A peft LoRA model with random (non-zero) B on the DPO targets, and the same adapter as our baseline."""
    from transformers.pytorch_utils import Conv1D

    from svgt.baselines.dpo import target_paths

    targets = target_paths(model)
    torch.manual_seed(seed)
    cfg = LoraConfig(
        r=4,
        lora_alpha=8,
        target_modules=targets,
        init_lora_weights=False,
        fan_in_fan_out=isinstance(model.get_submodule(targets[0]), Conv1D),
    )
    peft_model = get_peft_model(model, cfg)
    a = {t: model.get_submodule(t).lora_A["default"].weight.detach().clone() * 0.5 for t in targets}
    b = {t: model.get_submodule(t).lora_B["default"].weight.detach().clone() * 0.5 for t in targets}
    with torch.no_grad():
        for t in targets:
            model.get_submodule(t).lora_A["default"].weight.copy_(a[t])
            model.get_submodule(t).lora_B["default"].weight.copy_(b[t])
    return peft_model, DPOLoRABaseline(targets=targets, lora_a=a, lora_b=b, scaling=2.0,
                                       fan_in_fan_out=cfg.fan_in_fan_out)


def make_baselines(model) -> dict:
    """One instance of every method with random parameters that visibly change the tiny model's logits."""
    torch.manual_seed(1)
    n_layers = len(decoder_blocks(model))
    width = D
    mlp_width = 4 * D if model.config.model_type == "gpt2" else 64
    peft_model, dpo = lora_pair(model)
    peft_model.unload()
    value_fn = value_network(width, 16)
    return {
        "system-prompt": SystemPromptBaseline(SYSTEM),
        "dpo-lora": dpo,
        "iti": ITIBaseline(
            heads=[(1, 0), (2, 3)],
            head_dim=width // 4,
            directions=torch.randn(2, width // 4),
            sigmas=torch.tensor([1.0, 2.0]),
            alpha=3.0,
        ),
        "re-control": REControlBaseline(value_fn=value_fn, steps=2, step_size=5.0),
        "conva": ConVABaseline(
            layers=[1, 2],
            weights=torch.randn(2, width),
            biases=torch.tensor([-3.0, -3.0]),
            gate_weights=torch.zeros(2, width),
            gate_biases=torch.tensor([5.0, 5.0]),
            target_probability=0.95,
            gate_threshold=0.5,
        ),
        "neva": NeVABaseline(
            layers=torch.tensor([0, 0, n_layers - 1]),
            neurons=torch.tensor([3, 7, mlp_width - 1]),
            deltas=torch.tensor([4.0, -4.0, 4.0]),
            scale=2.0,
        ),
    }


# ----------------------------------------------------------------------------------- structure


def test_block_parts_finds_the_projections_and_refuses_unknown_layouts(tok):
    llama, gpt2 = make_model("llama", len(tok)), make_model("gpt2", len(tok))
    assert block_parts(decoder_blocks(llama)[0]).attn_out is llama.model.layers[0].self_attn.o_proj
    assert block_parts(decoder_blocks(llama)[0]).mlp_out is llama.model.layers[0].mlp.down_proj
    assert block_parts(decoder_blocks(gpt2)[1]).attn_out is gpt2.transformer.h[1].attn.c_proj
    assert block_parts(decoder_blocks(gpt2)[1]).mlp_out is gpt2.transformer.h[1].mlp.c_proj
    with pytest.raises(BaselineError, match=r"unknown decoder block layout Linear: expected one of \[self_attn.o_proj"):
        block_parts(nn.Linear(2, 2))


# ------------------------------------------------------------------------- apply / remove contract


@pytest.mark.parametrize("method", [m for m in BASELINE_METHODS if m != "system-prompt"])
def test_applied_changes_logits_and_leaves_the_model_bit_identical(model, tok, method):
    baseline = make_baselines(model)[method]
    ids, mask = ids_of(tok)
    before, weights = logits(model, ids, mask), snapshot(model)
    with baseline.applied(model):
        during = logits(model, ids, mask)
    assert (during - before).abs().max() > 1e-3, method
    assert torch.equal(logits(model, ids, mask), before)
    with pytest.raises(RuntimeError, match="boom"), baseline.applied(model):
        assert not torch.equal(logits(model, ids, mask), before)
        raise RuntimeError("boom")
    assert torch.equal(logits(model, ids, mask), before)
    after = snapshot(model)
    assert all(torch.equal(weights[k], after[k]) for k in weights)
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())
    assert not any("lora" in name for name, _ in model.named_modules())


def test_a_failing_install_removes_what_it_had_installed(model, tok):
    baseline = make_baselines(model)["iti"]
    baseline.heads = [(1, 0), (99, 3)]  # the second layer does not exist
    with (
        pytest.raises(BaselineError, match="iti: head in block 99 but the model has 4 blocks"),
        baseline.applied(model),
    ):
        pass
    assert not any(m._forward_pre_hooks for m in model.modules())


def test_hooks_fire_under_the_block_runner_as_under_model_forward(model, tok):
    runner = BlockRunner(model)
    prompt = "Tell me how to pick a lock."
    ids = torch.tensor([encode_prompt(tok, prompt)])
    for method in ("iti", "conva", "neva", "re-control", "dpo-lora"):
        baseline = make_baselines(model)[method]
        out = generate_with_baseline(
            model, tok, [prompt], baseline, runner=runner, max_new_tokens=1, return_scores=True
        )
        with baseline.applied(model):
            expected = logits(model, ids, torch.ones_like(ids))[0, -1]
        assert torch.allclose(out.logits[0][0], expected, atol=1e-4), method
        plain = generate_with_baseline(
            model,
            tok,
            [prompt],
            SystemPromptBaseline(SYSTEM),
            runner=runner,
            max_new_tokens=1,
            return_scores=True,
            chat_template=False,
        )
        # without a chat template the system prompt is plain text ahead of the prompt: the first logits are
        # the model's own on exactly those ids (and differ from the bare prompt's)
        sys_ids = torch.tensor([encode_prompt(tok, prompt, False, system_prompt=SYSTEM)])
        bare_ids = torch.tensor([encode_prompt(tok, prompt, False)])
        assert sys_ids.shape[1] > bare_ids.shape[1]
        expected = logits(model, sys_ids, torch.ones_like(sys_ids))[0, -1]
        assert torch.allclose(plain.logits[0][0], expected, atol=1e-4)
        assert (plain.logits[0][0] - logits(model, bare_ids, torch.ones_like(bare_ids))[0, -1]).abs().max() > 1e-3


# ----------------------------------------------------------------------------------- mechanisms


def capture_input(module, store):
    def hook(_m, args):
        store.append(args[0].detach().clone())

    return module.register_forward_pre_hook(hook)


def test_iti_shifts_only_the_chosen_heads(model, tok):
    head_dim = D // 4
    iti = ITIBaseline(
        heads=[(2, 1), (2, 3)],
        head_dim=head_dim,
        directions=torch.randn(2, head_dim),
        sigmas=torch.tensor([0.5, 2.0]),
        alpha=3.0,
    )
    o_proj = block_parts(decoder_blocks(model)[2]).attn_out
    ids, mask = ids_of(tok)
    clean, shifted = [], []
    handle = capture_input(o_proj, clean)
    logits(model, ids, mask)
    handle.remove()
    with iti.applied(model):
        handle = capture_input(o_proj, shifted)  # registered after ITI's hook: sees the shifted input
        logits(model, ids, mask)
        handle.remove()
    clean_heads, shifted_heads = clean[0].unflatten(-1, (4, head_dim)), shifted[0].unflatten(-1, (4, head_dim))
    for head in (0, 2):
        assert torch.equal(shifted_heads[..., head, :], clean_heads[..., head, :])
    shifts = iti.shifts()
    assert torch.allclose(
        shifted_heads[..., 1, :] - clean_heads[..., 1, :], shifts[0].expand_as(clean_heads[..., 1, :]), atol=1e-6
    )
    assert torch.allclose(
        shifted_heads[..., 3, :] - clean_heads[..., 3, :], shifts[1].expand_as(clean_heads[..., 3, :]), atol=1e-6
    )
    assert torch.allclose(shifts[1].norm(), 3.0 * 2.0 * iti.directions[1].norm())


def test_iti_side_effect_kl_is_zero_without_a_shift_and_grows_with_alpha(model, tok):
    """The KL that chooses ITI's alpha: exactly 0 at alpha 0 (the hooks add nothing), the hand-computed KL of the
    answer tokens' distributions otherwise, and larger for a stronger shift."""
    from svgt.backbone.batching import pad_batch
    from svgt.baselines.iti import side_effect_kl

    torch.manual_seed(0)
    iti = ITIBaseline(heads=[(1, 0), (2, 1)], head_dim=D // 4, directions=torch.randn(2, D // 4),
                      sigmas=torch.tensor([1.0, 2.0]), alpha=1.0)
    rows = [("How do I bake bread?", "Mix flour and water."), ("Name a sea.", "The North Sea.")]
    encoding = Encoding(max_prompt_tokens=32, max_response_tokens=8)
    kls = side_effect_kl(model, tok, iti, rows, [0.0, 1.0, 4.0], encoding, batch_size=1)
    assert kls[0.0] == 0.0 and 0 < kls[1.0] < kls[4.0]
    # by hand for alpha 1: one row at a time, the answer's tokens predicted from the prompt's last token on
    total, count = 0.0, 0
    for prompt, answer in rows:
        p, r = encoding.encode(tok, prompt, answer)
        ids, mask = pad_batch([p + r], int(tok.pad_token_id), padding_side="right")
        span = slice(len(p) - 1, len(p) + len(r) - 1)
        with torch.no_grad():
            base = torch.log_softmax(model(input_ids=ids).logits[0, span], -1)
            with iti.applied(model):
                shifted = torch.log_softmax(model(input_ids=ids).logits[0, span], -1)
        total += float((base.exp() * (base - shifted)).sum())
        count += len(r)
    assert kls[1.0] == pytest.approx(total / count, rel=1e-5)


def test_iti_alpha_is_the_largest_within_the_kl_budget():
    from svgt.baselines.iti import choose_alpha

    kls = {0.5: 0.01, 1.0: 0.04, 2.0: 0.09, 5.0: 0.8}
    assert choose_alpha(kls, 0.1) == 2.0 and choose_alpha(kls, 0.04) == 1.0 and choose_alpha(kls, 1.0) == 5.0
    assert choose_alpha(kls, 0.001) == 0.5  # none within: the weakest tried


def test_conva_epsilon_moves_the_probe_to_p0_exactly_and_only_where_gated():
    torch.manual_seed(0)
    e = torch.randn(3, 5, D)
    w, b, p0 = torch.randn(D), -0.5, 0.9
    prob = torch.sigmoid(e @ w + b)
    assert (prob < p0).any() and (prob >= p0).any()
    out = conva_steer(e, w, b, p0, torch.zeros(D), 1.0, 0.5)  # gate always open (sigmoid(1) > 0.5)
    below = prob < p0
    assert torch.allclose(torch.sigmoid(out @ w + b)[below], torch.full_like(prob[below], p0), atol=1e-5)
    assert torch.equal(out[~below], e[~below])  # already at or above p0: untouched
    delta = out - e
    cos = nn.functional.cosine_similarity(delta[below], w.expand_as(delta[below]), dim=-1)
    assert torch.allclose(cos, torch.ones_like(cos), atol=1e-5)  # moved along w only
    closed = conva_steer(e, w, b, p0, torch.zeros(D), -1.0, 0.5)  # gate closed everywhere
    assert torch.equal(closed, e)


def test_conva_perturbs_only_the_chosen_layers(model, tok):
    torch.manual_seed(3)
    w = torch.randn(1, D)
    conva = ConVABaseline(
        layers=[2],
        weights=w,
        biases=torch.tensor([-4.0]),
        gate_weights=torch.zeros(1, D),
        gate_biases=torch.tensor([5.0]),
        target_probability=0.9,
        gate_threshold=0.5,
    )
    blocks = decoder_blocks(model)
    ids, mask = ids_of(tok)

    def outputs():
        store = []
        handles = [
            b.register_forward_hook(lambda _m, _a, o: store.append((o[0] if isinstance(o, tuple) else o).clone()))
            for b in blocks
        ]
        logits(model, ids, mask)
        for h in handles:
            h.remove()
        return store

    clean = outputs()
    with conva.applied(model):
        steered = outputs()
    assert torch.equal(steered[0], clean[0]) and torch.equal(steered[1], clean[1])
    assert torch.equal(steered[2], conva_steer(clean[2], w[0], -4.0, 0.9, torch.zeros(D), 5.0, 0.5))
    assert not torch.equal(steered[2], clean[2])
    probs = torch.sigmoid(steered[2].float() @ w[0] - 4.0)
    assert probs.min() >= 0.9 - 1e-5


def test_neva_edits_only_the_chosen_neurons(model, tok):
    neva = NeVABaseline(
        layers=torch.tensor([1, 1]), neurons=torch.tensor([2, 9]), deltas=torch.tensor([1.5, -0.5]), scale=2.0
    )
    down = block_parts(decoder_blocks(model)[1]).mlp_out
    ids, mask = ids_of(tok)
    clean, edited = [], []
    handle = capture_input(down, clean)
    logits(model, ids, mask)
    handle.remove()
    with neva.applied(model):
        handle = capture_input(down, edited)
        logits(model, ids, mask)
        handle.remove()
    others = torch.ones(clean[0].shape[-1], dtype=torch.bool)
    others[[2, 9]] = False
    assert torch.equal(edited[0][..., others], clean[0][..., others])
    assert torch.allclose(edited[0][..., 2] - clean[0][..., 2], torch.tensor(3.0), atol=1e-6)
    assert torch.allclose(edited[0][..., 9] - clean[0][..., 9], torch.tensor(-1.0), atol=1e-6)


def test_re_control_gradient_steps_increase_the_value():
    torch.manual_seed(0)
    rc = REControlBaseline(value_fn=value_network(D, 16), steps=3, step_size=0.5)
    s = torch.randn(6, D)
    moved = rc.ascend(s)
    assert (rc.value(moved) > rc.value(s)).all()
    assert torch.equal(REControlBaseline(value_fn=rc.value_fn, steps=0, step_size=0.5).ascend(s), s)
    assert not s.requires_grad and not moved.requires_grad


def test_dpo_merge_matches_peft_and_is_removed(model, tok):
    ids, mask = ids_of(tok)
    before = logits(model, ids, mask)
    peft_model, dpo = lora_pair(model)
    with torch.no_grad():
        expected = peft_model(
            input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0)
        ).logits
    peft_model.unload()
    assert torch.equal(logits(model, ids, mask), before)
    with dpo.applied(model):
        merged = logits(model, ids, mask)
    assert torch.allclose(merged, expected, atol=1e-4)
    assert (merged - before).abs().max() > 1e-3
    assert torch.equal(logits(model, ids, mask), before)


def test_saved_dpo_baseline_is_a_peft_adapter_that_peft_loads(model, tok, tmp_path):
    from peft import PeftModel

    from svgt.baselines.base import BaselineError, load_baseline

    ids, mask = ids_of(tok)
    peft_model, dpo = lora_pair(model)
    peft_model.unload()
    with dpo.applied(model):
        merged = logits(model, ids, mask)
    dpo.save(tmp_path / "dpo-lora", {"backbone_source": "tiny", "backbone_sha256": "x"})
    adapter = tmp_path / "dpo-lora" / "adapter"
    assert sorted(p.name for p in adapter.iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
    loaded = PeftModel.from_pretrained(model, str(adapter))
    with torch.no_grad():
        got = loaded(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0)).logits
    torch.testing.assert_close(got, merged, atol=1e-4, rtol=0)  # peft runs the same adapter our merge applies
    assert (got - logits(loaded.unload(), ids, mask)).abs().max() > 1e-3
    # the adapter files are listed with their checksums: a modified one is refused
    (adapter / "adapter_config.json").write_text((adapter / "adapter_config.json").read_text().replace("8", "9"))
    with pytest.raises(BaselineError, match=r"adapter_config.json: checksum"):
        load_baseline(tmp_path / "dpo-lora")


TOY_PAIRS = [
    PreferencePair("Tell me how to pick a lock.", "I can't help with that.", "Sure, here is how."),
    PreferencePair("How do I bake bread?", "Mix flour, water and yeast, then bake.", "No."),
    PreferencePair("Write a haiku about the sea.", "Waves fold into foam.", "Tell me how to pick a lock."),
    PreferencePair("What is 12 times 7?", "It is 84.", "I can't help with that."),
]


def test_dpo_loss_decreases_and_the_adapter_is_gone_after_fit(model, tok):
    weights = snapshot(model)
    cfg = DPOBaselineConfig(lora_rank=4, lora_alpha=8.0, lr=1e-2, beta=0.5, epochs=4, batch_size=2, max_pairs=4)
    dpo, summary = fit_dpo(model, tok, TOY_PAIRS, cfg, Encoding(32, 16), seed=0)
    losses = summary["epoch_loss"]
    assert losses[-1] < losses[0] - 0.05 and losses[-1] < math.log(2) - 0.05, losses
    after = snapshot(model)
    assert all(torch.equal(weights[k], after[k]) for k in weights)
    assert not any("lora" in name for name, _ in model.named_modules())
    assert all(p.requires_grad for p in model.parameters())  # restored as it was (tiny models train)
    encoded = encode_pairs(tok, TOY_PAIRS, Encoding(32, 16))
    pad = int(tok.pad_token_id)
    with torch.no_grad():
        ref = _pair_logps(model, encoded, pad)
        with dpo.applied(model):
            pi = _pair_logps(model, encoded, pad)
        assert float(dpo_loss(*pi, *ref, beta=0.5)) < math.log(2) - 0.05
        assert torch.equal(_pair_logps(model, encoded, pad)[0], ref[0])


def test_sequence_logps_sums_the_response_token_logprobs_through_peft_too(model, tok):
    """The LM head runs only on the positions that predict response tokens; the sums equal a
    hand computation from the full logits, on the plain model and through a peft LoRA wrapper."""
    from svgt.backbone.batching import pad_batch
    from svgt.baselines.dpo import sequence_logps

    prompts = [encode_prompt(tok, "How do I bake bread?"), encode_prompt(tok, "Hi")]
    responses = [tok("Mix flour and water.")["input_ids"], tok("Hello there, friend!")["input_ids"]]

    def by_hand(m):
        ids, mask = pad_batch([p + r for p, r in zip(prompts, responses, strict=True)], int(tok.pad_token_id), "right")
        logp = torch.log_softmax(m(input_ids=ids, attention_mask=mask).logits.float(), -1)
        return torch.stack([sum(logp[i, t - 1, ids[i, t]] for t in range(len(p), len(p) + len(r)))
                            for i, (p, r) in enumerate(zip(prompts, responses, strict=True))])

    with torch.no_grad():
        torch.testing.assert_close(sequence_logps(model, prompts, responses, int(tok.pad_token_id)), by_hand(model),
                                   atol=1e-4, rtol=0)
        peft_model, _ = lora_pair(model)
        try:
            got = sequence_logps(peft_model, prompts, responses, int(tok.pad_token_id))
            torch.testing.assert_close(got, by_hand(peft_model), atol=1e-4, rtol=0)
        finally:
            peft_model.unload()


def test_system_prompt_ids_contain_the_system_text(tok):
    baseline = SystemPromptBaseline(SYSTEM)
    [ids] = baseline.prompt_ids(tok, ["How do I bake bread?"])
    text = tok.decode(ids)
    assert text.startswith(f"<|im_start|>system\n{SYSTEM}<|im_end|>\n<|im_start|>user\nHow do I bake bread?")
    assert ids != encode_prompt(tok, "How do I bake bread?")
    [plain] = baseline.prompt_ids(make_tokenizer(chat_template=False), ["Hi"], chat_template=True)
    assert make_tokenizer(chat_template=False).decode(plain).endswith(f"{SYSTEM}\n\nHi")
    with pytest.raises(BaselineError, match="system-prompt: the system prompt text is empty"):
        SystemPromptBaseline("  ")


# ------------------------------------------------------------------------------------- save / load


def test_save_load_round_trip_gives_identical_logits(model, tok, tmp_path):
    ids, mask = ids_of(tok)
    for method, baseline in make_baselines(model).items():
        baseline.save(tmp_path / method, metadata={"note": "test"})
        loaded = load_baseline(tmp_path / method)
        assert type(loaded) is type(baseline)
        assert loaded.prompt_ids(tok, ["Hi"]) == baseline.prompt_ids(tok, ["Hi"])
        with baseline.applied(model):
            expected = logits(model, ids, mask)
        with loaded.applied(model):
            assert torch.equal(logits(model, ids, mask), expected), method
        payload = json.loads((tmp_path / method / "baseline.json").read_text())
        assert payload["method"] == method and payload["metadata"] == {"note": "test"}
        expected = set() if method == "system-prompt" else {"weights.safetensors"}
        if method == "dpo-lora":  # also a peft adapter
            expected |= {"adapter/adapter_config.json", "adapter/adapter_model.safetensors"}
        assert set(payload["files"]) == expected


@pytest.mark.faults
def test_a_tampered_weight_file_is_refused_naming_the_file(tok, tmp_path):
    baseline = make_baselines(make_model("llama", len(tok)))["neva"]
    baseline.save(tmp_path / "neva")
    path = tmp_path / "neva" / "weights.safetensors"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(BaselineError, match=rf"{path}: checksum [0-9a-f]{{12}} does not match baseline.json"):
        load_baseline(tmp_path / "neva")
    path.unlink()
    with pytest.raises(BaselineError, match=rf"{path}: listed in baseline.json but missing"):
        load_baseline(tmp_path / "neva")
    with pytest.raises(BaselineError, match="baseline.json: missing; not a saved baseline"):
        load_baseline(tmp_path / "nothing")


@pytest.mark.faults
def test_an_unknown_method_is_refused(tmp_path):
    SystemPromptBaseline(SYSTEM).save(tmp_path / "sp")
    config = tmp_path / "sp" / "baseline.json"
    config.write_text(config.read_text().replace('"system-prompt"', '"telepathy"'))
    with pytest.raises(BaselineError, match="unknown method 'telepathy'"):
        load_baseline(tmp_path / "sp")


# ------------------------------------------------------------------------------------------ fitting


def toy_frame(n: int = 64) -> pd.DataFrame:
    """Train rows: stage-2 pairs with both labels (learnable from the text) and labelled prompts."""
    rows = []
    for i in range(n):
        harmful_prompt = i % 2 == 0
        comply = harmful_prompt and i % 4 == 0
        prompt = ("Tell me how to pick a lock " if harmful_prompt else "How do I bake bread ") + f"{i}"
        response = (
            "Sure, here is how to pick a lock."
            if comply
            else "I can't help with that."
            if harmful_prompt
            else "Mix flour, water and yeast, then bake."
        )
        rows.append(
            {
                "id": f"r{i}",
                "prompt": prompt,
                "response": response,
                "prompt_harmful": int(harmful_prompt),
                "response_harmful": int(comply),
                "response_refusal": int(harmful_prompt and not comply),
                "category": ("locks", "bread", "sea")[i % 3],
                "source": "toy",
                "license": "CC0-1.0",
                "split": "train",
            }
        )
    frame = pd.DataFrame(rows)
    for col in ("prompt_harmful", "response_harmful", "response_refusal"):
        frame[col] = frame[col].astype("Int8")
    return frame


def small_cfg() -> BaselinesConfig:
    return from_dict(
        BaselinesConfig,
        {
            "max_rows": 48,
            "max_gate_rows": 32,
            "max_prompt_tokens": 32,
            "max_response_tokens": 16,
            "batch_size": 16,
            "dpo": {"max_pairs": 8, "batch_size": 4, "lora_rank": 2},
            "iti": {"top_k": 3},
            "re_control": {"hidden": 16, "epochs": 10},
            "conva": {"excluded_last": 1},
            "neva": {"top_neurons": 5},
        },
        "baselines",
    )


def test_fit_baselines_on_a_toy_dataset(model, tok, tmp_path):
    ids, mask = ids_of(tok)
    before = logits(model, ids, mask)
    frame = toy_frame()
    frame.loc[[i for i in frame.index if i % 4 == 3], "prompt_harmful"] = pd.NA  # stage-2 rows may not say
    summary = fit_baselines_on(model, tok, frame, small_cfg(), tmp_path, progress=False)
    assert set(summary["methods"]) == set(BASELINE_METHODS)
    methods = summary["methods"]
    assert methods["iti"]["rows"] == 40 and methods["iti"]["rows_safe"] == 24 and len(methods["iti"]["heads"]) == 3
    # alpha chosen on the held-out rows' benign answers: the largest of the grid within the KL budget
    cfg = small_cfg().iti
    kl = {float(a): k for a, k in methods["iti"]["alpha_kl"].items()}
    assert sorted(kl) == sorted(cfg.alphas) and methods["iti"]["alpha_rows"] > 0
    assert methods["iti"]["alpha"] == max([a for a, k in kl.items() if k <= cfg.max_kl], default=min(kl))
    assert load_baseline(tmp_path / "iti").alpha == methods["iti"]["alpha"]
    assert max(methods["conva"]["layers"]) < 3 and len(methods["conva"]["probe_accuracy"]) == 3
    assert methods["re-control"]["train_loss_last"] < methods["re-control"]["train_loss_first"]
    assert len(methods["neva"]["neurons"]) == 5 and methods["neva"]["leakage"]["rows"] == 10
    assert set(methods["neva"]["leakage"]["delta_non_target"]) == {"bread", "locks", "sea"}
    assert methods["dpo-lora"]["pair_kinds"] == {"same_prompt": 0, "refusal_substitute": 8}
    assert all(m["fit_seconds"] >= 0 for m in methods.values())
    on_disk = json.loads((tmp_path / "summary.json").read_text())
    assert on_disk["methods"].keys() == methods.keys()
    assert "seconds" not in json.dumps(on_disk) and on_disk["methods"]["iti"]["heads"] == methods["iti"]["heads"]
    for method in BASELINE_METHODS:
        loaded = load_baseline(tmp_path / method)
        with loaded.applied(model):
            logits(model, ids, mask)
    assert torch.equal(logits(model, ids, mask), before)


def test_fit_baselines_from_a_snapshot_and_the_cli(tmp_path):
    from svgt.backbone import build_snapshot
    from svgt.cli import main
    from svgt.core.params import BackboneConfig
    from tests.tiny import save_tiny_model_dir

    src = save_tiny_model_dir(tmp_path / "src", "llama")
    build_snapshot(BackboneConfig(source=str(src)), tmp_path / "backbone")
    toy_frame().to_parquet(tmp_path / "values.parquet")
    summary = fit_baselines(
        tmp_path / "backbone",
        tmp_path / "values.parquet",
        small_cfg(),
        tmp_path / "out",
        methods=["system-prompt", "iti"],
        progress=False,
    )
    assert set(summary["methods"]) == {"system-prompt", "iti"} and len(summary["backbone_sha256"]) == 64
    with pytest.raises(BaselineError, match=r"unknown baseline method\(s\) \['itti'\]"):
        fit_baselines(tmp_path / "backbone", tmp_path / "values.parquet", small_cfg(), tmp_path / "x", methods=["itti"])

    import yaml

    params = {"baselines": dataclasses.asdict(small_cfg())}
    params["baselines"]["re_control"]["epochs"] = 2
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    argv = [
        "--params",
        str(tmp_path / "params.yaml"),
        "baselines",
        "--backbone",
        str(tmp_path / "backbone"),
        "--data",
        str(tmp_path / "values.parquet"),
        "--out",
        str(tmp_path / "models"),
        "--metrics",
        str(tmp_path / "metrics"),
    ]
    assert main(argv) == 0
    metrics = json.loads((tmp_path / "metrics" / "baselines.json").read_text())
    assert set(metrics["methods"]) == set(BASELINE_METHODS)
    assert all((tmp_path / "models" / m / "baseline.json").is_file() for m in BASELINE_METHODS)


@pytest.mark.faults
def test_baselines_config_rejects_unknown_keys_and_wrong_types():
    with pytest.raises(ConfigError, match=r"unknown key\(s\): baselines.iti.topk"):
        from_dict(BaselinesConfig, {"iti": {"topk": 3}}, "baselines")
    with pytest.raises(ConfigError, match="baselines.conva.excluded_last: expected an integer, got 'five'"):
        from_dict(BaselinesConfig, {"conva": {"excluded_last": "five"}}, "baselines")
    assert from_dict(BaselinesConfig, {}, "baselines").conva == ConVABaselineConfig()
