"""Prometheus metrics, one registry per app so tests can build many apps in one process."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("steer_http_requests", "HTTP requests", ["route", "method", "status"], registry=r)
        self.latency = Histogram("steer_http_request_seconds", "HTTP request latency", ["route"], registry=r)
        self.batch_size = Histogram(
            "steer_batch_size", "Rows per generation batch", buckets=(1, 2, 3, 4, 6, 8, 12, 16, 32), registry=r
        )
        self.queue_depth = Gauge("steer_queue_depth", "Generation requests waiting for a batch", registry=r)
        self.generated_tokens = Counter("steer_generated_tokens", "Tokens generated", registry=r)
        self.vector_cache = Counter("steer_vector_cache", "Vector lookups in process memory", ["result"], registry=r)
        self.computations = Counter(
            "steer_vector_computations", "Vector computations", ["method", "outcome"], registry=r
        )
        self.compute_seconds = Histogram(
            "steer_vector_compute_seconds",
            "Time to compute a task's vectors",
            ["method"],
            buckets=(1, 5, 15, 30, 60, 120, 300, 900),
            registry=r,
        )
