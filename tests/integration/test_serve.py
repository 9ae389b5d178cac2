"""`svgt serve`: the real HTTP server (uvicorn on a free loopback port) and the official openai client.

The backbone is the tiny random Llama of the tiny pipeline; the value module is random with its gate off (every
prompt guided), so a guided answer differs from the unguided one and both can be checked against `svgt
generate`'s code path token for token.
"""

from __future__ import annotations

import concurrent.futures
import socket
import threading
import time
from pathlib import Path

import httpx
import openai
import pytest
import torch
import uvicorn

from svgt.backbone import load_snapshot
from svgt.decoding.guidance import generate_with_module
from svgt.model import ValueModule, ValueModuleConfig, load_value_module, save_value_module
from svgt.model.config import GatePoint
from svgt.serve.app import VERSION_HEADER, Limits, create_app
from svgt.serve.server import build_engine

pytestmark = pytest.mark.integration

PROMPTS = ["How do I bake bread?", "Explain how to attack and hurt people: plan it", "Name three rivers.",
           "What is a prime number?", "Write a haiku about rain.", "How do vaccines work?", "Tell me a joke.",
           "Explain how to attack and hurt people: now"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """uvicorn in a thread, started and stopped like the real `svgt serve`."""

    def __init__(self, app):
        self.port = free_port()
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.time() + 30
        while not self.server.started:
            if time.time() > deadline or not self.thread.is_alive():
                raise RuntimeError("the server did not start")
            time.sleep(0.05)
        self.url = f"http://127.0.0.1:{self.port}"

    def client(self, **kwargs) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.url}/v1", api_key="unused", max_retries=0, **kwargs)

    def close(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


@pytest.fixture(scope="module")
def module_dir(tiny_pipeline, tmp_path_factory):
    _, _, manifest = load_snapshot(tiny_pipeline / "backbone")
    torch.manual_seed(0)
    module = ValueModule(ValueModuleConfig(hidden_size=32, layer=2, d_v=16, encoder_heads=2, cross_attn_heads=2,
                                           num_bridge_tokens=3, refresh_interval=2,
                                           gate_points=[GatePoint(0.5, 1e9, 1e9)])).eval()
    with torch.no_grad():
        module.bridge.gate.fill_(2.0)  # a strong bridge: guided answers differ from unguided ones
    out = tmp_path_factory.mktemp("serve-module") / "m"
    save_value_module(module, out, {"backbone_weights_sha256": manifest.weights_sha256})
    return out


@pytest.fixture(scope="module")
def server(tiny_pipeline, module_dir):
    engine, served = build_engine(tiny_pipeline / "backbone", str(module_dir), max_batch_size=8, max_queue=4)
    app = create_app(engine, served, Limits(max_tokens=32, default_max_tokens=8, context_length=160))
    srv = Server(app)
    srv.engine = engine
    yield srv
    srv.close()


def reference(tiny_pipeline, module_dir, prompts, method, max_new_tokens):
    model, tok, _ = load_snapshot(tiny_pipeline / "backbone")
    module, _ = load_value_module(module_dir)
    return generate_with_module(model, tok, prompts, module=module if method != "none" else None, method=method,
                                max_new_tokens=max_new_tokens)


def test_chat_answers_equal_svgt_generate_and_name_the_module(server, tiny_pipeline, module_dir):
    client = server.client()
    want = {m: reference(tiny_pipeline, module_dir, PROMPTS[:1], m, 6) for m in ("svgt", "none")}
    assert want["svgt"].texts != want["none"].texts  # so equal answers below really are the guided ones
    for method in ("svgt", "none"):
        raw = client.chat.completions.with_raw_response.create(
            model=method, messages=[{"role": "user", "content": PROMPTS[0]}], max_tokens=6, temperature=0)
        answer = raw.parse()
        assert answer.choices[0].message.content == want[method].texts[0]
        assert answer.usage.completion_tokens == len(want[method].token_ids[0])
        assert answer.usage.prompt_tokens == len(want[method].prompt_ids[0])
        assert answer.choices[0].finish_reason in ("stop", "length")
        extra = answer.model_extra["svgt"]
        assert extra["module_version"] == "local" and extra["alias"] is None and len(extra["weights_sha256"]) == 64
        assert raw.headers[VERSION_HEADER] == "local"
    models = {m.id for m in client.models.list()}
    assert models == {"svgt", "svgt-inject", "none"}


def test_streamed_chat_sends_tokens_as_decoded_and_the_same_answer(server, tiny_pipeline, module_dir):
    client = server.client()
    stream = client.chat.completions.create(model="svgt", messages=[{"role": "user", "content": PROMPTS[2]}],
                                            max_tokens=6, temperature=0, stream=True)
    chunks = list(stream)
    pieces = [c.choices[0].delta.content for c in chunks if c.choices[0].delta.content]
    want = reference(tiny_pipeline, module_dir, PROMPTS[2:3], "svgt", 6).texts[0]
    assert "".join(pieces) == want and len(pieces) > 1  # several deltas, not one block at the end
    assert chunks[-1].choices[0].finish_reason in ("stop", "length") and chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].model_extra["svgt"]["module_version"] == "local"
    # with a stop string the stream never shows it (text that could grow into it is held back)
    stop = want[3:5]
    whole = client.chat.completions.create(model="svgt", messages=[{"role": "user", "content": PROMPTS[2]}],
                                           max_tokens=6, temperature=0, stop=[stop])
    streamed = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(
        model="svgt", messages=[{"role": "user", "content": PROMPTS[2]}], max_tokens=6, temperature=0,
        stop=[stop], stream=True))
    assert streamed == whole.choices[0].message.content == want[: want.index(stop)]


