"""Unit tests for svgt.model: tiny dims (d=32, d_v=16), CPU, no backbone."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from svgt.core.io import MANIFEST, file_checksums, write_json_atomic
from svgt.model import (
    BACKBONE_SHA256,
    Discriminator,
    InjectProjector,
    LatentValueBridge,
    ValueEncoder,
    ValueModule,
    ValueModuleConfig,
    ValueModuleError,
    load_value_module,
    manifold_regulariser,
    momentum_update,
    save_value_module,
    value_correction,
)

D, DV, K = 32, 16, 3
SHA_A = "a" * 12 + "1" * 52
SHA_B = "b" * 12 + "2" * 52


def make_config(**overrides) -> ValueModuleConfig:
    base = dict(hidden_size=D, layer=2, d_v=DV, encoder_heads=2, cross_attn_heads=2, num_bridge_tokens=K)
    return ValueModuleConfig(**{**base, **overrides})


def make_module(seed: int = 0, **overrides) -> ValueModule:
    torch.manual_seed(seed)
    return ValueModule(make_config(**overrides)).eval()


class LinearScore(nn.Module):
    """A linear discriminator s = w.z + b with hand-set weights (the correction is exact for it)."""

    def __init__(self, w: torch.Tensor, b: float):
        super().__init__()
        self.lin = nn.Linear(w.numel(), 1)
        with torch.no_grad():
            self.lin.weight.copy_(w.unsqueeze(0))
            self.lin.bias.fill_(b)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.lin(z).squeeze(-1)


# ---------------------------------------------------------------- config


def test_config_defaults_follow_the_notes():
    cfg = ValueModuleConfig(hidden_size=576, layer=27)
    assert (cfg.d_v, cfg.encoder_layers, cfg.encoder_heads, cfg.num_bridge_tokens) == (128, 2, 4, 5)
    assert (cfg.cross_scale_init, cfg.gate_init, cfg.reg_margin) == (3.0, -2.0, 0.2)
    assert (cfg.refresh_interval, cfg.momentum, cfg.correction_step, cfg.pooling) == (5, 0.8, 1.0, "last")


def test_config_roundtrip():
    cfg = make_config(pooling="attention", momentum=0.5)
    again = ValueModuleConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg


def test_a_config_saved_before_the_gate_operating_points_still_loads():
    """Modules exported before gate_budgets / gate_points existed have neither key: they load with none."""
    raw = make_config().to_dict()
    del raw["gate_budgets"], raw["gate_points"]
    again = ValueModuleConfig.from_dict(raw)
    assert again.gate_budgets == [] and again.gate_points == [] and again == make_config()


def test_config_unknown_key_is_named():
    raw = {**make_config().to_dict(), "bridge_depth": 4}
    with pytest.raises(ValueModuleError, match="unknown key.*bridge_depth"):
        ValueModuleConfig.from_dict(raw)


def test_config_missing_and_mistyped_keys_are_named():
    raw = make_config().to_dict()
    del raw["hidden_size"]
    with pytest.raises(ValueModuleError, match="missing key.*hidden_size"):
        ValueModuleConfig.from_dict(raw)
    with pytest.raises(ValueModuleError, match="d_v: expected an integer"):
        ValueModuleConfig.from_dict({**make_config().to_dict(), "d_v": "16"})
    with pytest.raises(ValueModuleError, match="pooling: 'mean' is not one of"):
        ValueModuleConfig.from_dict({**make_config().to_dict(), "pooling": "mean"})


def test_config_rejects_inconsistent_values():
    with pytest.raises(ValueModuleError, match="not divisible by encoder_heads"):
        make_config(d_v=18, encoder_heads=4)
    with pytest.raises(ValueModuleError, match="momentum must be in"):
        make_config(momentum=1.5)
    with pytest.raises(ValueModuleError, match="num_bridge_tokens must be >= 1"):
        make_config(num_bridge_tokens=0)
    with pytest.raises(ValueModuleError, match="d_v must be >= 2"):
        make_config(d_v=1, encoder_heads=1, cross_attn_heads=1)
    with pytest.raises(ValueModuleError, match="attention_dropout must be in"):
        make_config(attention_dropout=1.0)


def test_attention_and_residual_dropout_are_separate_and_old_configs_load():
    module = ValueModule(make_config(dropout=0.2, attention_dropout=0.05))
    for layer in module.encoder.transformer.layers:
        assert layer.self_attn.dropout == 0.05 and layer.dropout1.p == layer.dropout.p == 0.2
    assert module.encoder.cross_attn.dropout == 0.05
    assert make_config().attention_dropout == 0.0
    # a module saved before the key existed (its attention dropout only mattered in training) still loads
    raw = make_config().to_dict()
    del raw["attention_dropout"]
    assert ValueModuleConfig.from_dict(raw).attention_dropout == 0.0


# ---------------------------------------------------------------- shapes


@pytest.mark.parametrize("pooling", ["last", "attention"])
def test_shapes(pooling):
    m = make_module(pooling=pooling)
    states, prompt = torch.randn(4, 7, D), torch.randn(4, 5, D)
    with torch.no_grad():
        z_u, s_u = m.score(states, torch.ones(4, 7))
        z, s = m.score(states, torch.ones(4, 7), prompt, torch.ones(4, 5))
        bridge = m.bridge_tokens(torch.randn(4, D), z)
    assert z_u.shape == z.shape == (4, DV) and s_u.shape == s.shape == (4,)
    assert bridge.shape == (4, K, D)
    assert m.inject_delta(z).shape == (4, D)
    assert value_correction(m.discriminator, z).shape == (4, DV)
    assert Discriminator(DV)(z).shape == (4,)


def test_wrong_width_is_refused():
    m = make_module()
    with pytest.raises(ValueError, match=r"states must be \[batch, tokens, 32\]"):
        m.score(torch.randn(2, 3, D + 1))
    with pytest.raises(ValueError, match="h_v must be"):
        m.bridge(torch.randn(2, D + 1), torch.zeros(2, DV))


# ---------------------------------------------------------------- encoder


def _pad(rows: list[torch.Tensor], length: int, left: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad with large garbage (not zeros), so a mask that is ignored would show."""
    states = torch.randn(len(rows), length, D) * 100
    mask = torch.zeros(len(rows), length, dtype=torch.bool)
    for i, row in enumerate(rows):
        sl = slice(length - len(row), length) if left else slice(0, len(row))
        states[i, sl], mask[i, sl] = row, True
    return states, mask


