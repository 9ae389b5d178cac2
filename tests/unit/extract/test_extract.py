import json

import pytest
import torch

from svgt.backbone import LayerAdapter, build_snapshot, load_snapshot
from svgt.backbone.batching import shared_prefix_length
from svgt.backbone.text import encode_prompt, encode_response
from svgt.core.params import BackboneConfig, ExtractConfig
from svgt.extract.shards import batch_hidden_states, encode_example
from svgt.extract.step import extract_hidden_states
from svgt.extract.store import ExtractionError, HiddenStateStore
from tests.tiny import FAMILIES, canonical_frame, make_model, make_tokenizer, save_tiny_model_dir

PROMPTS = ["How do I bake bread?", "Tell me how to pick a lock.", "What is 12 times 7?",
           "Write a haiku about the sea, please, with waves and gulls and tide.", "Hi",
           "Explain photosynthesis in simple words.", "The capital of France?", "Tea or coffee?"]


def reference_states(model, seq, layer):
    ids = torch.tensor([seq])
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=torch.ones_like(ids), output_hidden_states=True)
    return out.hidden_states[layer][0]


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("padding_side", ["left", "right"])
@pytest.mark.parametrize("batch_size", [1, 8])
def test_batched_states_equal_plain_forward(family, padding_side, batch_size):
    tok = make_tokenizer()
    model = make_model(family, len(tok))
    adapter = LayerAdapter(model)
    seqs = [encode_prompt(tok, p) + encode_response(tok, "Sure.") for p in PROMPTS]
    assert len({len(s) for s in seqs}) > 3  # really ragged, so padding matters
    layer = 3
    got = []
    for start in range(0, len(seqs), batch_size):
        got += batch_hidden_states(adapter, seqs[start:start + batch_size], layer, tok.pad_token_id,
                                   padding_side)
    for seq, h in zip(seqs, got, strict=True):
        assert h.shape == (len(seq), 32)
        torch.testing.assert_close(h, reference_states(model, seq, layer), atol=1e-5, rtol=0)


@pytest.mark.parametrize("family", FAMILIES)
def test_shared_prefix_runs_once_and_gives_the_same_states(family):
    """Sequences that start with the same tokens (a chat template's system turn) run that prefix once into
    a cache shared by the batch; every row's states must equal its own plain forward."""
    tok = make_tokenizer()
    model = make_model(family, len(tok))
    adapter = LayerAdapter(model)
    system = [int(i) for i in tok("You are a careful assistant. Answer briefly and well.")["input_ids"]]
    seqs = [system + encode_prompt(tok, p) + encode_response(tok, "Sure.") for p in PROMPTS]
    assert shared_prefix_length(seqs) >= len(system) >= 8
    got = batch_hidden_states(adapter, seqs, 3, tok.pad_token_id)
    plain = batch_hidden_states(adapter, seqs, 3, tok.pad_token_id, min_shared_prefix=10**6)
    for seq, h, p in zip(seqs, got, plain, strict=True):
        assert h.shape == (len(seq), 32)
        torch.testing.assert_close(h, reference_states(model, seq, 3), atol=1e-5, rtol=0)
        torch.testing.assert_close(h, p, atol=1e-5, rtol=0)


def test_shared_prefix_length_leaves_every_sequence_a_token():
    assert shared_prefix_length([[1, 2, 3, 4], [1, 2, 3, 5, 6]]) == 3
    assert shared_prefix_length([[1, 2, 3], [1, 2, 3, 4]]) == 2
    assert shared_prefix_length([[7, 2], [1, 2]]) == 0


@pytest.fixture
def tiny_snapshot(tmp_path):
    src = save_tiny_model_dir(tmp_path / "src", "llama", num_layers=4)
    build_snapshot(BackboneConfig(source=str(src)), tmp_path / "snap")
    return tmp_path / "snap"


@pytest.fixture
def canonical_parquet(tmp_path):
    path = tmp_path / "values.parquet"
    canonical_frame(24).to_parquet(path)
    return path