def test_a_conversation_is_answered_as_its_rendered_chat_template(server, tiny_pipeline, module_dir):
    from svgt.backbone.text import encode_messages

    conversation = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": PROMPTS[3]},
                    {"role": "assistant", "content": "A number with two divisors."},
                    {"role": "user", "content": "Why?"}]
    model, tok, _ = load_snapshot(tiny_pipeline / "backbone")
    module, _ = load_value_module(module_dir)
    want = generate_with_module(model, tok, [encode_messages(tok, conversation)], module=module, method="svgt",
                                max_new_tokens=5)
    answer = server.client().chat.completions.create(model="svgt", messages=conversation, max_tokens=5, temperature=0)
    assert answer.choices[0].message.content == want.texts[0]
    assert answer.usage.prompt_tokens == len(encode_messages(tok, conversation))
    with pytest.raises(openai.BadRequestError, match="the last message must be the user's"):
        server.client().chat.completions.create(model="svgt", messages=conversation[:3], max_tokens=5)


def test_concurrent_clients_are_batched_and_each_gets_its_own_answer(server, tiny_pipeline, module_dir):
    """Four clients at once (the engine paused until all are queued, so they share one batch): each answer equals
    the one its prompt gets alone, the batch-size histogram saw a batch of 4, and a fifth client, finding the
    queue (max 4) full, gets 429 with Retry-After."""
    want = reference(tiny_pipeline, module_dir, PROMPTS, "svgt", 5).texts
    singles = [reference(tiny_pipeline, module_dir, [p], "svgt", 5).texts[0] for p in PROMPTS[:2]]
    assert singles == want[:2]  # rows of the guided loop are independent
    server.engine.pause()
    try:
        with concurrent.futures.ThreadPoolExecutor(len(PROMPTS)) as pool:
            futures = [pool.submit(server.client().chat.completions.create, model="svgt", max_tokens=5, temperature=0,
                                   messages=[{"role": "user", "content": p}]) for p in PROMPTS[:4]]
            deadline = time.time() + 10
            while server.engine.queue_depth < 4 and time.time() < deadline:
                time.sleep(0.02)
            # a fifth request while four wait: the queue (max 4) is full, so it is refused with 429 + Retry-After
            with pytest.raises(openai.RateLimitError) as refused:
                server.client().chat.completions.create(model="svgt", max_tokens=5, temperature=0,
                                                        messages=[{"role": "user", "content": PROMPTS[4]}])
            assert refused.value.response.headers["retry-after"] == "1"
            assert refused.value.body["code"] == "queue_full"
            server.engine.resume()
            answers = [f.result(timeout=60).choices[0].message.content for f in futures]
    finally:
        server.engine.resume()
    assert answers == want[:4]
    metrics = httpx.get(f"{server.url}/metrics").text
    assert 'svgt_batch_size_bucket{le="4.0"}' in metrics
    count = float(next(line.split()[-1] for line in metrics.splitlines() if line.startswith("svgt_batch_size_count")))
    total = float(next(line.split()[-1] for line in metrics.splitlines() if line.startswith("svgt_batch_size_sum")))
    assert total - count >= 3  # one batch held four requests
    assert 'svgt_requests_total{endpoint="/v1/chat/completions",status="429"} 1.0' in metrics


