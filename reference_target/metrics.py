"""GET /metrics: Prometheus text under MediaNest's metric names (prom-client's Node defaults, its HTTP and
database metrics, the newer branch's medianest_* cache and websocket metrics), plus a few reference_target_*
families that say what the stand-in itself injected. The values are read by a prometheus_client custom
collector at scrape time; prometheus_client writes the text (escaping included)."""

from __future__ import annotations

import asyncio
import gc
import time
from bisect import bisect_left
from collections import deque
from collections.abc import Iterator
from itertools import accumulate
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

if TYPE_CHECKING:
    from reference_target.app import Target

# Seconds; prom-client's defaults extended downwards, since most of MediaNest's routes answer in milliseconds.
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class HttpMetrics:
    """http_request_duration_seconds / http_requests_total by method, route template and status code."""

    def __init__(self) -> None:
        self.series: dict[tuple[str, str, str], list] = {}  # key -> [bucket counts (not cumulative), sum]

    def record(self, method: str, route: str, status: int, seconds: float) -> None:
        key = (method, route, str(status))
        series = self.series.get(key)
        if series is None:
            series = self.series[key] = [[0] * (len(BUCKETS) + 1), 0.0]
        series[0][bisect_left(BUCKETS, seconds)] += 1
        series[1] += seconds


