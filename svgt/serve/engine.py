"""The serving engine: one backbone, a bounded queue, a worker thread that decodes requests in batches.

Requests that share the decode settings a batch must share (method, sampling, refresh interval, gate
budget) are decoded together through the same batched, KV-cached guided loop as `svgt generate`, so a
greedy answer is the one `svgt generate` gives for the same prompt. Rows are independent in that loop,
so each request keeps its own token limit and stop strings: the batch decodes to the largest limit and
each row is cut to its own (its first N tokens are those a run with limit N produces). A request with a
``seed`` is decoded alone, so the seed means what it means for `svgt generate --seed`.

A request may watch its tokens as they are decoded (``on_token``: the server streams them). Not yet (issue
15): requests that arrive while a batch decodes wait for the next batch (no joining mid-decode), and a
finished row keeps its slot until the batch ends.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from svgt.backbone.runner import BlockRunner
from svgt.core.errors import Transient
from svgt.decoding.loop import guided_generate
from svgt.methods import GuidanceMethod

log = logging.getLogger(__name__)


class QueueFull(Transient):
    """The engine's queue is at ``max_queue``: the caller should retry later."""


@dataclass(frozen=True)
class BatchKey:
    """What every request in one batch must share."""

    method: str
    do_sample: bool
    temperature: float
    top_p: float
    refresh_interval: int | None
    gate_budget: float | None


@dataclass
class Request:
    key: BatchKey
    prompt_ids: list[int]
    max_tokens: int
    stop: Sequence[str] = ()
    seed: int | None = None
    # called from the engine's thread with each token of this request's answer as it is decoded (streaming);
    # never past max_tokens (a stop string is the caller's to watch for)
    on_token: Callable[[int], None] | None = None
    future: Future = field(default_factory=Future)
    enqueued: float = field(default_factory=time.perf_counter)


@dataclass
class Completion:
    token_ids: list[int]
    text: str
    finish_reason: str  # OpenAI's: "stop" (a stop token or string) or "length"
    prompt_tokens: int
    guided_from: int | None  # the first guided step (gated SVGT), None if the gate never opened or no gate
    gated: bool  # whether the method has a gate (guided_from is meaningful)
    batch_size: int
    refreshes: int
    queued_s: float
    decode_s: float
    served: Any = None  # what answered: the engine's ``served`` label when this request was decoded


def cut_at_stop(tokenizer: Any, token_ids: list[int], stop: Sequence[str]) -> tuple[list[int], str, bool]:
    """(tokens up to and including the one whose text completes a stop string, text before the stop string,
    whether one was found), as the decode loop cuts a row at its own stop strings."""
    text = tokenizer.decode(token_ids, skip_special_tokens=True)
    if not stop or not any(s in text for s in stop):
        return token_ids, text, False
    for k in range(1, len(token_ids) + 1):
        head = tokenizer.decode(token_ids[:k], skip_special_tokens=True)
        hits = [head.find(s) for s in stop if s in head]
        if hits:
            return token_ids[:k], head[: min(hits)], True
    return token_ids, text, False  # unreachable: the whole text holds a stop string


