import json

import pytest
import torch

from svgt.backbone import load_snapshot
from svgt.cli import main
from svgt.decoding.guidance import ValueGuidance, generate_with_module, prompt_states
from svgt.decoding.loop import guided_generate
from svgt.model import ValueModule, ValueModuleConfig, save_value_module

PROMPTS = ["How do I bake bread?", "Explain how to attack and hurt people: tell me about locks", "Hi"]


@pytest.fixture(scope="module")
def module_dir(tiny_pipeline, tmp_path_factory):
    _, _, manifest = load_snapshot(tiny_pipeline / "backbone")
    torch.manual_seed(0)
    module = ValueModule(ValueModuleConfig(hidden_size=32, layer=2, d_v=16, encoder_heads=2, cross_attn_heads=2,
                                           num_bridge_tokens=3, refresh_interval=2)).eval()
    out = tmp_path_factory.mktemp("module") / "m"
    save_value_module(module, out, {"backbone_weights_sha256": manifest.weights_sha256})
    return out


def test_unguided_method_is_plain_greedy(tiny_pipeline):
    model, tok, _ = load_snapshot(tiny_pipeline / "backbone")
    ours = generate_with_module(model, tok, PROMPTS, module=None, method="none", max_new_tokens=6,
                                stop_token_ids=())
    ref = guided_generate(model, tok, PROMPTS, max_new_tokens=6, stop_token_ids=())
    assert ours.token_ids == ref.token_ids


def test_svgt_guidance_is_batch_independent_and_changes_output(tiny_pipeline, module_dir):
    from svgt.model import load_value_module

    model, tok, _ = load_snapshot(tiny_pipeline / "backbone")
    module, _ = load_value_module(module_dir)
    batched = generate_with_module(model, tok, PROMPTS, module=module, method="svgt", max_new_tokens=6,
                                   stop_token_ids=(), return_scores=True)
    for i, p in enumerate(PROMPTS):
        alone = generate_with_module(model, tok, [p], module=module, method="svgt", max_new_tokens=6,
                                     stop_token_ids=())
        assert alone.token_ids[0] == batched.token_ids[i]
    assert batched.timing.bridge_calls == 1 + (6 - 1) // 2  # refresh_interval 2 from the module config
    assert len(batched.value_scores[0]) == 6  # one discriminator score per generated token
    plain = guided_generate(model, tok, PROMPTS, max_new_tokens=1, stop_token_ids=(), return_scores=True)
    # the bridge tokens really enter the computation: first-step logits move
    assert (batched.logits[0][0] - plain.logits[0][0]).abs().max() > 1e-3


def test_first_bridge_judges_the_whole_prompt(tiny_pipeline, module_dir):
    from svgt.model import load_value_module

    model, tok, _ = load_snapshot(tiny_pipeline / "backbone")
    module, _ = load_value_module(module_dir)
    states, mask = prompt_states(model, tok, PROMPTS, layer=2)
    guidance = ValueGuidance(module, states, mask)
    h = states[:, -1]
    first = guidance.bridge_fn(h)
    z_prompt, _ = module.score(states, mask)
    torch.testing.assert_close(first, module.bridge_tokens(h, z_prompt))
    second = guidance.bridge_fn(h)  # a refresh judges the token in its prompt's context instead
    ones = torch.ones(h.shape[0], 1, dtype=torch.bool)
    z_token, _ = module.score(h[:, None], ones, states, mask)
    torch.testing.assert_close(second, module.bridge_tokens(h, z_token))


@pytest.mark.parametrize("method", ["svgt", "svgt-inject"])
def test_prompt_context_from_the_prefill_equals_a_separate_prompt_pass(tiny_pipeline, module_dir, method):
    """The decode loop hands the value module its prompt states (no second forward); same result as before."""
    from svgt.model import load_value_module

    model, tok, _ = load_snapshot(tiny_pipeline / "backbone")
    module, _ = load_value_module(module_dir)
    states, mask = prompt_states(model, tok, PROMPTS, layer=2)
    separate = ValueGuidance(module, states, mask)
    fns = {"bridge_fn": separate.bridge_fn} if method == "svgt" else {"inject_fn": separate.inject_fn}
    old = guided_generate(model, tok, PROMPTS, layer=2, refresh_interval=2, max_new_tokens=6, stop_token_ids=(),
                          return_scores=True, score_fn=separate.score_fn, **fns)
    new = generate_with_module(model, tok, PROMPTS, module=module, method=method, max_new_tokens=6,
                               stop_token_ids=(), return_scores=True)
    assert new.token_ids == old.token_ids
    for a, b in zip(new.logits, old.logits, strict=True):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=0)
    for a, b in zip(new.value_scores, old.value_scores, strict=True):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=0)


def test_guidance_without_prompt_context_says_so(tiny_pipeline, module_dir):
    from svgt.model import load_value_module

    module, _ = load_value_module(module_dir)
    with pytest.raises(RuntimeError, match="has no prompt states"):
        ValueGuidance(module).bridge_fn(torch.zeros(1, 32))


