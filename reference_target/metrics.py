"""GET /metrics: Prometheus text under MediaNest's metric names (prom-client's Node defaults, its HTTP and
database metrics, the newer branch's medianest_* cache and websocket metrics), plus a few reference_target_*
families that say what the stand-in itself injected. The target hands a MetricsSnapshot of its values to a
prometheus_client custom collector at scrape time; prometheus_client writes the text (escaping included). The
instruments the target times itself with (HTTP durations, loop lag, GC) live here too."""

from __future__ import annotations

import asyncio
import gc
import time
from bisect import bisect_left
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from itertools import accumulate
from typing import Any

import psutil
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

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

    def readings(self) -> dict[tuple[str, str, str], tuple[Sequence[int], float]]:
        """A copy of every series: (bucket counts, not cumulative; sum of seconds)."""
        return {key: (tuple(counts), total) for key, (counts, total) in self.series.items()}


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


def heap_used_bytes(memory: Any) -> int:
    """The stand-in for V8's heap: resident anonymous memory (RSS minus file-backed and shared pages)."""
    return max(memory.rss - getattr(memory, "shared", 0), 0)


@dataclass(frozen=True)
class ProcessReading:
    """What the operating system says of the target process (prom-client's process_* defaults)."""

    cpu_user_s: float
    cpu_system_s: float
    started_at: float
    rss_bytes: int
    vms_bytes: int
    open_fds: int
    heap_used_bytes: int


def read_process(process: psutil.Process, started_at: float) -> ProcessReading:
    """One /proc read (oneshot) per scrape."""
    with process.oneshot():
        memory = process.memory_info()
        cpu = process.cpu_times()
        fds = process.num_fds()
    return ProcessReading(cpu_user_s=cpu.user, cpu_system_s=cpu.system, started_at=started_at, rss_bytes=memory.rss,
                          vms_bytes=memory.vms, open_fds=fds, heap_used_bytes=heap_used_bytes(memory))


@dataclass(frozen=True)
class PoolReading:
    """The database pool's gauges and counters."""

    active: int
    waiting: int
    size: int
    attempts: int
    timeouts: int


@dataclass(frozen=True)
class MetricsSnapshot:
    """Every value /metrics renders, read from the target at scrape time: this module knows the metric names and
    nothing of how the target keeps its state."""

    process: ProcessReading
    loop_lag: Mapping[str, float]  # last, p50, p90, p99, max (LoopLagMonitor.summary)
    gc_seconds: Mapping[str, float]  # generation -> seconds collecting
    gc_counts: Mapping[str, int]  # generation -> collections
    http: Mapping[tuple[str, str, str], tuple[Sequence[int], float]]  # (method, route, status) -> (bucket counts, sum)
    pool: PoolReading
    cache_hits: int
    cache_misses: int
    cache_entries: int
    sockets: Mapping[str, int]  # namespace -> connected sockets
    sessions: int
    media_requests: int
    injected_faults: Mapping[str, int]  # kind -> count
    stalled_requests: int
    stall_window_held: int
    leaked_bytes: int