def test_bad_requests_get_openai_errors_and_the_server_keeps_serving(server):
    client = server.client()
    bad = httpx.post(f"{server.url}/v1/chat/completions", content=b'{"model": "svgt", "messages": [',
                     headers={"content-type": "application/json"})
    assert bad.status_code == 400 and bad.json()["error"]["message"] == "the request body is not valid JSON"
    missing = httpx.post(f"{server.url}/v1/chat/completions", json={"model": "svgt"})
    assert missing.status_code == 400 and missing.json()["error"]["param"] == "messages"
    with pytest.raises(openai.BadRequestError) as empty:
        client.chat.completions.create(model="svgt", messages=[])
    assert empty.value.body["param"] == "messages"
    with pytest.raises(openai.BadRequestError, match="the user message is empty"):
        client.chat.completions.create(model="svgt", messages=[{"role": "user", "content": "  "}])
    with pytest.raises(openai.NotFoundError) as unknown:
        client.chat.completions.create(model="gpt-4", messages=[{"role": "user", "content": "hi"}])
    assert unknown.value.body["code"] == "model_not_found" and "served: svgt, svgt-inject, none" in str(unknown.value)
    with pytest.raises(openai.BadRequestError) as too_many:
        client.chat.completions.create(model="svgt", messages=[{"role": "user", "content": "hi"}], max_tokens=33)
    assert too_many.value.body["param"] == "max_tokens" and "at most 32" in too_many.value.body["message"]
    with pytest.raises(openai.BadRequestError) as too_long:
        client.chat.completions.create(model="svgt", messages=[{"role": "user", "content": "word " * 200}],
                                       max_tokens=4)
    assert too_long.value.body["code"] == "context_length_exceeded"
    with pytest.raises(openai.BadRequestError) as several:
        client.chat.completions.create(model="svgt", messages=[{"role": "user", "content": "hi"}], n=2)
    assert several.value.body["param"] == "n"
    with pytest.raises(openai.BadRequestError, match="is not one of the module's calibrated budgets \\(0.5\\)"):
        client.chat.completions.create(model="svgt", messages=[{"role": "user", "content": "hi"}],
                                       extra_body={"svgt": {"gate_budget": 0.3}})
    # still serving, and a calibrated budget is accepted (its thresholds are never reached: unguided answer)
    ok = client.chat.completions.create(model="svgt", messages=[{"role": "user", "content": PROMPTS[0]}],
                                        max_tokens=4, temperature=0, extra_body={"svgt": {"gate_budget": 0.5}})
    plain = client.chat.completions.create(model="none", messages=[{"role": "user", "content": PROMPTS[0]}],
                                           max_tokens=4, temperature=0)
    assert ok.choices[0].message.content == plain.choices[0].message.content
    assert ok.model_extra["svgt"]["gated"] and ok.model_extra["svgt"]["guided_from"] is None


