"""The Prometheus series of one server (its own registry, so several apps in one process never collide)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


class ServeMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("svgt_requests", "HTTP API requests by endpoint and status", ["endpoint", "status"],
                                registry=r)
        self.prompt_tokens = Counter("svgt_prompt_tokens", "prompt tokens of answered requests", ["model"], registry=r)
        self.completion_tokens = Counter("svgt_completion_tokens", "generated tokens returned", ["model"], registry=r)
        self.latency = Histogram("svgt_request_latency_seconds", "from the request's arrival to its last token",
                                 ["model"], buckets=LATENCY_BUCKETS, registry=r)
        self.ttft = Histogram("svgt_time_to_first_token_seconds",
                              "from the request's arrival until its first token could be sent", ["model"],
                              buckets=LATENCY_BUCKETS, registry=r)
        self.queue_depth = Gauge("svgt_queue_depth", "requests waiting for a batch", registry=r)
        self.batch_size = Histogram("svgt_batch_size", "requests decoded together", buckets=(1, 2, 4, 8, 16, 32, 64),
                                    registry=r)
        self.refreshes = Counter("svgt_bridge_refreshes", "bridge refreshes in decoded batches", ["model"], registry=r)
        self.guided = Counter("svgt_guided_answers", "answers on which the value module's gate opened", ["model"],
                              registry=r)
        self.refusals = Counter("svgt_refusals", "answers the refusal judge reads as refusals", ["model"], registry=r)
        self.swaps = Counter("svgt_module_swaps", "alias moves acted on: swapped in, or refused (failed verification)",
                             ["result"], registry=r)
        self.module = Gauge("svgt_module_info", "the value module being served (value 1)",
                            ["version", "alias", "source"], registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)