def test_extract_writes_exact_states_and_index(tmp_path, tiny_snapshot, canonical_parquet):
    cfg = ExtractConfig(layer=2, batch_size=4, shard_size=5, dtype="float32")
    out = tmp_path / "hidden"
    summary = extract_hidden_states(tiny_snapshot, canonical_parquet, cfg, out, progress=False)
    assert summary.examples == {"train": 8, "val": 8, "test": 8}
    assert summary.shards_written == 6 and summary.shards_skipped == 0
    index = json.loads((out / "index.json").read_text())
    assert index["layer"] == 2 and index["dtype"] == "float32" and index["hidden_size"] == 32
    assert [s["n"] for s in index["splits"]["train"]["shards"]] == [5, 3]

    model, tok, _ = load_snapshot(tiny_snapshot)
    frame = canonical_frame(24).set_index("id")
    store = HiddenStateStore(out)
    seen = 0
    for split in ("train", "val", "test"):
        for ex in store.iter_split(split):
            row = frame.loc[ex.id]
            p = encode_prompt(tok, row.prompt)
            r = encode_response(tok, row.response) if isinstance(row.response, str) else []
            ref = reference_states(model, p + r, 2)
            assert ex.prompt_states.shape == (len(p), 32)
            assert ex.response_states.shape == (len(r), 32)
            torch.testing.assert_close(ex.prompt_states, ref[: len(p)], atol=1e-5, rtol=0)
            torch.testing.assert_close(ex.response_states, ref[len(p):], atol=1e-5, rtol=0)
            torch.testing.assert_close(ex.pooled, ref[len(p) - 1], atol=1e-5, rtol=0)
            seen += 1
    assert seen == 24


def test_extract_resumes_and_redoes_only_missing_shards(tmp_path, tiny_snapshot, canonical_parquet):
    cfg = ExtractConfig(layer=2, shard_size=5)
    out = tmp_path / "hidden"
    first = extract_hidden_states(tiny_snapshot, canonical_parquet, cfg, out, progress=False)
    index = (out / "index.json").read_bytes()
    before = {p.name: p.stat().st_mtime_ns for p in out.glob("*.safetensors")}
    (out / "val-00001.safetensors").unlink()
    again = extract_hidden_states(tiny_snapshot, canonical_parquet, cfg, out, progress=False)
    assert again.shards_written == 1 and again.shards_skipped == 5
    assert again.tokens < again.tokens_total == first.tokens_total == first.tokens
    # the index holds only what the store holds (no timings, no reuse counts): the same bytes after a resume,
    # so DVC sees an unchanged output and reruns nothing downstream
    assert (out / "index.json").read_bytes() == index
    after = {p.name: p.stat().st_mtime_ns for p in out.glob("*.safetensors")}
    assert {k for k in before if before[k] == after.get(k)} == set(before) - {"val-00001.safetensors"}
    # a different layer invalidates every shard
    third = extract_hidden_states(tiny_snapshot, canonical_parquet, ExtractConfig(layer=1, shard_size=5), out,
                                  progress=False)
    assert third.shards_written == 6


@pytest.mark.faults
def test_store_refuses_modified_shards(tmp_path, tiny_snapshot, canonical_parquet):
    out = tmp_path / "hidden"
    extract_hidden_states(tiny_snapshot, canonical_parquet, ExtractConfig(layer=2, shard_size=50), out,
                          progress=False)
    shard = out / "train-00000.safetensors"
    data = bytearray(shard.read_bytes())
    data[-10] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(ExtractionError, match="checksum does not match"):
        list(HiddenStateStore(out).iter_split("train"))


@pytest.mark.faults
def test_truncation_rule_is_counted(tmp_path, tiny_snapshot, canonical_parquet):
    cfg = ExtractConfig(layer=2, max_prompt_tokens=12, max_response_tokens=3, dtype="float32")
    summary = extract_hidden_states(tiny_snapshot, canonical_parquet, cfg, tmp_path / "h", progress=False)
    assert summary.prompt_truncated == 24  # every templated prompt is longer than 12 tokens
    assert summary.response_truncated > 0
    store = HiddenStateStore(tmp_path / "h")
    # the kept tokens, not only their number: a prompt keeps its last 12 (the generation prompt, where the
    # bridge binds), a response its first 3; the stored states are those of exactly that sequence
    model, tok, _ = load_snapshot(tiny_snapshot)
    frame = canonical_frame(24).set_index("id")
    for ex in store.iter_split("train"):
        row = frame.loc[ex.id]
        p = encode_prompt(tok, row.prompt)
        r = encode_response(tok, row.response) if isinstance(row.response, str) else []
        kept = encode_example(tok, row.prompt, row.response if isinstance(row.response, str) else None, cfg)
        assert kept.prompt_ids == p[-12:] and kept.response_ids == r[:3]
        ref = reference_states(model, p[-12:] + r[:3], 2)
        assert ex.prompt_states.shape[0] == 12 and ex.response_states.shape[0] == len(r[:3])
        torch.testing.assert_close(ex.prompt_states, ref[:12], atol=1e-5, rtol=0)
        torch.testing.assert_close(ex.response_states, ref[12:], atol=1e-5, rtol=0)


