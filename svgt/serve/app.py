"""The HTTP API: OpenAI's chat and text completions over the engine, plus health, readiness and metrics.

Every answer says which value module produced it: the ``svgt`` field of the body (module version, registry
alias, weights checksum, whether the gate opened) and the ``x-svgt-module-version`` header. Bad requests get
OpenAI-style error bodies and a 4xx (429 with Retry-After when the queue is full); the server keeps serving
everyone else. Request text is never logged unless the ``svgt.serve`` logger is at DEBUG.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse

from svgt.backbone.text import encode_messages
from svgt.eval.judges import RefusalJudge
from svgt.serve.engine import BatchKey, Completion, Engine, QueueFull
from svgt.serve.engine import Request as EngineRequest
from svgt.serve.metrics import ServeMetrics
from svgt.serve.protocol import APIError, ChatCompletionRequest, CompletionRequest

log = logging.getLogger("svgt.serve")

VERSION_HEADER = "x-svgt-module-version"
REPLICA_HEADER = "x-svgt-replica"  # host:pid of the server process that answered (several under Ray Serve)
REPLICA = f"{socket.gethostname()}:{os.getpid()}"


@dataclass(frozen=True)
class ServedModule:
    """Which value module answers: where it came from and how to name it in every response."""

    source: str  # the --module argument (a path or models:/NAME@ALIAS)
    version: str  # the registry version, or "local" for a directory
    alias: str | None
    weights_sha256: str

    @property
    def label(self) -> str:
        return f"{self.version}@{self.alias}" if self.alias else self.version


@dataclass(frozen=True)
class Limits:
    max_tokens: int = 512  # the most new tokens a request may ask for
    default_max_tokens: int = 128  # when a chat request does not say
    context_length: int = 2048  # prompt plus new tokens


def _refuse_unsupported(body: ChatCompletionRequest | CompletionRequest) -> None:
    if body.n != 1:
        raise APIError(400, "only n=1 is supported", param="n", code="unsupported_value")


class App:
    """Route handlers bound to one engine (kept out of closures so they read like the API they implement)."""

    def __init__(self, engine: Engine, served: ServedModule, limits: Limits, metrics: ServeMetrics):
        self.engine, self.served, self.limits, self.metrics = engine, served, limits, metrics
        self.refusal = RefusalJudge()
        self.ready = False
        metrics.module.labels(served.version, served.alias or "", served.source).set(1)
        engine.on_batch = self._after_batch
        engine.served = served

    def swapped(self, served: ServedModule) -> None:
        """The engine now decodes with ``served`` (called from its thread between batches)."""
        old, self.served = self.served, served
        self.metrics.module.remove(old.version, old.alias or "", old.source)
        self.metrics.module.labels(served.version, served.alias or "", served.source).set(1)
        self.metrics.swaps.labels("swapped").inc()
        log.info("now serving %s version %s (was %s)", served.source, served.version, old.version)

    def refused(self, version: str, reason: str) -> None:
        self.metrics.swaps.labels("refused").inc()
        log.error("alias moved to version %s, which was refused: %s; still serving version %s", version, reason,
                  self.served.version)

    # ------------------------------------------------------------------ helpers

    def _key(self, body: ChatCompletionRequest | CompletionRequest) -> BatchKey:
        if body.model not in self.engine.methods:
            raise APIError(404, f"model {body.model!r} does not exist (served: {', '.join(self.engine.methods)})",
                           param="model", code="model_not_found")
        options = body.svgt
        if options is not None and options.gate_budget is not None:
            method = self.engine.methods[body.model]
            if method.module is None:
                raise APIError(400, f"model {body.model!r} has no gate: svgt.gate_budget needs a value-module model",
                               param="svgt.gate_budget")
            known = sorted(p.budget for p in method.module.config.gate_points)
            if not any(abs(b - options.gate_budget) < 1e-9 for b in known):
                raise APIError(400, f"svgt.gate_budget {options.gate_budget:g} is not one of the module's calibrated "
                                    f"budgets ({', '.join(f'{b:g}' for b in known) or 'none'})",
                               param="svgt.gate_budget")
        greedy = body.temperature == 0
        return BatchKey(body.model, not greedy, 1.0 if greedy else body.temperature, 1.0 if greedy else body.top_p,
                        options.refresh_interval if options else None, options.gate_budget if options else None)

    def _prompt_ids(self, model: str, messages: list[dict[str, str]]) -> list[int]:
        """The conversation's ids as the model's method sees them (the system-prompt baseline puts its
        instruction first)."""
        baseline = self.engine.methods[model].baseline
        system = getattr(baseline, "text", None) if baseline is not None and baseline.method == "system-prompt" \
            else None
        return encode_messages(self.engine.tokenizer, messages, True, system_prompt=system)

    def _limit(self, requested: int | None, default: int, prompt_tokens: int, field: str) -> int:
        n = default if requested is None else requested
        if n > self.limits.max_tokens:
            raise APIError(400, f"{field} is {n}; this server allows at most {self.limits.max_tokens}", param=field,
                           code="max_tokens_exceeded")
        if prompt_tokens + n > self.limits.context_length:
            raise APIError(400, f"the prompt has {prompt_tokens} tokens and {field} is {n}: more than the "
                                f"context length {self.limits.context_length}", param="messages",
                           code="context_length_exceeded")
        return n

    def _submit(self, requests: list[EngineRequest]) -> list[Any]:
        futures = []
        try:
            for r in requests:
                futures.append(self.engine.submit(r))
        except QueueFull as err:
            for f in futures:
                f.cancel()
            raise APIError(429, f"the server is busy: {err}; retry shortly", code="queue_full",
                           kind="rate_limit_error", headers={"Retry-After": "1"}) from None
        finally:
            self.metrics.queue_depth.set(self.engine.queue_depth)
        return futures

    async def _run(self, requests: list[EngineRequest]) -> list[Completion]:
        futures = self._submit(requests)
        return list(await asyncio.gather(*(asyncio.wrap_future(f) for f in futures)))

    def _after_batch(self, batch: list[EngineRequest], completions: list[Completion]) -> None:
        self.metrics.batch_size.observe(len(batch))
        self.metrics.queue_depth.set(self.engine.queue_depth)
        model = batch[0].key.method
        self.metrics.refreshes.labels(model).inc(completions[0].refreshes if completions else 0)
        for c in completions:
            self.metrics.prompt_tokens.labels(model).inc(c.prompt_tokens)
            self.metrics.completion_tokens.labels(model).inc(len(c.token_ids))
            if c.guided_from is not None:
                self.metrics.guided.labels(model).inc()
            if self.refusal(c.text):
                self.metrics.refusals.labels(model).inc()

    def _svgt_field(self, c: Completion) -> dict[str, Any]:
        served = c.served or self.served  # the version that decoded this answer
        return {"module_version": served.version, "alias": served.alias, "weights_sha256": served.weights_sha256,
                "guided_from": c.guided_from if c.gated else None, "gated": c.gated}

    def _headers(self, c: Completion | None = None) -> dict[str, str]:
        """A stream's headers go out before decoding: they name the version serving at that moment."""
        return {VERSION_HEADER: (c.served if c is not None and c.served else self.served).label,
                REPLICA_HEADER: REPLICA}

    def _usage(self, completions: list[Completion]) -> dict[str, int]:
        prompt = sum(c.prompt_tokens for c in completions)
        done = sum(len(c.token_ids) for c in completions)
        return {"prompt_tokens": prompt, "completion_tokens": done, "total_tokens": prompt + done}

    def _observe(self, model: str, started: float, first_token: float | None = None) -> None:
        """Latency now; time to first token: when a stream sent it, else now (the whole answer at once)."""
        now = time.perf_counter()
        self.metrics.latency.labels(model).observe(now - started)
        self.metrics.ttft.labels(model).observe((first_token or now) - started)

    # ------------------------------------------------------------------ routes

    async def chat(self, body: ChatCompletionRequest) -> Any:
        started = time.perf_counter()
        _refuse_unsupported(body)
        key = self._key(body)
        last = body.messages[-1]
        if last.role != "user":
            raise APIError(400, f"the last message must be the user's, got {last.role!r}", param="messages")
        if not last.content.strip():
            raise APIError(400, "the user message is empty", param="messages")
        ids = self._prompt_ids(body.model, [{"role": m.role, "content": m.content} for m in body.messages])
        limit = self._limit(body.token_limit(), self.limits.default_max_tokens, len(ids),
                            "max_completion_tokens" if body.max_completion_tokens else "max_tokens")
        log.debug("chat request %s: %r", body.model, last.content)
        rid, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        if body.stream:
            loop = asyncio.get_running_loop()
            tokens: asyncio.Queue[int] = asyncio.Queue()
            request = EngineRequest(key, ids, limit, body.stop_strings(), body.seed,
                                    on_token=lambda t: loop.call_soon_threadsafe(tokens.put_nowait, t))
            [future] = self._submit([request])  # a full queue answers 429 before the stream starts
            return StreamingResponse(self._chat_stream(rid, created, body.model, request, future, tokens, started),
                                     media_type="text/event-stream", headers=self._headers())
        [completion] = await self._run([EngineRequest(key, ids, limit, body.stop_strings(), body.seed)])
        self._observe(body.model, started)
        answer = {"id": rid, "object": "chat.completion", "created": created, "model": body.model,
                  "choices": [{"index": 0, "message": {"role": "assistant", "content": completion.text},
                               "finish_reason": completion.finish_reason}],
                  "usage": self._usage([completion]), "svgt": self._svgt_field(completion)}
        return JSONResponse(answer, headers=self._headers(completion))

    async def _chat_stream(self, rid: str, created: int, model: str, request: EngineRequest, future: Any,
                           tokens: asyncio.Queue[int], started: float) -> AsyncIterator[str]:
        """Server-sent events: a role chunk, text deltas as tokens are decoded, a last chunk with the finish
        reason, usage and module fields, then [DONE]. Text that could still turn into a stop string (its last
        len(longest stop) - 1 characters) or an incomplete UTF-8 character is held back until it cannot."""
        def chunk(delta: dict[str, Any], finish: str | None, **extra: Any) -> str:
            data = {"id": rid, "object": "chat.completion.chunk", "created": created, "model": model,
                    "choices": [{"index": 0, "delta": delta, "finish_reason": finish}], **extra}
            return f"data: {json.dumps(data)}\n\n"

        yield chunk({"role": "assistant", "content": ""}, None)
        hold = max((len(s) for s in request.stop), default=1) - 1
        done = asyncio.wrap_future(future)
        ids: list[int] = []
        sent, first_token = "", None
        while True:
            waiting = asyncio.ensure_future(tokens.get())
            finished, _ = await asyncio.wait({waiting, done}, return_when=asyncio.FIRST_COMPLETED)
            if waiting not in finished:
                waiting.cancel()
                break  # tokens are queued before their batch's result, so none is left behind
            ids.append(waiting.result())
            first_token = first_token or time.perf_counter()
            text = self.engine.tokenizer.decode(ids, skip_special_tokens=True)
            hits = [text.find(s) for s in request.stop if s in text]
            safe = text[: min(hits)] if hits else text[: len(text) - hold]
            safe = safe.rstrip("\ufffd")
            if len(safe) > len(sent) and safe.startswith(sent):
                yield chunk({"content": safe[len(sent):]}, None)
                sent = safe
        try:
            c = done.result()
        except Exception as err:  # the status line is gone: report the failure in the stream, as OpenAI does
            log.exception("a streamed request failed")
            failure = APIError(500, f"internal error: {type(err).__name__}", kind="server_error")
            yield f"data: {json.dumps(failure.body())}\n\n"
            return
        if c.text.startswith(sent) and len(c.text) > len(sent):
            yield chunk({"content": c.text[len(sent):]}, None)
        self._observe(model, started, first_token)
        yield chunk({}, c.finish_reason, usage=self._usage([c]), svgt=self._svgt_field(c))
        yield "data: [DONE]\n\n"

    async def completions(self, body: CompletionRequest) -> Any:
        started = time.perf_counter()
        _refuse_unsupported(body)
        if body.stream:
            raise APIError(400, "stream is supported on /v1/chat/completions only", param="stream")
        key = self._key(body)
        prompts = body.prompts()
        if not prompts or any(not p.strip() for p in prompts):
            raise APIError(400, "prompt is empty", param="prompt")
        requests = []
        for p in prompts:
            ids = self._prompt_ids(body.model, [{"role": "user", "content": p}])
            limit = self._limit(body.token_limit(), 16, len(ids), "max_tokens")
            requests.append(EngineRequest(key, ids, limit, body.stop_strings(), body.seed))
        completions = await self._run(requests)
        self._observe(body.model, started)
        answer = {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": int(time.time()),
                  "model": body.model,
                  "choices": [{"index": i, "text": c.text, "finish_reason": c.finish_reason, "logprobs": None}
                              for i, c in enumerate(completions)],
                  "usage": self._usage(completions), "svgt": [self._svgt_field(c) for c in completions]}
        return JSONResponse(answer, headers=self._headers(completions[0]))

    def models(self) -> dict[str, Any]:
        return {"object": "list", "data": [{"id": name, "object": "model", "created": 0, "owned_by": "svgt"}
                                           for name in self.engine.methods]}