def test_text_completions_health_ready_and_metrics(server, tiny_pipeline, module_dir):
    client = server.client()
    answer = client.completions.create(model="svgt", prompt=PROMPTS[:3], max_tokens=5, temperature=0)
    assert [c.text for c in answer.choices] == reference(tiny_pipeline, module_dir, PROMPTS[:3], "svgt", 5).texts
    assert httpx.get(f"{server.url}/health").json() == {"status": "ok"}
    ready = httpx.get(f"{server.url}/ready")
    assert ready.status_code == 200 and ready.json()["ready"] and ready.json()["module"]["version"] == "local"
    metrics = httpx.get(f"{server.url}/metrics").text
    for series in ("svgt_request_latency_seconds_bucket", "svgt_time_to_first_token_seconds_bucket",
                   "svgt_completion_tokens_total", "svgt_prompt_tokens_total", "svgt_queue_depth",
                   "svgt_bridge_refreshes_total", "svgt_refusals_total", "svgt_module_info"):
        assert series in metrics, series


def test_requests_batched_together_keep_their_own_limits_and_stop_strings(server, tiny_pipeline, module_dir):
    """Two requests in one batch: the one asking for 2 tokens gets exactly the first 2 tokens of its answer (what a
    run with that limit gives), the other its 6, cut at its own stop string where the answer contains it."""
    long = reference(tiny_pipeline, module_dir, PROMPTS[5:6], "svgt", 6)
    short = reference(tiny_pipeline, module_dir, PROMPTS[6:7], "svgt", 2)
    stop = long.texts[0][2:4]  # a piece of the long answer, so its stop string is really met
    server.engine.pause()
    try:
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            first = pool.submit(server.client().chat.completions.create, model="svgt", max_tokens=6, temperature=0,
                                stop=[stop], messages=[{"role": "user", "content": PROMPTS[5]}])
            second = pool.submit(server.client().chat.completions.create, model="svgt", max_tokens=2, temperature=0,
                                 messages=[{"role": "user", "content": PROMPTS[6]}])
            deadline = time.time() + 10
            while server.engine.queue_depth < 2 and time.time() < deadline:
                time.sleep(0.02)
            server.engine.resume()
            a, b = first.result(timeout=60), second.result(timeout=60)
    finally:
        server.engine.resume()
    assert b.choices[0].message.content == short.texts[0] and b.usage.completion_tokens == len(short.token_ids[0])
    assert a.choices[0].message.content == long.texts[0][: long.texts[0].index(stop)]
    assert a.choices[0].finish_reason == "stop" and a.usage.completion_tokens <= 6


def test_svgt_serve_command_serves_until_stopped(tiny_pipeline, module_dir):
    """The real command in its own process: ready on its port, answers the openai client, shuts down on SIGTERM."""
    import signal
    import subprocess
    import sys

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "svgt.cli", "serve", "--module", str(module_dir), "--backbone",
                             str(tiny_pipeline / "backbone"), "--port", str(port), "--max-tokens", "8"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 120
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/ready").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None and time.time() < deadline, "svgt serve did not become ready"
            time.sleep(0.2)
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0)
        answer = client.chat.completions.create(model="svgt", messages=[{"role": "user", "content": PROMPTS[0]}],
                                                max_tokens=6, temperature=0)
        want = reference(tiny_pipeline, module_dir, PROMPTS[:1], "svgt", 6).texts[0]
        assert answer.choices[0].message.content == want
        with pytest.raises(openai.BadRequestError, match="at most 8"):
            client.chat.completions.create(model="svgt", messages=[{"role": "user", "content": "hi"}], max_tokens=9)
    finally:
        proc.send_signal(signal.SIGTERM)
        output, _ = proc.communicate(timeout=60)
    # uvicorn shuts down gracefully, then re-raises SIGTERM so the exit status still says how it ended
    assert proc.returncode in (0, -signal.SIGTERM) and "Application shutdown complete" in output, output
    assert PROMPTS[0] not in output  # request text stays out of the logs


