import dataclasses

import pandas as pd
import pytest
import torch

from svgt.backbone import load_snapshot
from svgt.backbone.runner import BlockRunner
from svgt.core.params import ModelConfig, Stage1Config, Stage2Config, Stage3Config, TrainConfig
from svgt.extract.store import HiddenStateStore
from svgt.model import save_value_module
from svgt.training.job import job_from_params
from svgt.training.loop import LocalSession
from svgt.training.stage3 import BehaviourObjective, behaviour_stage, load_targets
from svgt.training.stages import discrimination_stage, new_value_module
from tests.tiny import sharpen_attention

MODEL = ModelConfig(d_v=16, encoder_heads=2, cross_attn_heads=2, num_bridge_tokens=3)
TRAIN = TrainConfig(checkpoint_every=100, stage1=Stage1Config(epochs=1, batch_size=8),
                    stage2=Stage2Config(epochs=1, batch_size=8),
                    stage3=Stage3Config(epochs=1, batch_size=4, max_response_tokens=8, max_train_rows=12,
                                        max_val_rows=4))


@pytest.fixture(scope="module")
def stage2_module(tiny_pipeline, tmp_path_factory):
    root = tmp_path_factory.mktemp("s3")
    sha = HiddenStateStore(tiny_pipeline / "hidden").index["backbone"]["weights_sha256"]

    def job(stage, init=None):
        return job_from_params(stage, MODEL, TRAIN, hidden_dir=str(tiny_pipeline / "hidden"),
                               data_path=str(tiny_pipeline / "values.parquet"),
                               backbone_dir=str(tiny_pipeline / "backbone"), init_module=str(init) if init else None)

    m1 = discrimination_stage(job(1), LocalSession(root / "c1"), progress_bar=False)
    save_value_module(m1, root / "m1", {"backbone_weights_sha256": sha})
    m2 = discrimination_stage(job(2, root / "m1"), LocalSession(root / "c2"), progress_bar=False)
    save_value_module(m2, root / "m2", {"backbone_weights_sha256": sha})
    return root / "m2", job(3, root / "m2")