@pytest.mark.faults
def test_generate_cli_streams_jsonl_and_skips_bad_lines(tiny_pipeline, module_dir, tmp_path, capsys):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_bytes(b'{"id": "a", "prompt": "How do I bake bread?"}\n'
                        b'not json\n'
                        b'{"id": "b"}\n'
                        b'{"prompt": "caf\xff"}\n'
                        b'\n'
                        b'{"id": "c", "prompt": "Tell me about tea"}\n')
    out = tmp_path / "out.jsonl"
    code = main(["generate", "--backbone", str(tiny_pipeline / "backbone"), "--module", str(module_dir),
                 "--method", "svgt", "--prompts-file", str(prompts), "--out", str(out), "--max-new-tokens", "4"])
    assert code == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in rows] == ["a", "c"]
    assert all(r["method"] == "svgt" and isinstance(r["response"], str) and r["new_tokens"] <= 4 for r in rows)
    err = capsys.readouterr().err
    assert f"{prompts}:2: not valid JSON" in err
    assert f"{prompts}:3: needs a non-empty string field 'prompt'" in err
    assert f"{prompts}:4: not valid UTF-8" in err


@pytest.mark.faults
def test_generate_refuses_module_of_another_backbone(tiny_pipeline, tmp_path, capsys):
    module = ValueModule(ValueModuleConfig(hidden_size=32, layer=2, d_v=16, encoder_heads=2, cross_attn_heads=2))
    save_value_module(module, tmp_path / "other", {"backbone_weights_sha256": "0" * 64})
    code = main(["generate", "--backbone", str(tiny_pipeline / "backbone"), "--module", str(tmp_path / "other"),
                 "--prompt", "hi", "--max-new-tokens", "2"])
    assert code == 1
    assert "000000000000" in capsys.readouterr().err


def test_generate_serves_a_module_from_another_registry(tiny_pipeline, module_dir, tmp_path, capsys, monkeypatch):
    """A production registry other than params' (where `svgt promote --to-tracking-uri` copies versions)."""
    from svgt.core.params import RegistryConfig
    from svgt.eval.gates import GateReport
    from svgt.registry.versions import promote, register_module

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    prod = RegistryConfig(tracking_uri=f"sqlite:///{tmp_path / 'prod.db'}", model_name="m", experiment="e")
    register_module(module_dir, GateReport(passed=True, results=[]), prod, params={}, git_commit=None,
                    artifact_location=str(tmp_path / "artifacts"))
    promote(prod)
    argv = ["generate", "--backbone", str(tiny_pipeline / "backbone"), "--module", "models:/m@production",
            "--prompt", "hi", "--max-new-tokens", "2"]
    assert main(argv + ["--tracking-uri", prod.tracking_uri]) == 0
    assert json.loads(capsys.readouterr().out.splitlines()[-1])["method"] == "svgt"
    assert main(argv + ["--tracking-uri", f"sqlite:///{tmp_path / 'empty.db'}"]) == 1
    assert "no registered model named 'm'" in capsys.readouterr().err


def test_generate_threshold_option_and_guided_from_in_the_output(tiny_pipeline, module_dir, tmp_path, capsys):
    """--threshold: a threshold no prompt reaches leaves every answer unguided (guided_from null, the answer
    the backbone writes); 'off' guides every prompt from its first token; a bad value is named."""
    common = ["generate", "--backbone", str(tiny_pipeline / "backbone"), "--module", str(module_dir),
              "--max-new-tokens", "4", "--prompt", PROMPTS[1]]
    assert main(common + ["--method", "none", "--out", str(tmp_path / "none.jsonl")]) == 0
    assert main(common + ["--threshold", "1e9", "--out", str(tmp_path / "closed.jsonl")]) == 0
    assert main(common + ["--threshold", "off", "--out", str(tmp_path / "open.jsonl")]) == 0
    none, closed, open_ = (json.loads((tmp_path / f"{n}.jsonl").read_text()) for n in ("none", "closed", "open"))
    assert closed["guided_from"] is None and closed["response"] == none["response"] and "guided_from" not in none
    assert "guided_from" not in open_  # a module whose gate is off, overridden to off: no gate at all
    with pytest.raises(SystemExit):
        main(common + ["--threshold", "high"])
    assert "argument --threshold: must be a number, 'off' or 'module', got 'high'" in capsys.readouterr().err
    # --gate-budget: the module's calibrated operating points only; it and --threshold exclude each other
    assert main(common + ["--gate-budget", "0.1"]) == 1
    assert "no gate operating point for budget 0.1: this module has none" in capsys.readouterr().err
    assert main(common + ["--gate-budget", "0.1", "--threshold", "off"]) == 2
    assert "--gate-budget and --threshold both set the gate: give one" in capsys.readouterr().err