class HttpMetricsMiddleware:
    """Times every HTTP request outside Socket.IO; the route label is the matched template (never the raw path,
    so the label set stays bounded), 'unmatched' for a 404 outside every route."""

    def __init__(self, app, metrics: HttpMetrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_and_note(message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            route = scope.get("route")
            self.metrics.record(scope["method"], route.name if route is not None else "unmatched", status,
                                time.perf_counter() - start)


class LoopLagMonitor:
    """nodejs_eventloop_lag_*: how late a 0.5 s asyncio timer fires, over the last minute."""

    INTERVAL_S = 0.5

    def __init__(self) -> None:
        self.samples: deque[float] = deque(maxlen=120)

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            before = loop.time()
            await asyncio.sleep(self.INTERVAL_S)
            self.samples.append(max(loop.time() - before - self.INTERVAL_S, 0.0))

    def summary(self) -> dict[str, float]:
        ordered = sorted(self.samples) or [0.0]
        def pick(q: float) -> float:
            return ordered[min(int(q * len(ordered)), len(ordered) - 1)]
        return {"last": self.samples[-1] if self.samples else 0.0, "p50": pick(0.5), "p90": pick(0.9),
                "p99": pick(0.99), "max": ordered[-1]}


class GcTimer:
    """nodejs_gc_duration_seconds: the time Python's collector spends per generation (gc.callbacks), as prom-client
    times V8's collections by kind."""

    def __init__(self) -> None:
        self.seconds = dict.fromkeys(("0", "1", "2"), 0.0)
        self.counts = dict.fromkeys(("0", "1", "2"), 0)
        self._started = 0.0

    def __call__(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        elif self._started:  # a stop whose start came before install() is not timed
            generation = str(info.get("generation", 0))
            self.seconds[generation] = self.seconds.get(generation, 0.0) + time.perf_counter() - self._started
            self.counts[generation] = self.counts.get(generation, 0) + 1

    def install(self) -> None:
        if self not in gc.callbacks:
            gc.callbacks.append(self)

    def uninstall(self) -> None:
        if self in gc.callbacks:
            gc.callbacks.remove(self)


class TargetCollector:
    """Every family of the target, read at collection time (a custom collector: prometheus_client renders the
    text and escapes the labels)."""

    def __init__(self, target: Target) -> None:
        self.target = target

    def collect(self) -> Iterator[Metric]:
        t = self.target
        proc = t.process
        with proc.oneshot():
            memory = proc.memory_info()
            cpu = proc.cpu_times()
            fds = proc.num_fds()
        yield _counter("process_cpu_user_seconds", "User CPU time spent in seconds.", cpu.user)
        yield _counter("process_cpu_system_seconds", "System CPU time spent in seconds.", cpu.system)
        yield _counter("process_cpu_seconds", "Total user and system CPU time spent in seconds.", cpu.user + cpu.system)
        yield _gauge("process_start_time_seconds", "Start time of the process since unix epoch in seconds.",
                     round(t.started_at))
        yield _gauge("process_resident_memory_bytes", "Resident memory size in bytes.", memory.rss)
        yield _gauge("process_virtual_memory_bytes", "Virtual memory size in bytes.", memory.vms)
        yield _gauge("process_open_fds", "Number of open file descriptors.", fds)
        yield _gauge("nodejs_heap_size_used_bytes",
                     "Stand-in for the V8 heap: resident anonymous memory (RSS minus file-backed and shared pages).",
                     max(memory.rss - getattr(memory, "shared", 0), 0))
        lag = t.lag.summary()
        yield _gauge("nodejs_eventloop_lag_seconds", "Lag of the event loop in seconds (latest sample).", lag["last"])
        for stat in ("p50", "p90", "p99", "max"):
            yield _gauge(f"nodejs_eventloop_lag_{stat}_seconds",
                         f"The {stat} of the event loop lag over the last minute, in seconds.", lag[stat])
        gc_family = HistogramMetricFamily("nodejs_gc_duration_seconds", "Garbage collection duration by kind "
                                          "(here: Python's collector by generation).", labels=["kind"])
        for generation, seconds in sorted(t.gc.seconds.items()):
            gc_family.add_metric([f"gen{generation}"], [("+Inf", t.gc.counts[generation])], seconds)
        yield gc_family
        yield _http_histogram(t.http)
        requests = CounterMetricFamily("http_requests_total", "Total number of HTTP requests.",
                                       labels=["method", "route", "status_code"])
        for key, (counts, _) in sorted(t.http.series.items()):
            requests.add_metric(list(key), sum(counts))
        yield requests
        b = t.behaviour
        yield _gauge("database_connections_active", "Database pool connections in use.", b.pool.active)
        yield _gauge("database_connections_waiting", "Requests queued for a database pool connection.", b.pool.waiting)
        yield _gauge("database_connections_max", "Size of the database pool.", b.pool.size)
        yield _counter("database_connection_attempts", "Requests for a database pool connection.", b.pool.attempts)
        yield _counter("database_connection_failures", "Pool connection requests that failed (timed out).",
                       b.pool.timeouts)
        yield _counter("database_pool_timeouts", "Requests answered 503 after waiting pool_timeout_s.", b.pool.timeouts)
        cache = {"cache": "dashboard"}
        yield _counter("medianest_cache_hits", "Cache hits.", b.dashboard_cache.hits, cache)
        yield _counter("medianest_cache_misses", "Cache misses.", b.dashboard_cache.misses, cache)
        yield _gauge("medianest_cache_entries", "Entries in the cache.", len(b.dashboard_cache), cache)
        sockets = GaugeMetricFamily("medianest_websocket_connections_active", "Connected Socket.IO sockets by namespace.",
                                    labels=["namespace"])
        for namespace, count in sorted(t.sockets.items()):
            sockets.add_metric([namespace], count)
        yield sockets
        yield _gauge("user_sessions_active", "Sessions holding a valid token.", len(t.store.sessions))
        yield _counter("media_requests", "Media requests created.", t.store.requests_created)
        faults = CounterMetricFamily("reference_target_injected_faults_total",
                                     "Faults the reference target injected (error: HTTP 500, stall: no answer).",
                                     labels=["kind"])
        for kind, count in b.faults.injected.items():
            faults.add_metric([kind], count)
        yield faults
        yield _gauge("reference_target_stalled_requests", "Stalled requests whose client is still waiting.",
                     b.faults.stalled_now)
        yield _counter("reference_target_stall_window_held", "Requests and responses held until a stall window "
                       "(--stall-window-s) ended.", b.stall_windows.held)
        yield _gauge("reference_target_leaked_bytes", "Bytes kept by leak mode (never freed).", b.leak.retained_bytes)


def _gauge(name: str, help_text: str, value: float, labels: dict[str, str] | None = None) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, help_text, labels=list(labels or {}))
    family.add_metric(list((labels or {}).values()), value)
    return family


def _counter(name: str, help_text: str, value: float, labels: dict[str, str] | None = None) -> CounterMetricFamily:
    family = CounterMetricFamily(name, help_text, labels=list(labels or {}))
    family.add_metric(list((labels or {}).values()), value)
    return family


def _http_histogram(http: HttpMetrics) -> HistogramMetricFamily:
    family = HistogramMetricFamily("http_request_duration_seconds", "Duration of HTTP requests in seconds.",
                                   labels=["method", "route", "status_code"])
    for key, (counts, total) in sorted(http.series.items()):
        cumulative = list(accumulate(counts))
        family.add_metric(list(key), [(f"{bound:g}", count) for bound, count in zip(BUCKETS, cumulative, strict=False)]
                          + [("+Inf", cumulative[-1])], total)
    return family


def registry_for(target: Target) -> CollectorRegistry:
    """The target's own registry (never the global one: tests start several targets' apps in one process)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(TargetCollector(target))
    return registry


def render(registry: CollectorRegistry) -> bytes:
    """The whole exposition; cheap enough for a scrape every second (one /proc read, a few hundred lines)."""
    return generate_latest(registry)