@pytest.mark.integration
def test_ray_data_path_matches_local_path(tmp_path, tiny_snapshot, canonical_parquet):
    local = tmp_path / "local"
    # one thread, as each Ray actor runs: the bytes depend on a process's thread count (the matmuls split their
    # sums differently: 2 threads vs 1 changed 5 of 12 tiny shards in the last bit), not on the worker count
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        extract_hidden_states(tiny_snapshot, canonical_parquet, ExtractConfig(layer=2, shard_size=5), local,
                              progress=False)
    finally:
        torch.set_num_threads(threads)
    on_ray = tmp_path / "ray"
    summary = extract_hidden_states(tiny_snapshot, canonical_parquet,
                                    ExtractConfig(layer=2, shard_size=5, workers=2), on_ray, progress=False)
    assert summary.shards_written == 6
    # byte for byte: every shard and the index (which names each shard's checksum)
    files = sorted(p.name for p in local.iterdir())
    assert files == sorted(p.name for p in on_ray.iterdir()) and "index.json" in files and len(files) == 7
    for name in files:
        assert (on_ray / name).read_bytes() == (local / name).read_bytes(), name


@pytest.mark.faults
def test_store_refuses_non_finite_states(tmp_path, tiny_snapshot, canonical_parquet):
    from safetensors.torch import load_file, save_file

    from svgt.core.io import sha256_file

    out = tmp_path / "hidden"
    extract_hidden_states(tiny_snapshot, canonical_parquet, ExtractConfig(layer=2, shard_size=50), out, progress=False)
    shard = out / "train-00000.safetensors"
    tensors = load_file(shard)
    tensors["prompt_states"][3, 5] = float("nan")
    save_file(tensors, shard)
    index = json.loads((out / "index.json").read_text())
    index["splits"]["train"]["shards"][0]["sha256"] = sha256_file(shard)  # a consistent but poisoned shard
    (out / "index.json").write_text(json.dumps(index))
    with pytest.raises(ExtractionError, match="train-00000.safetensors: tensor 'prompt_states' contains NaN or inf"):
        list(HiddenStateStore(out).iter_split("train"))


@pytest.mark.faults
def test_extract_cli_refuses_data_that_did_not_pass_validation(tmp_path, tiny_snapshot, canonical_parquet, capsys):
    """`svgt extract` reads states only from data whose validation passed on exactly these bytes."""
    from svgt.cli import main
    from svgt.core.io import sha256_file

    report = tmp_path / "validation"
    report.mkdir()
    out, metrics = tmp_path / "hidden", tmp_path / "metrics"
    argv = ["extract", "--backbone", str(tiny_snapshot), "--data", str(canonical_parquet),
            "--validation", str(report), "--out", str(out), "--metrics", str(metrics)]
    summary = report / "validation_summary.json"
    cases = [
        (None, "validation_summary.json not found: run `svgt validate` first"),
        ({"success": False, "dataset_sha256": sha256_file(canonical_parquet)}, "says validation failed"),
        ({"success": True, "dataset_sha256": "0" * 64}, f"validated a different version of {canonical_parquet}"),
    ]
    for content, message in cases:
        if content is not None:
            summary.write_text(json.dumps(content))
        assert main(argv) == 1  # a failed step (exit codes: `svgt --help`)
        assert message in capsys.readouterr().err
        assert not out.exists() and not metrics.exists()  # refused before anything was written
    summary.write_text(json.dumps({"success": True, "dataset_sha256": sha256_file(canonical_parquet)}))
    assert main(argv) == 0
    written = json.loads((metrics / "extract.json").read_text())
    assert written["examples"] == {"train": 8, "val": 8, "test": 8}
    assert json.loads((out / "index.json").read_text())["layer"] == written["layer"]