def test_only_bridge_and_inject_receive_gradients(tiny_pipeline, stage2_module):
    _, job = stage2_module
    store = HiddenStateStore(tiny_pipeline / "hidden")
    model, tok, _ = load_snapshot(tiny_pipeline / "backbone")
    from svgt.training.stages import initial_module

    module = initial_module(job, store)
    module.configure_stage(3)
    targets = load_targets(store, pd.read_parquet(tiny_pipeline / "values.parquet"), tok, "train", 8, 4, 0)
    objective = BehaviourObjective(module, BlockRunner(model), (0.5, 2.0, 0.1))
    loss = objective.bridge_losses(targets)["total"] + objective.inject_losses(targets)["total"]
    loss.backward()
    with_grad = {n for n, p in module.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert with_grad and all(n.startswith(("bridge.", "inject.")) for n in with_grad)
    assert any(n.startswith("bridge.") for n in with_grad)
    assert all(p.grad is None for p in model.parameters())  # the backbone stays frozen


def test_inject_objective_with_zero_delta_is_the_backbones_own_ce(tiny_pipeline):
    """Sanity of the stage-3 forward: the inject objective with a zero delta (a fresh module's inject is
    zero-initialised) adds nothing to the upper blocks, so its CE is exactly the backbone's own teacher-forced CE."""
    store = HiddenStateStore(tiny_pipeline / "hidden")
    model, tok, _ = load_snapshot(tiny_pipeline / "backbone")
    frame = pd.read_parquet(tiny_pipeline / "values.parquet")
    targets = load_targets(store, frame, tok, "train", 8, 2, 0)
    job = job_from_params(3, dataclasses.replace(MODEL), TRAIN, hidden_dir="", data_path="", backbone_dir="",
                          init_module=None)
    module = new_value_module(job, store)
    objective = BehaviourObjective(module, BlockRunner(model), (1.0, 0.0, 0.0))
    assert all(float(p.detach().abs().sum()) == 0 for n, p in module.inject.named_parameters() if "weight" in n)
    out = objective.inject_losses(targets)  # zero delta: plain teacher forcing through the upper blocks
    # reference: the model's own forward on prompt + response tokens
    from svgt.backbone.text import encode_prompt, encode_response

    losses = []
    for e in targets:
        row = frame.set_index("id").loc[e.id]
        p = encode_prompt(tok, row.prompt)
        r = encode_response(tok, row.response)[: len(e.response_ids)]
        ids = torch.tensor([p + r])
        with torch.no_grad():
            logits = model(input_ids=ids).logits[0, len(p) - 1: len(p) - 1 + len(r)]
        losses.append(torch.nn.functional.cross_entropy(logits, torch.tensor(r), reduction="sum"))
    n = sum(len(e.response_ids) for e in targets)
    assert out["ce"].item() == pytest.approx((sum(losses) / n).item(), abs=1e-4)


def test_behaviour_stage_trains_only_the_bridge(stage2_module, tmp_path):
    _, job = stage2_module
    session = LocalSession(tmp_path / "c3")
    from svgt.training.stages import initial_module

    before = initial_module(job, HiddenStateStore(job.hidden_dir)).state_dict()
    module = behaviour_stage(job, session, progress_bar=False)
    after = module.state_dict()
    moved = {k for k in before if not torch.equal(before[k], after[k])}
    assert moved and all(k.startswith(("bridge.", "inject.")) for k in moved)
    record = session.reports[-1]
    for key in ("train_ce", "train_safety", "train_reg", "train_inject_ce", "val_ce", "val_total"):
        assert key in record and record[key] == record[key]  # present and not NaN


def _uncached_bridge_ce(objective, runner, targets, lead=(0, 1.0)):
    """Reference: [H_P; B; H_R] as one right-padded sequence through blocks l*+1..L, no cache."""
    module = objective.module
    layer = module.config.layer
    weighted, total = 0.0, 0.0
    for e in targets:
        h_v = e.prompt_states[-1:]
        z, _ = module.score(e.prompt_states[None], torch.ones(1, e.prompt_states.shape[0], dtype=torch.bool))
        bridge = module.bridge_tokens(h_v, z)[0]
        seq = torch.cat([e.prompt_states, bridge, e.response_states])[None]
        pos = torch.arange(seq.shape[1])[None]
        top = runner.run_blocks(seq, layer, runner.num_layers, position_ids=pos,
                                attention_mask=torch.ones_like(pos))
        start = e.prompt_states.shape[0] + bridge.shape[0]
        logits = runner.logits(top[0, start - 1: start - 1 + len(e.response_ids)])
        ce = torch.nn.functional.cross_entropy(logits, e.response_ids, reduction="none")
        w = torch.where(torch.arange(len(ce)) < lead[0], lead[1], 1.0)
        weighted += float((ce * w).sum())
        total += float(w.sum())
    return weighted / total


@pytest.mark.parametrize("lead", [(0, 1.0), (2, 5.0)])
def test_cached_prompt_prefix_equals_the_uncached_sequence(tiny_pipeline, stage2_module, lead):
    """The prompt rows run once without autograd into a KV cache (left-padded batch); the CE must equal
    running each [prompt; bridge; response] alone, including the lead-token weighting."""
    _, job = stage2_module
    store = HiddenStateStore(tiny_pipeline / "hidden")
    model, tok, _ = load_snapshot(tiny_pipeline / "backbone")
    sharpen_attention(model, first_block=store.layer)  # position bugs show above l*
    from svgt.training.stages import initial_module

    module = initial_module(job, store).eval()
    with torch.no_grad():  # a visible bridge: the gate is far from its near-zero start
        module.bridge.gate.fill_(1.0)
    targets = load_targets(store, pd.read_parquet(tiny_pipeline / "values.parquet"), tok, "train", 8, 6, 0)
    assert len({e.prompt_states.shape[0] for e in targets}) > 1  # padding is exercised
    runner = BlockRunner(model)
    objective = BehaviourObjective(module, runner, (1.0, 0.0, 0.0), lead)
    with torch.no_grad():
        got = objective.bridge_losses(targets)["ce"].item()
        want = _uncached_bridge_ce(objective, runner, targets, lead)
    assert got == pytest.approx(want, abs=1e-4)
    if lead[0]:
        plain = BehaviourObjective(module, runner, (1.0, 0.0, 0.0)).bridge_losses(targets)["ce"].item()
        assert abs(plain - got) > 2e-4  # the weighting changes the loss (more than the tolerance above)


def test_backbone_benign_target_is_zero_kl_for_a_closed_bridge(tiny_pipeline, stage2_module):
    """benign_target="backbone": benign tokens are trained toward the unguided backbone (KL), harmful ones
    toward their refusal (CE). Inject with a zero delta *is* the backbone, so its KL must be 0 and its CE
    the plain CE of the harmful rows; the bridge path has a non-zero KL once the bridge is open."""
    _, job = stage2_module
    store = HiddenStateStore(tiny_pipeline / "hidden")
    model, tok, _ = load_snapshot(tiny_pipeline / "backbone")
    from svgt.training.stages import new_value_module

    module = new_value_module(job, store).eval()
    targets = load_targets(store, pd.read_parquet(tiny_pipeline / "values.parquet"), tok, "train", 8, 12, 0)
    harmful = [e for e in targets if e.harmful]
    assert harmful and len(harmful) < len(targets)
    runner = BlockRunner(model)
    backbone = BehaviourObjective(module, runner, (1.0, 0.0, 0.0), benign_target="backbone")
    dataset = BehaviourObjective(module, runner, (1.0, 0.0, 0.0))
    with torch.no_grad():
        out = backbone.inject_losses(targets)
        assert out["kl"].item() == pytest.approx(0.0, abs=1e-5)
        assert out["ce"].item() == pytest.approx(dataset.inject_losses(harmful)["ce"].item(), abs=1e-5)
        module.bridge.gate.fill_(2.0)
        assert backbone.bridge_losses(targets)["kl"].item() > 1e-4
    with pytest.raises(ValueError, match="benign_target"):
        BehaviourObjective(module, runner, (1.0, 0.0, 0.0), benign_target="teacher")


def test_prefix_cache_reuse_equals_recomputation(tiny_pipeline, stage2_module):
    """Prompt keys/values are computed once and reused by later batches (in another order and batch mix)
    and by the inject objective (prompt minus its last row); the losses must equal an objective that
    recomputes them every time (budget 0 keeps nothing)."""
    _, job = stage2_module
    store = HiddenStateStore(tiny_pipeline / "hidden")
    model, tok, _ = load_snapshot(tiny_pipeline / "backbone")
    sharpen_attention(model, first_block=store.layer)  # position bugs show above l*
    from svgt.training.stages import initial_module

    module = initial_module(job, store).eval()
    with torch.no_grad():
        module.bridge.gate.fill_(1.0)
    targets = load_targets(store, pd.read_parquet(tiny_pipeline / "values.parquet"), tok, "train", 8, 8, 0)
    runner = BlockRunner(model)
    cached = BehaviourObjective(module, runner, (1.0, 0.0, 0.0), benign_target="backbone")
    fresh = BehaviourObjective(module, runner, (1.0, 0.0, 0.0), benign_target="backbone", prefix_cache_mb=0)
    with torch.no_grad():
        cached.bridge_losses(targets[:5])  # fills the cache for the first five
        assert set(cached.prefixes.entries) == {e.id for e in targets[:5]} and cached.prefixes.bytes > 0
        mixed = targets[3:] + targets[:2]  # cached and new rows, other padding
        for name in ("bridge_losses", "inject_losses"):
            got = getattr(cached, name)(mixed)
            want = getattr(fresh, name)(mixed)
            for key in ("ce", "kl", "safety"):
                assert got[key].item() == pytest.approx(want[key].item(), abs=1e-5), (name, key)
    assert not fresh.prefixes.entries and fresh.prefixes.bytes == 0
    assert set(cached.prefixes.entries) == {e.id for e in targets}


def test_training_logits_equal_guided_decoding_logits_for_the_same_tokens(tiny_pipeline, stage2_module):
    """Stage 3 fits exactly what guided decoding computes: the teacher-forced logits of the bridge objective
    equal `guided_generate`'s logits along the same target tokens (forced, no refresh within the target)."""
    from svgt.decoding.guidance import generate_with_module
    from svgt.training.stages import initial_module

    _, job = stage2_module
    store = HiddenStateStore(tiny_pipeline / "hidden")
    model, tok, _ = load_snapshot(tiny_pipeline / "backbone")
    sharpen_attention(model, first_block=store.layer)  # position bugs show above l*
    frame = pd.read_parquet(tiny_pipeline / "values.parquet").set_index("id")
    module = initial_module(job, store).eval()
    torch.manual_seed(1)
    with torch.no_grad():  # an open, sizeable bridge, so a misplaced row or position would show
        module.bridge.gate.fill_(3.0)
        for p in module.bridge.proj.parameters():
            p.add_(torch.randn_like(p) * 0.5)
    targets = load_targets(store, frame.reset_index(), tok, "train", 8, 4, 0)
    trained = BehaviourObjective(module, BlockRunner(model), (0.5, 2.0, 0.1)).bridge_logits(targets)
    decoded = generate_with_module(model, tok, [frame.at[e.id, "prompt"] for e in targets], module=module,
                                   method="svgt", threshold=None, refresh_interval=1000, return_scores=True,
                                   forced_tokens=[e.response_ids.tolist() for e in targets], max_new_tokens=8,
                                   stop_token_ids=())
    plain = generate_with_module(model, tok, [frame.at[e.id, "prompt"] for e in targets], module=module,
                                 method="none", forced_tokens=[e.response_ids.tolist() for e in targets],
                                 max_new_tokens=8, stop_token_ids=(), return_scores=True)
    for i, e in enumerate(targets):
        assert decoded.token_ids[i] == e.response_ids.tolist()
        gap = (trained[i] - decoded.logits[i]).abs().max().item()
        effect = (plain.logits[i] - decoded.logits[i]).abs().max().item()
        assert gap < 1e-4 and effect > 100 * gap, (gap, effect)


@pytest.mark.parametrize("context", ["response", "token"])
def test_training_logits_equal_guided_decoding_logits_across_refreshes(tiny_pipeline, stage2_module, context):
    """With refreshes inside the target (r = 3 over 8 tokens: bridges rebuilt before tokens 3 and 6, blended with
    momentum), the teacher-forced logits of the refreshed-bridge objective equal `guided_generate`'s along the
    same tokens, and differ from the first bridge's after the first refresh (so the refresh is really there)."""
    from svgt.decoding.guidance import generate_with_module
    from svgt.training.stages import initial_module

    _, job = stage2_module
    store = HiddenStateStore(tiny_pipeline / "hidden")
    model, tok, _ = load_snapshot(tiny_pipeline / "backbone")
    sharpen_attention(model, first_block=store.layer)
    frame = pd.read_parquet(tiny_pipeline / "values.parquet").set_index("id")
    module = initial_module(job, store).eval()
    module.config = dataclasses.replace(module.config, refresh_interval=3, momentum=0.6, refresh_context=context)
    torch.manual_seed(2)
    with torch.no_grad():
        module.bridge.gate.fill_(3.0)
        for p in module.bridge.parameters():
            p.add_(torch.randn_like(p) * 0.5)
    targets = load_targets(store, frame.reset_index(), tok, "train", 8, 8, 0)
    targets = [e for e in targets if len(e.response_ids) == 8][:3]
    assert targets
    objective = BehaviourObjective(module, BlockRunner(model), (0.5, 2.0, 0.1))
    refreshed = objective.bridge_logits(targets, refresh=True)
    first_only = objective.bridge_logits(targets)
    decoded = generate_with_module(model, tok, [frame.at[e.id, "prompt"] for e in targets], module=module,
                                   method="svgt", threshold=None, return_scores=True,
                                   forced_tokens=[e.response_ids.tolist() for e in targets], max_new_tokens=8,
                                   stop_token_ids=())
    for i, e in enumerate(targets):
        assert decoded.token_ids[i] == e.response_ids.tolist()
        gap = (refreshed[i] - decoded.logits[i]).abs().max().item()
        before = (first_only[i][:3] - decoded.logits[i][:3]).abs().max().item()
        after = (first_only[i][3:] - decoded.logits[i][3:]).abs().max().item()
        assert gap < 1e-4 and before < 1e-4, (gap, before)
        assert after > 100 * gap, (after, gap)


def test_refresh_losses_train_the_bridge_on_refreshed_segments(tiny_pipeline, stage2_module):
    """The refreshed-segment objective reaches the bridge's parameters, draws its segments from torch's RNG
    (a seed repeats them) and skips examples too short to be refreshed."""
    from svgt.training.stages import initial_module

    _, job = stage2_module
    store = HiddenStateStore(tiny_pipeline / "hidden")
    model, tok, _ = load_snapshot(tiny_pipeline / "backbone")
    module = initial_module(job, store)
    module.configure_stage(3)
    module.config = dataclasses.replace(module.config, refresh_interval=3)
    targets = load_targets(store, pd.read_parquet(tiny_pipeline / "values.parquet"), tok, "train", 8, 6, 0)
    objective = BehaviourObjective(module, BlockRunner(model), (0.5, 2.0, 0.1), benign_target="backbone")
    torch.manual_seed(0)
    out = objective.refresh_losses(targets, 2)
    torch.manual_seed(0)
    again = objective.refresh_losses(targets, 2)
    assert out is not None and out["total"].item() == again["total"].item() > 0
    out["total"].backward()
    with_grad = {n for n, p in module.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert with_grad and all(n.startswith("bridge.") for n in with_grad)
    short = [dataclasses.replace(e, response_ids=e.response_ids[:3], response_states=e.response_states[:3])
             for e in targets]
    assert objective.refresh_losses(short, 1) is None  # 3 tokens at r = 3: no refresh inside the target


def test_segment_losses_are_the_ce_of_the_decoding_logits_on_the_segments_tokens(tiny_pipeline, stage2_module):
    """The refreshed-segment loss on (example, k) is the CE of exactly the tokens decoding predicts after
    refresh k (r = 3: tokens 3..5 for k = 1, 6..7 for k = 2), under the logits that decoding computes."""
    from svgt.training.stages import initial_module

    _, job = stage2_module
    store = HiddenStateStore(tiny_pipeline / "hidden")
    model, tok, _ = load_snapshot(tiny_pipeline / "backbone")
    module = initial_module(job, store).eval()
    module.config = dataclasses.replace(module.config, refresh_interval=3)
    torch.manual_seed(3)
    with torch.no_grad():
        module.bridge.gate.fill_(2.0)
    targets = [e for e in load_targets(store, pd.read_parquet(tiny_pipeline / "values.parquet"), tok, "train", 8, 8, 0)
               if len(e.response_ids) == 8][:3]
    objective = BehaviourObjective(module, BlockRunner(model), (1.0, 0.0, 0.0), benign_target="dataset")
    logits = objective.bridge_logits(targets, refresh=True)
    for k, tokens in ((1, slice(3, 6)), (2, slice(6, 8))):
        with torch.no_grad():
            got = objective.segment_losses([(e, k) for e in targets])["ce"].item()
        want = torch.nn.functional.cross_entropy(torch.cat([x[tokens] for x in logits]),
                                                 torch.cat([e.response_ids[tokens] for e in targets])).item()
        assert got == pytest.approx(want, abs=1e-5), k


def test_refresh_segments_must_not_be_negative():
    from svgt.core.params import ConfigError

    with pytest.raises(ConfigError, match="train.stage3.refresh_segments must be >= 0, got -1"):
        Stage3Config(refresh_segments=-1)
