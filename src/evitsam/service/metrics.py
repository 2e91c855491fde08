"""Prometheus metrics of one service instance (its own registry, so several apps can live in one process)."""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.types import ASGIApp, Message, Receive, Scope, Send

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class Metrics:
    def __init__(self) -> None:
        self.registry = registry = CollectorRegistry()
        self.requests = Counter(
            "evitsam_requests", "HTTP requests answered", ["method", "route", "status"], registry=registry
        )
        self.latency = Histogram(
            "evitsam_request_seconds",
            "time to answer, by route",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.cache_hits = Counter("evitsam_cache_hits", "uploads answered from the embedding cache", registry=registry)
        self.cache_misses = Counter("evitsam_cache_misses", "uploads that ran the encoder", registry=registry)
        self.cache_evictions = Counter("evitsam_cache_evictions", "images evicted from the cache", registry=registry)
        self.cache_bytes = Gauge("evitsam_cache_bytes", "bytes held by the embedding cache", registry=registry)
        self.cache_images = Gauge("evitsam_cache_images", "images in the embedding cache", registry=registry)
        self.encoder_seconds = Histogram(
            "evitsam_encoder_seconds", "encoder time per new image", buckets=LATENCY_BUCKETS, registry=registry
        )
        self._seen = (0, 0, 0)

    def observe_store(self, store) -> None:
        hits, misses, evictions = store.hits, store.misses, store.evictions
        self.cache_hits.inc(hits - self._seen[0])
        self.cache_misses.inc(misses - self._seen[1])
        self.cache_evictions.inc(evictions - self._seen[2])
        self._seen = (hits, misses, evictions)
        self.cache_bytes.set(store.nbytes)
        self.cache_images.set(len(store))

    def render(self) -> bytes:
        return generate_latest(self.registry)


class MetricsMiddleware:
    """Counts and times every request by its route template (``/v1/images/{image_id}/embedding``), not its URL."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = {"code": 500}

        async def send_status(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route = scope.get("route")
            name = getattr(route, "path", None) or "unmatched"
            self.metrics.requests.labels(scope["method"], name, str(status["code"])).inc()
            self.metrics.latency.labels(name).observe(time.perf_counter() - start)