def create_app(engine: Engine, served: ServedModule, limits: Limits | None = None, poller: Any = None) -> FastAPI:
    """The FastAPI application for ``engine`` (started and stopped with the app); ``poller`` (an
    ``svgt.serve.server.AliasPoller``) swaps in the version its alias moves to."""
    metrics = ServeMetrics()
    handlers = App(engine, served, limits or Limits(), metrics)
    if poller is not None:
        poller.on_swapped, poller.on_refused = handlers.swapped, handlers.refused

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        engine.start()
        if poller is not None:
            poller.start()
        handlers.ready = True
        try:
            yield
        finally:
            handlers.ready = False
            if poller is not None:
                poller.stop()
            engine.stop()

    app = FastAPI(title="svgt serve", lifespan=lifespan)
    app.state.handlers = handlers

    def count(endpoint: str, status: int) -> None:
        metrics.requests.labels(endpoint, str(status)).inc()

    @app.exception_handler(APIError)
    async def api_error(request: Request, err: APIError) -> JSONResponse:
        count(request.url.path, err.status)
        return JSONResponse(err.body(), status_code=err.status, headers=err.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, err: RequestValidationError) -> JSONResponse:
        first = err.errors()[0] if err.errors() else {}
        where = [str(p) for p in first.get("loc", ()) if p != "body"]
        if first.get("type") == "json_invalid":
            message, param = "the request body is not valid JSON", None
        else:
            param = ".".join(where) or None
            message = f"{param or 'body'}: {first.get('msg', 'invalid value')}"
        count(request.url.path, 400)
        return JSONResponse(APIError(400, message, param=param).body(), status_code=400)

    @app.exception_handler(Exception)
    async def failed(request: Request, err: Exception) -> JSONResponse:
        log.exception("request to %s failed", request.url.path)
        count(request.url.path, 500)
        return JSONResponse(APIError(500, f"internal error: {type(err).__name__}", kind="server_error").body(),
                            status_code=500)

    @app.post("/v1/chat/completions")
    async def chat(body: ChatCompletionRequest) -> Any:
        response = await handlers.chat(body)
        count("/v1/chat/completions", 200)
        return response

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest) -> Any:
        response = await handlers.completions(body)
        count("/v1/completions", 200)
        return response

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return handlers.models()

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/ready")
    async def ready() -> JSONResponse:
        body = {"ready": handlers.ready, "module": asdict(served), "models": list(engine.methods), "replica": REPLICA}
        return JSONResponse(body, status_code=200 if handlers.ready else 503)

    @app.get("/metrics")
    async def prometheus() -> PlainTextResponse:
        metrics.queue_depth.set(engine.queue_depth)
        return PlainTextResponse(metrics.render(), media_type="text/plain; version=0.0.4")

    return app