@pytest.mark.parametrize("pooling", ["last", "attention"])
@pytest.mark.parametrize("left", [False, True])
def test_padding_does_not_change_z(pooling, left):
    m = make_module(pooling=pooling)
    a, b = torch.randn(4, D), torch.randn(7, D)
    pa, pb = torch.randn(2, D), torch.randn(6, D)
    with torch.no_grad():
        alone_u = m.encoder(a.unsqueeze(0), torch.ones(1, 4))
        alone_c = m.encoder(a.unsqueeze(0), torch.ones(1, 4), pa.unsqueeze(0), torch.ones(1, 2))
        states, mask = _pad([a, b], 9, left)
        prompts, pmask = _pad([pa, pb], 8, left)
        batch_u = m.encoder(states, mask)
        batch_c = m.encoder(states, mask, prompts, pmask)
    torch.testing.assert_close(batch_u[0], alone_u[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(batch_c[0], alone_c[0], atol=1e-5, rtol=0)
    assert not torch.allclose(alone_u, alone_c, atol=1e-3)  # the prompt did matter


@pytest.mark.parametrize("pooling", ["last", "attention"])
@pytest.mark.parametrize("training", [False, True])
def test_all_padded_rows_are_zero_and_finite(pooling, training):
    """Torch attention returns NaN for a fully masked row (eval fast path and MultiheadAttention)."""
    m = make_module(pooling=pooling).train(training)
    states, prompt = torch.randn(3, 5, D), torch.randn(3, 4, D)
    mask, pmask = torch.ones(3, 5, dtype=torch.bool), torch.ones(3, 4, dtype=torch.bool)
    mask[1] = False
    pmask[2] = False
    with torch.set_grad_enabled(training):
        z, s = m.score(states, mask, prompt, pmask)
    assert torch.isfinite(z).all() and torch.isfinite(s).all()
    assert torch.equal(z[1], torch.zeros(DV))
    if training:
        s.sum().backward()
        assert all(torch.isfinite(p.grad).all() for p in m.parameters() if p.grad is not None)


def test_conditional_path_is_off_without_prompt_states():
    m = make_module()
    states = torch.randn(3, 6, D)
    with torch.no_grad():
        z_plain = m.encoder(states)
        z_cond = m.encoder(states, None, torch.randn(3, 4, D))
        no_prompt_row = torch.ones(3, 4, dtype=torch.bool)
        no_prompt_row[1] = False
        z_partial = m.encoder(states, None, torch.randn(3, 4, D), no_prompt_row)
        m.encoder.cross_scale.fill_(0.0)
        z_zero_scale = m.encoder(states, None, torch.randn(3, 4, D))
    assert not torch.allclose(z_plain, z_cond, atol=1e-3)
    torch.testing.assert_close(z_partial[1], z_plain[1])  # a row without prompt tokens is unconditional
    torch.testing.assert_close(z_zero_scale, z_plain)
    assert m.encoder.cross_scale.item() == 0.0 and make_module().encoder.cross_scale.item() == 3.0


def test_parameter_groups_are_disjoint_cover_and_match_the_paths():
    enc = ValueEncoder(make_config(pooling="attention")).train()
    unc, cond = enc.unconditional_parameters(), enc.conditional_parameters()
    ids_u, ids_c = {id(p) for p in unc}, {id(p) for p in cond}
    assert ids_u.isdisjoint(ids_c)
    assert ids_u | ids_c == {id(p) for p in enc.parameters()}
    assert id(enc.cross_scale) in ids_c and id(enc.cross_attn.in_proj_weight) in ids_c
    # stage 1 (no prompt) reaches every unconditional parameter and no conditional one
    enc(torch.randn(2, 5, D)).sum().backward()
    assert all(p.grad is not None for p in unc)
    assert all(p.grad is None for p in cond)
    enc.zero_grad(set_to_none=True)
    enc(torch.randn(2, 5, D), None, torch.randn(2, 3, D)).sum().backward()
    assert all(p.grad is not None for p in cond)


# ---------------------------------------------------------------- correction


def test_correction_is_zero_for_safe_rows_and_reaches_the_boundary():
    torch.manual_seed(1)
    w = torch.randn(DV)
    disc = LinearScore(w, b=0.0)
    z = torch.randn(6, DV)
    z[:3] = z[:3] - w * 2 * (z[:3] @ w).clamp(min=0.1).unsqueeze(-1) / (w @ w)  # rows 0-2: D < 0 (safe)
    z[3:] = z[3:] + w * 2 * (z[3:] @ w).abs().clamp(min=0.1).unsqueeze(-1) / (w @ w)  # rows 3-5: D > 0
    s = disc(z)
    assert (s[:3] < 0).all() and (s[3:] > 0).all()
    dz = value_correction(disc, z, step=1.0)
    assert torch.equal(dz[:3], torch.zeros(3, DV))
    torch.testing.assert_close(disc(z + dz)[3:], torch.zeros(3), atol=1e-4, rtol=0)
    half = value_correction(disc, z, step=0.5)
    torch.testing.assert_close(disc(z + half)[3:], s[3:] / 2, atol=1e-4, rtol=1e-4)
    assert torch.allclose(F.cosine_similarity(dz[3:], -w.expand(3, DV)), torch.ones(3))


def test_correction_zero_gradient_gives_zero_not_nan():
    disc = LinearScore(torch.zeros(DV), b=1.0)  # s = 1 > 0 everywhere but grad = 0
    dz = value_correction(disc, torch.randn(4, DV))
    assert torch.equal(dz, torch.zeros(4, DV))


@pytest.mark.parametrize("context", [torch.no_grad, torch.inference_mode])
def test_correction_works_under_callers_no_grad(context):
    disc = LinearScore(torch.ones(DV), b=5.0)
    with context():
        z = torch.randn(2, DV)
        dz = value_correction(disc, z)
    assert not dz.requires_grad and (dz != 0).any()
    assert disc.lin.weight.grad is None  # the local gradient never accumulates into D's parameters


def test_correction_create_graph_is_differentiable():
    disc = Discriminator(DV)
    with torch.no_grad():
        disc.net[2].bias.fill_(10.0)  # make every row harmful so dz is non-zero
    z = torch.randn(3, DV, requires_grad=True)
    dz = value_correction(disc, z, create_graph=True)
    assert dz.requires_grad
    dz.pow(2).sum().backward()
    assert z.grad is not None and torch.isfinite(z.grad).all() and z.grad.abs().sum() > 0
    assert disc.net[0].weight.grad is not None
    assert not value_correction(disc, z).requires_grad


# ---------------------------------------------------------------- bridge


def test_bridge_initial_gate_and_closed_gate():
    bridge = LatentValueBridge(D, DV, K, gate_init=-2.0)
    assert bridge.alpha.item() == pytest.approx(math.log1p(math.exp(-2.0)))
    assert bridge.alpha.item() == pytest.approx(0.127, abs=1e-3)
    with torch.no_grad():
        bridge.gate.fill_(-30.0)
        h_v = torch.randn(4, D) * 5 + 1.5
        out = bridge(h_v, torch.randn(4, DV))
    # a closed gate inserts the anchor itself, K times, on the anchor's own scale
    torch.testing.assert_close(out, h_v.unsqueeze(1).expand(4, K, D), atol=1e-4, rtol=1e-4)
    with torch.no_grad():
        bridge.norm.weight.normal_()  # a trained affine LayerNorm: the comparison must use the bridge's norm
        out = bridge(h_v, torch.randn(4, DV))
        expected = bridge.anchor_norm(h_v.unsqueeze(1).expand(4, K, D), h_v)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)


def test_multihead_retrieval_gives_distinct_bridge_tokens_and_learns_its_projections():
    """Without projections every token is a convex mix of the same two bank vectors: the K tokens lie on one
    line (centred rank 1). Learned multi-head retrieval mixes per head, so they can differ in K - 1 directions."""
    torch.manual_seed(0)
    h_v, dz = torch.randn(1, D) * 3, torch.randn(1, DV)
    single = LatentValueBridge(D, DV, K)
    multi = LatentValueBridge(D, DV, K, retrieval="multihead", heads=4)
    with torch.no_grad():
        for bridge in (single, multi):
            bridge.queries.normal_()  # non-uniform attention, as after training

    def centred_rank(raw):
        return int(torch.linalg.matrix_rank(raw[0] - raw[0].mean(0, keepdim=True), rtol=1e-4))

    assert centred_rank(single.retrieve(h_v, dz)) == 1 and centred_rank(multi.retrieve(h_v, dz)) == K - 1
    multi(h_v, dz).pow(2).mean().backward()
    assert multi.attention.in_proj_weight.grad.abs().sum() > 0 and multi.attention.out_proj.weight.grad.abs().sum() > 0
    with pytest.raises(ValueModuleError, match="bridge_heads=5 must be >= 1 and divide hidden_size=32"):
        ValueModuleConfig(hidden_size=32, layer=2, d_v=16, encoder_heads=2, cross_attn_heads=2, bridge_heads=5)
    with pytest.raises(ValueError, match="retrieval must be"):
        LatentValueBridge(D, DV, K, retrieval="sparse")


def test_bridge_is_attention_over_the_two_entry_bank():
    bridge = LatentValueBridge(D, DV, K, gate_init=0.5)
    h_v, dz = torch.randn(2, D), torch.randn(2, DV)
    with torch.no_grad():
        bridge.queries.zero_()  # uniform attention: B_raw = (h_v + proj(dz)) / 2 for every token
        out = bridge(h_v, dz)
        raw = (h_v + bridge.proj(dz)) / 2
        normed = F.layer_norm(h_v + F.softplus(torch.tensor(0.5)) * raw, (D,))
        spread = h_v.std(-1, unbiased=False, keepdim=True)
        expected = (normed * spread + h_v.mean(-1, keepdim=True)).unsqueeze(1).expand(2, K, D)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


def test_bridge_attention_is_scaled_by_sqrt_d():
    """Reference computed row by row: B_raw[k] = sum_n softmax_n(q_k . c_n / sqrt(d)) c_n."""
    torch.manual_seed(3)
    bridge = LatentValueBridge(D, DV, K, gate_init=1.0)
    h_v, dz = torch.randn(2, D) * 3, torch.randn(2, DV)
    with torch.no_grad():
        bridge.queries.normal_(std=1.0)  # large enough that the 1/sqrt(d) scaling changes the weights
        out = bridge(h_v, dz)
        for b in range(2):
            bank = [h_v[b], bridge.proj(dz[b : b + 1])[0]]
            for k in range(K):
                logits = torch.stack([bridge.queries[k] @ c for c in bank]) / math.sqrt(D)
                w = torch.softmax(logits, 0)
                raw = w[0] * bank[0] + w[1] * bank[1]
                normed = bridge.norm(h_v[b] + F.softplus(torch.tensor(1.0)) * raw)
                expected = normed * h_v[b].std(unbiased=False) + h_v[b].mean()
                torch.testing.assert_close(out[b, k], expected, atol=1e-5, rtol=1e-5)


def test_bridge_queries_are_small_random_and_distinct():
    bridge = LatentValueBridge(D, DV, K)
    assert bridge.queries.shape == (K, D)
    assert 0.01 < bridge.queries.std().item() < 0.03
    assert not torch.allclose(bridge.queries[0], bridge.queries[1])


def test_manifold_regulariser_known_values():
    h_v = torch.tensor([[3.0, 4.0]])  # |h_v| = 5
    tokens = torch.tensor([[[5.0, 0.0], [0.0, 7.5], [2.5, 0.0], [0.0, 5.5]]])  # ratios 1, 1.5, 0.5, 1.1
    # penalties: 0, 0.5-0.2, 0.5-0.2, 0 -> mean 0.15
    assert manifold_regulariser(tokens, h_v, 0.2).item() == pytest.approx(0.15)
    assert manifold_regulariser(tokens, h_v, 0.6).item() == pytest.approx(0.0)
    assert manifold_regulariser(tokens, h_v, 0.0).item() == pytest.approx((0 + 0.5 + 0.5 + 0.1) / 4)


def test_momentum_weights_the_old_bridge():
    old, new = torch.ones(1, K, D), torch.zeros(1, K, D)
    assert torch.allclose(momentum_update(old, new, 0.8), torch.full((1, K, D), 0.8))
    assert torch.equal(momentum_update(old, new, 0.0), new)
    assert torch.equal(momentum_update(None, new, 0.8), new)
    with pytest.raises(ValueError, match="beta"):
        momentum_update(old, new, 1.2)


def test_inject_projector_starts_as_exact_noop():
    inject = InjectProjector(D, DV)
    dz = torch.randn(3, DV) * 10
    assert torch.equal(inject(dz), torch.zeros(3, D))
    assert torch.equal(make_module().inject_delta(torch.randn(3, DV) * 10), torch.zeros(3, D))
    with torch.no_grad():
        inject.proj.weight.normal_()
    assert inject(dz).abs().sum() > 0


# ---------------------------------------------------------------- stages


def _ids(params) -> set[int]:
    return {id(p) for p in params}


def test_stage_parameters():
    m = make_module(pooling="attention")
    enc, disc = m.encoder, m.discriminator
    s1, s2, s3 = (m.stage_parameters(i) for i in (1, 2, 3))
    assert set(s1) == {"train"} and set(s2) == {"new", "old"} and set(s3) == {"train"}
    assert _ids(s1["train"]) == _ids(enc.unconditional_parameters()) | _ids(disc.parameters())
    assert _ids(s2["new"]) == _ids(enc.conditional_parameters())
    assert _ids(s2["old"]) == _ids(s1["train"])
    assert _ids(s3["train"]) == _ids(m.bridge.parameters()) | _ids(m.inject.parameters())
    assert _ids(s1["train"]) | _ids(s2["new"]) | _ids(s3["train"]) == _ids(m.parameters())
    with pytest.raises(ValueError, match="stage must be one of"):
        m.stage_parameters(4)


def test_configure_stage_freezes_everything_else():
    m = make_module()
    groups = m.configure_stage(3)
    trainable = {id(p) for p in m.parameters() if p.requires_grad}
    assert trainable == _ids(groups["train"]) == _ids(m.bridge.parameters()) | _ids(m.inject.parameters())
    m.configure_stage(2)
    assert all(p.requires_grad for p in m.encoder.parameters()) and not m.bridge.gate.requires_grad


# ---------------------------------------------------------------- save / load


def _outputs(m: ValueModule) -> tuple[torch.Tensor, ...]:
    torch.manual_seed(123)
    states, prompt, h_v = torch.randn(2, 5, D), torch.randn(2, 4, D), torch.randn(2, D)
    with torch.no_grad():
        z, s = m.score(states, None, prompt)
        return z, s, m.bridge_tokens(h_v, z)


def _saved(tmp_path, metadata=None):
    m = make_module(seed=7, pooling="attention")
    with torch.no_grad():
        m.bridge.gate.fill_(0.3)
        m.inject.proj.weight.normal_()
    path = save_value_module(m, tmp_path / "vm", metadata if metadata is not None else {BACKBONE_SHA256: SHA_A})
    return m, path


def _rewrite(path, name: str, data: dict) -> None:
    """Edit a file and re-seal the manifest (what a careless hand edit with a fixed manifest looks like)."""
    (path / name).write_text(json.dumps(data))
    write_json_atomic(path / MANIFEST, {"format": "svgt-value-module/1", "files": file_checksums(path)})


def test_save_load_roundtrip(tmp_path):
    metadata = {BACKBONE_SHA256: SHA_A, "data_version": "v3", "metrics": {"auroc": 0.9}}
    m, path = _saved(tmp_path, metadata)
    assert sorted(p.name for p in path.iterdir()) == ["README.md", "config.json", MANIFEST, "weights.safetensors"]
    loaded, meta = load_value_module(path, expected_backbone_sha256=SHA_A)
    assert meta == metadata and loaded.config == m.config and not loaded.training
    for a, b in zip(_outputs(m), _outputs(loaded), strict=True):
        torch.testing.assert_close(a, b, atol=0, rtol=0)
    assert not torch.allclose(_outputs(make_module(seed=8, pooling="attention"))[0], _outputs(m)[0])
    loaded_again, _ = load_value_module(path)  # no expected hash: no backbone check
    torch.testing.assert_close(_outputs(loaded_again)[1], _outputs(m)[1], atol=0, rtol=0)


def test_tampered_weights_are_refused(tmp_path):
    _, path = _saved(tmp_path)
    data = bytearray((path / "weights.safetensors").read_bytes())
    data[-1] ^= 0xFF
    (path / "weights.safetensors").write_bytes(bytes(data))
    with pytest.raises(ValueModuleError, match=r"weights\.safetensors: checksum .* does not match manifest"):
        load_value_module(path)


def test_missing_file_is_named(tmp_path):
    _, path = _saved(tmp_path)
    (path / "config.json").unlink()
    with pytest.raises(ValueModuleError, match="config.json: listed in manifest.json but missing"):
        load_value_module(path)


def test_backbone_mismatch_is_refused(tmp_path):
    _, path = _saved(tmp_path)
    with pytest.raises(ValueModuleError, match=f"trained on backbone {SHA_A[:12]} .* given is {SHA_B[:12]}"):
        load_value_module(path, expected_backbone_sha256=SHA_B)


def test_unrecorded_backbone_cannot_be_checked(tmp_path):
    _, path = _saved(tmp_path, metadata={})
    with pytest.raises(ValueModuleError, match=f"records no {BACKBONE_SHA256}"):
        load_value_module(path, expected_backbone_sha256=SHA_A)


def test_unknown_config_key_in_saved_module_is_refused(tmp_path):
    _, path = _saved(tmp_path)
    payload = json.loads((path / "config.json").read_text())
    payload["config"]["bridge_depth"] = 2
    _rewrite(path, "config.json", payload)
    with pytest.raises(ValueModuleError, match="unknown key.*bridge_depth"):
        load_value_module(path)


def test_weights_that_do_not_fit_the_config_are_refused(tmp_path):
    _, path = _saved(tmp_path)
    payload = json.loads((path / "config.json").read_text())
    payload["config"]["num_bridge_tokens"] = K + 1
    _rewrite(path, "config.json", payload)
    with pytest.raises(ValueModuleError, match=r"weights\.safetensors: weights do not fit the saved config"):
        load_value_module(path)
    payload["config"].update(num_bridge_tokens=K, pooling="last")  # same shapes, but the pooler's weights unused
    _rewrite(path, "config.json", payload)
    with pytest.raises(ValueModuleError, match="Unexpected key.*pool.score"):
        load_value_module(path)


def test_save_replaces_whole_and_bad_metadata_leaves_nothing(tmp_path):
    _, path = _saved(tmp_path)
    (path / "stale.txt").write_text("old")
    save_value_module(make_module(), path, {BACKBONE_SHA256: SHA_B})
    assert not (path / "stale.txt").exists()
    assert load_value_module(path, expected_backbone_sha256=SHA_B)[1] == {BACKBONE_SHA256: SHA_B}
    with pytest.raises(ValueModuleError, match="not JSON-serialisable"):
        save_value_module(make_module(), tmp_path / "bad", {"x": object()})
    assert not (tmp_path / "bad").exists()