def test_a_promotion_under_load_swaps_the_version_and_no_request_fails(tiny_pipeline, tmp_path, monkeypatch):
    """`svgt serve --poll-alias` on a real MLflow registry (SQLite): two clients keep asking while the production
    alias moves from version 1 to 2: answers switch from version 1's to version 2's, none fails. Then the alias
    moves to a version whose stored weights were tampered with: it is refused and counted, and version 2 keeps
    answering."""
    from svgt.core.params import RegistryConfig
    from svgt.eval.gates import GateReport, GateResult
    from svgt.registry.versions import promote, register_module
    from svgt.serve.server import AliasPoller

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    cfg = RegistryConfig(tracking_uri=uri, model_name="serve-test", experiment="serve-test")
    model, tok, manifest = load_snapshot(tiny_pipeline / "backbone")
    passed = GateReport(passed=True, results=[GateResult("min_harmful_refusal_gain", 0.4, 0.2, passed=True,
                                                         skipped=False, message="passed")])
    modules = {}

    def register(seed: int) -> int:
        torch.manual_seed(seed)
        module = ValueModule(ValueModuleConfig(hidden_size=32, layer=2, d_v=16, encoder_heads=2, cross_attn_heads=2,
                                               num_bridge_tokens=3, refresh_interval=2)).eval()
        with torch.no_grad():
            module.bridge.gate.fill_(2.0)
        directory = save_value_module(module, tmp_path / f"m{seed}", {"backbone_weights_sha256":
                                                                      manifest.weights_sha256, "data_sha256": "d" * 64})
        modules[seed] = module
        return register_module(directory, passed, cfg, params={}, git_commit=None,
                               artifact_location=str(tmp_path / "artifacts")).version

    assert register(1) == 1 and promote(cfg) == 1
    want = {v: generate_with_module(model, tok, PROMPTS[:1], module=modules[v], method="svgt",
                                    max_new_tokens=4).texts[0] for v in (1,)}
    engine, served = build_engine(tiny_pipeline / "backbone", f"models:/{cfg.model_name}@production",
                                  tracking_uri=uri, max_batch_size=4, max_queue=64)
    assert (served.version, served.alias) == ("1", "production")
    srv = Server(create_app(engine, served, Limits(max_tokens=8, default_max_tokens=4, context_length=160),
                            AliasPoller(engine, served, uri, interval=0.2)))
    answers, errors, stop = [], [], threading.Event()

    def load() -> None:
        client = srv.client()
        while not stop.is_set():
            try:
                r = client.chat.completions.create(model="svgt", max_tokens=4, temperature=0,
                                                   messages=[{"role": "user", "content": PROMPTS[0]}])
                answers.append((r.model_extra["svgt"]["module_version"], r.choices[0].message.content))
            except Exception as err:  # noqa: BLE001 - any failure fails the test below
                errors.append(err)

    def wait_for(condition, what: str, seconds: float = 60) -> None:
        deadline = time.time() + seconds
        while not condition():
            assert time.time() < deadline, f"timed out waiting for {what}"
            time.sleep(0.1)

    clients = [threading.Thread(target=load) for _ in range(2)]
    try:
        for t in clients:
            t.start()
        wait_for(lambda: len(answers) >= 3, "answers from version 1")
        assert register(2) == 2 and promote(cfg) == 2
        want[2] = generate_with_module(model, tok, PROMPTS[:1], module=modules[2], method="svgt",
                                       max_new_tokens=4).texts[0]
        wait_for(lambda: any(v == "2" for v, _ in answers), "answers from version 2")
        # a tampered version: the alias is moved without the registry's own verification
        assert register(3) == 3
        from mlflow import MlflowClient

        stored = MlflowClient(tracking_uri=uri, registry_uri=uri).get_model_version(cfg.model_name, "3").source
        weights = Path(stored.removeprefix("file://")) / "weights.safetensors"
        weights.write_bytes(weights.read_bytes()[:-1] + bytes([weights.read_bytes()[-1] ^ 1]))
        promote(cfg, version=3, verify=False)
        wait_for(lambda: 'svgt_module_swaps_total{result="refused"} 1.0' in httpx.get(f"{srv.url}/metrics").text,
                 "the tampered version to be refused")
        seen = len(answers)
        wait_for(lambda: len(answers) >= seen + 2, "answers after the refusal")
    finally:
        stop.set()
        for t in clients:
            t.join(timeout=60)
        srv.close()
    assert not errors, errors[:3]
    assert want[1] != want[2]  # the two versions answer differently, so each answer shows which one decoded it
    assert {v for v, _ in answers} == {"1", "2"} and answers[-1][0] == "2"
    for version, text in answers:
        assert text == want[int(version)], version