class SnapshotCollector:
    """Every family of the target, rendered from one snapshot per scrape (a custom collector: prometheus_client
    writes the text and escapes the labels)."""

    def __init__(self, read: Callable[[], MetricsSnapshot]) -> None:
        self.read = read

    def collect(self) -> Iterator[Metric]:
        s = self.read()
        proc = s.process
        yield _counter("process_cpu_user_seconds", "User CPU time spent in seconds.", proc.cpu_user_s)
        yield _counter("process_cpu_system_seconds", "System CPU time spent in seconds.", proc.cpu_system_s)
        yield _counter("process_cpu_seconds", "Total user and system CPU time spent in seconds.",
                       proc.cpu_user_s + proc.cpu_system_s)
        yield _gauge("process_start_time_seconds", "Start time of the process since unix epoch in seconds.",
                     round(proc.started_at))
        yield _gauge("process_resident_memory_bytes", "Resident memory size in bytes.", proc.rss_bytes)
        yield _gauge("process_virtual_memory_bytes", "Virtual memory size in bytes.", proc.vms_bytes)
        yield _gauge("process_open_fds", "Number of open file descriptors.", proc.open_fds)
        yield _gauge("nodejs_heap_size_used_bytes",
                     "Stand-in for the V8 heap: resident anonymous memory (RSS minus file-backed and shared pages).",
                     proc.heap_used_bytes)
        yield _gauge("nodejs_eventloop_lag_seconds", "Lag of the event loop in seconds (latest sample).",
                     s.loop_lag["last"])
        for stat in ("p50", "p90", "p99", "max"):
            yield _gauge(f"nodejs_eventloop_lag_{stat}_seconds",
                         f"The {stat} of the event loop lag over the last minute, in seconds.", s.loop_lag[stat])
        gc_family = HistogramMetricFamily("nodejs_gc_duration_seconds", "Garbage collection duration by kind "
                                          "(here: Python's collector by generation).", labels=["kind"])
        for generation, seconds in sorted(s.gc_seconds.items()):
            gc_family.add_metric([f"gen{generation}"], [("+Inf", s.gc_counts[generation])], seconds)
        yield gc_family
        yield _http_histogram(s.http)
        requests = CounterMetricFamily("http_requests_total", "Total number of HTTP requests.",
                                       labels=["method", "route", "status_code"])
        for key, (counts, _) in sorted(s.http.items()):
            requests.add_metric(list(key), sum(counts))
        yield requests
        pool = s.pool
        yield _gauge("database_connections_active", "Database pool connections in use.", pool.active)
        yield _gauge("database_connections_waiting", "Requests queued for a database pool connection.", pool.waiting)
        yield _gauge("database_connections_max", "Size of the database pool.", pool.size)
        yield _counter("database_connection_attempts", "Requests for a database pool connection.", pool.attempts)
        yield _counter("database_connection_failures", "Pool connection requests that failed (timed out).",
                       pool.timeouts)
        yield _counter("database_pool_timeouts", "Requests answered 503 after waiting pool_timeout_s.", pool.timeouts)
        cache = {"cache": "dashboard"}
        yield _counter("medianest_cache_hits", "Cache hits.", s.cache_hits, cache)
        yield _counter("medianest_cache_misses", "Cache misses.", s.cache_misses, cache)
        yield _gauge("medianest_cache_entries", "Entries in the cache.", s.cache_entries, cache)
        sockets = GaugeMetricFamily("medianest_websocket_connections_active", "Connected Socket.IO sockets by namespace.",
                                    labels=["namespace"])
        for namespace, count in sorted(s.sockets.items()):
            sockets.add_metric([namespace], count)
        yield sockets
        yield _gauge("user_sessions_active", "Sessions holding a valid token.", s.sessions)
        yield _counter("media_requests", "Media requests created.", s.media_requests)
        faults = CounterMetricFamily("reference_target_injected_faults_total",
                                     "Faults the reference target injected (error: HTTP 500, stall: no answer).",
                                     labels=["kind"])
        for kind, count in s.injected_faults.items():
            faults.add_metric([kind], count)
        yield faults
        yield _gauge("reference_target_stalled_requests", "Stalled requests whose client is still waiting.",
                     s.stalled_requests)
        yield _counter("reference_target_stall_window_held", "Requests and responses held until a stall window "
                       "(--stall-window-s) ended.", s.stall_window_held)
        yield _gauge("reference_target_leaked_bytes", "Bytes kept by leak mode (never freed).", s.leaked_bytes)


def _gauge(name: str, help_text: str, value: float, labels: dict[str, str] | None = None) -> GaugeMetricFamily:
    family = GaugeMetricFamily(name, help_text, labels=list(labels or {}))
    family.add_metric(list((labels or {}).values()), value)
    return family


def _counter(name: str, help_text: str, value: float, labels: dict[str, str] | None = None) -> CounterMetricFamily:
    family = CounterMetricFamily(name, help_text, labels=list(labels or {}))
    family.add_metric(list((labels or {}).values()), value)
    return family


def _http_histogram(http: Mapping[tuple[str, str, str], tuple[Sequence[int], float]]) -> HistogramMetricFamily:
    family = HistogramMetricFamily("http_request_duration_seconds", "Duration of HTTP requests in seconds.",
                                   labels=["method", "route", "status_code"])
    for key, (counts, total) in sorted(http.items()):
        cumulative = list(accumulate(counts))
        finite = [(f"{bound:g}", count) for bound, count in zip(BUCKETS, cumulative[:-1], strict=True)]
        family.add_metric(list(key), finite + [("+Inf", cumulative[-1])], total)
    return family


def registry_for(read: Callable[[], MetricsSnapshot]) -> CollectorRegistry:
    """A registry of its own per target (never the global one: tests start several targets' apps in one process),
    rendering what `read` returns at each scrape."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(SnapshotCollector(read))
    return registry


def render(registry: CollectorRegistry) -> bytes:
    """The whole exposition; cheap enough for a scrape every second (one /proc read, a few hundred lines)."""
    return generate_latest(registry)