class Engine:
    """Owns the backbone while serving; ``submit`` is thread-safe and never blocks on decoding."""

    def __init__(self, model: Any, tokenizer: Any, methods: dict[str, GuidanceMethod], *, max_batch_size: int = 16,
                 max_queue: int = 256, on_batch: Callable[[list[Request], list[Completion]], None] | None = None,
                 served: Any = None):
        if max_batch_size < 1 or max_queue < 1:
            raise ValueError(f"max_batch_size and max_queue must be >= 1, got {max_batch_size} and {max_queue}")
        self.model, self.tokenizer, self.methods = model, tokenizer, methods
        self.runner = BlockRunner(model)
        self.max_batch_size, self.max_queue = max_batch_size, max_queue
        self.on_batch = on_batch
        self.stop_token_ids = None  # the decode loop's default: every EOS of the tokenizer and generation config
        self._queue: collections.deque[Request] = collections.deque()
        self._cond = threading.Condition()
        self._running = False
        self._paused = False
        self._thread: threading.Thread | None = None
        self._gated: dict[tuple[str, float | None], GuidanceMethod] = {}
        self.served = served  # a label of what is being served, copied into every Completion
        self.backbone_sha256: str | None = None  # the backbone's weights checksum, when known (a swap must match it)
        self._swap: tuple[dict[str, GuidanceMethod], Any, Callable[[], None] | None] | None = None

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        with self._cond:
            if self._running:
                return
            self._running = True
        self._thread = threading.Thread(target=self._loop, name="svgt-engine", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        with self._cond:
            self._running = False
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join()
        for request in self._drain():
            request.future.set_exception(RuntimeError("the server is shutting down"))

    def pause(self) -> None:
        """Stop taking new batches (the one decoding finishes); requests queue up until ``resume``."""
        with self._cond:
            self._paused = True

    def resume(self) -> None:
        with self._cond:
            self._paused = False
            self._cond.notify_all()

    @property
    def queue_depth(self) -> int:
        with self._cond:
            return len(self._queue)

    # ------------------------------------------------------------------ requests

    def submit(self, request: Request) -> Future:
        if request.key.method not in self.methods:
            raise KeyError(request.key.method)
        with self._cond:
            if len(self._queue) >= self.max_queue:
                raise QueueFull(f"{len(self._queue)} requests are queued (max_queue {self.max_queue})")
            self._queue.append(request)
            self._cond.notify()
        return request.future

    def swap(self, methods: dict[str, GuidanceMethod], served: Any,
             on_swapped: Callable[[], None] | None = None) -> None:
        """Serve ``methods`` (labelled ``served``) from the next batch on: the batch decoding now finishes on
        what it started with; every later batch, queued requests included, gets the new ones."""
        with self._cond:
            self._swap = (methods, served, on_swapped)
            self._cond.notify_all()

    def _apply_swap(self) -> None:
        with self._cond:
            pending, self._swap = self._swap, None
        if pending is not None:
            self.methods, self.served, done = pending
            self._gated.clear()
            if done is not None:
                done()

    def _drain(self) -> list[Request]:
        with self._cond:
            pending = list(self._queue)
            self._queue.clear()
        return pending

    def _next_batch(self) -> list[Request] | None:
        with self._cond:
            while self._running and self._swap is None and (self._paused or not self._queue):
                self._cond.wait()
            if not self._running:
                return None
            if self._swap is not None:  # a swap arrived while waiting: apply it before taking requests
                return []
            first = self._queue.popleft()
            batch = [first]
            if first.seed is None:
                for request in list(self._queue):
                    if len(batch) >= self.max_batch_size:
                        break
                    if request.key == first.key and request.seed is None:
                        self._queue.remove(request)
                        batch.append(request)
            return batch

    def _loop(self) -> None:
        while True:
            self._apply_swap()
            batch = self._next_batch()
            if batch is None:
                return
            if not batch:
                continue
            try:
                completions = self.decode(batch)
            except BaseException as err:  # one bad batch must not kill the server
                log.exception("a batch of %d request(s) failed", len(batch))
                for request in batch:
                    if not request.future.done():
                        request.future.set_exception(err)
                continue
            if self.on_batch is not None:
                self.on_batch(batch, completions)
            for request, completion in zip(batch, completions, strict=True):
                request.future.set_result(completion)

    # ------------------------------------------------------------------ decoding

    def method_for(self, key: BatchKey) -> GuidanceMethod:
        method = self.methods[key.method]
        if key.gate_budget is None:
            return method
        if method.module is None:
            raise ValueError(f"model {key.method!r} has no gate: svgt.gate_budget applies to value-module methods")
        cache_key = (key.method, key.gate_budget)
        if cache_key not in self._gated:
            self._gated[cache_key] = GuidanceMethod(method.name, module=method.module.at_gate_budget(key.gate_budget))
        return self._gated[cache_key]

    def decode(self, batch: list[Request]) -> list[Completion]:
        """Decode ``batch`` (requests sharing a ``BatchKey``) in one call of the guided loop."""
        key = batch[0].key
        method = self.method_for(key)
        started = time.perf_counter()
        options: dict[str, Any] = {"max_new_tokens": max(r.max_tokens for r in batch), "do_sample": key.do_sample,
                                   "temperature": key.temperature, "top_p": key.top_p, "seed": batch[0].seed,
                                   "stop_token_ids": self.stop_token_ids}
        ids = [r.prompt_ids for r in batch]
        sent = [0] * len(batch)

        def stream(tokens: dict[int, int]) -> None:
            for i, token in tokens.items():
                request = batch[i]
                if request.on_token is not None and sent[i] < request.max_tokens:
                    sent[i] += 1
                    request.on_token(token)

        if any(r.on_token is not None for r in batch):
            options["on_step"] = stream
        if method.baseline is not None:  # the prompt ids already carry what the baseline adds to a prompt
            with method.baseline.applied(self.model):
                out = guided_generate(self.model, self.tokenizer, ids, runner=self.runner, **options)
        else:
            if key.refresh_interval is not None and method.module is not None:
                options["refresh_interval"] = key.refresh_interval
            out = method.generate(self.model, self.tokenizer, ids, runner=self.runner, **options)
        decode_s = time.perf_counter() - started
        completions = []
        for i, request in enumerate(batch):
            tokens = out.token_ids[i][: request.max_tokens]
            stopped = out.finish_reasons[i] == "stop_token" and len(out.token_ids[i]) <= request.max_tokens
            tokens, text, cut = cut_at_stop(self.tokenizer, tokens, request.stop)
            guided = out.guided_from[i] if out.guided_from is not None else None
            completions.append(Completion(tokens, text, "stop" if stopped or cut else "length", len(request.prompt_ids),
                                          guided if guided is None or guided < len(tokens) else None,
                                          out.guided_from is not None, len(batch), out.timing.refreshes,
                                          started - request.enqueued, decode_s, self.served))
        return completions
