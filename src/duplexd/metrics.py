"""Prometheus helpers and in-process percentile windows.

Each daemon owns a `CollectorRegistry` (not the global one) so tests can run several daemons
in one process. `LatencyWindow` keeps the last N samples for the p50/p95 figures that workers
report over gRPC and in Redis; Prometheus histograms carry the same values for scraping.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

__all__ = [
    "LATENCY_BUCKETS_MS",
    "LatencyWindow",
    "counter",
    "gauge",
    "histogram_ms",
    "percentile",
    "serve_metrics",
]

# Milliseconds: dense where our targets live (5-500 ms), sparse beyond.
LATENCY_BUCKETS_MS: tuple[float, ...] = (
    1,
    2,
    5,
    10,
    15,
    20,
    25,
    30,
    40,
    50,
    60,
    80,
    100,
    150,
    200,
    250,
    300,
    350,
    400,
    500,
    750,
    1000,
    2000,
    5000,
)


def histogram_ms(
    registry: CollectorRegistry, name: str, doc: str, labels: Iterable[str] = ()
) -> Histogram:
    return Histogram(name, doc, list(labels), registry=registry, buckets=LATENCY_BUCKETS_MS)


def counter(
    registry: CollectorRegistry, name: str, doc: str, labels: Iterable[str] = ()
) -> Counter:
    return Counter(name, doc, list(labels), registry=registry)


def gauge(registry: CollectorRegistry, name: str, doc: str, labels: Iterable[str] = ()) -> Gauge:
    return Gauge(name, doc, list(labels), registry=registry)


def serve_metrics(registry: CollectorRegistry, port: int, host: str = "127.0.0.1") -> int:
    """Start /metrics on a background thread; returns the bound port (0 picks one)."""
    server, _thread = start_http_server(port, addr=host, registry=registry)
    return int(server.server_port)


def percentile(values: Iterable[float], q: float) -> float:
    """The q-th percentile (0-100) of `values`, or 0.0 when there are none."""
    arr = np.fromiter(values, dtype=np.float64)
    return float(np.percentile(arr, q)) if arr.size else 0.0


class LatencyWindow:
    """The last `size` samples of one latency, for p50/p95 without a scrape."""

    def __init__(self, size: int = 512) -> None:
        self._values: deque[float] = deque(maxlen=size)

    def add(self, value_ms: float) -> None:
        self._values.append(value_ms)

    def p(self, q: float) -> float:
        return percentile(self._values, q)

    def __len__(self) -> int:
        return len(self._values)
