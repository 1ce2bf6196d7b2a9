"""GET /metrics: Prometheus text under MediaNest's metric names (prom-client's Node defaults, its HTTP and
database metrics, the newer branch's medianest_* cache and websocket metrics), plus a few reference_target_*
families that say what the stand-in itself injected."""

from __future__ import annotations

import asyncio
import time
from bisect import bisect_left
from collections import deque
from collections.abc import Iterable
from typing import TYPE_CHECKING

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
        return {"last": self.samples[-1] if self.samples else 0.0, "p50": pick(0.5), "p99": pick(0.99),
                "max": ordered[-1]}


Sample = tuple[dict[str, str], float]


def _family(out: list[str], name: str, kind: str, help_text: str, samples: Iterable[Sample]) -> None:
    out.append(f"# HELP {name} {help_text}")
    out.append(f"# TYPE {name} {kind}")
    for labels, value in samples:
        out.append(f"{name}{_labels(labels)} {_number(value)}")


def _labels(labels: dict[str, str]) -> str:
    if not labels:
        return ""
    escaped = (f'{k}="{v.replace(chr(92), chr(92) * 2).replace(chr(34), chr(92) + chr(34))}"'
               for k, v in labels.items())
    return "{" + ",".join(escaped) + "}"


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def _histogram(out: list[str], http: HttpMetrics) -> None:
    name = "http_request_duration_seconds"
    out.append(f"# HELP {name} Duration of HTTP requests in seconds.")
    out.append(f"# TYPE {name} histogram")
    for (method, route, status), (counts, total) in sorted(http.series.items()):
        labels = {"method": method, "route": route, "status_code": status}
        cumulative = 0
        for bound, count in zip((*BUCKETS, "+Inf"), counts):
            cumulative += count
            le = bound if isinstance(bound, str) else f"{bound:g}"
            out.append(f"{name}_bucket{_labels({**labels, 'le': le})} {cumulative}")
        out.append(f"{name}_sum{_labels(labels)} {_number(total)}")
        out.append(f"{name}_count{_labels(labels)} {cumulative}")


def render(target: Target) -> str:
    """The whole exposition; cheap enough for a scrape every second (one /proc read, a few hundred lines)."""
    out: list[str] = []
    proc = target.process
    with proc.oneshot():
        memory = proc.memory_info()
        cpu = proc.cpu_times()
        fds = proc.num_fds()
    b = target.behaviour
    _family(out, "process_cpu_user_seconds_total", "counter", "User CPU time spent in seconds.", [({}, cpu.user)])
    _family(out, "process_cpu_system_seconds_total", "counter", "System CPU time spent in seconds.",
            [({}, cpu.system)])
    _family(out, "process_cpu_seconds_total", "counter", "Total user and system CPU time spent in seconds.",
            [({}, cpu.user + cpu.system)])
    _family(out, "process_start_time_seconds", "gauge", "Start time of the process since unix epoch in seconds.",
            [({}, round(target.started_at))])
    _family(out, "process_resident_memory_bytes", "gauge", "Resident memory size in bytes.", [({}, memory.rss)])
    _family(out, "process_virtual_memory_bytes", "gauge", "Virtual memory size in bytes.", [({}, memory.vms)])
    _family(out, "process_open_fds", "gauge", "Number of open file descriptors.", [({}, fds)])
    _family(out, "nodejs_heap_size_used_bytes", "gauge",
            "Stand-in for the V8 heap: resident anonymous memory (RSS minus file-backed and shared pages).",
            [({}, max(memory.rss - getattr(memory, "shared", 0), 0))])
    lag = target.lag.summary()
    _family(out, "nodejs_eventloop_lag_seconds", "gauge", "Lag of the event loop in seconds (latest sample).",
            [({}, lag["last"])])
    for stat in ("p50", "p99", "max"):
        _family(out, f"nodejs_eventloop_lag_{stat}_seconds", "gauge",
                f"The {stat} of the event loop lag over the last minute, in seconds.", [({}, lag[stat])])
    _histogram(out, target.http)
    _family(out, "http_requests_total", "counter", "Total number of HTTP requests.",
            ((dict(zip(("method", "route", "status_code"), key)), sum(counts))
             for key, (counts, _) in sorted(target.http.series.items())))
    _family(out, "database_connections_active", "gauge", "Database pool connections in use.", [({}, b.pool.active)])
    _family(out, "database_connections_waiting", "gauge", "Requests queued for a database pool connection.",
            [({}, b.pool.waiting)])
    _family(out, "database_connections_max", "gauge", "Size of the database pool.", [({}, b.pool.size)])
    _family(out, "database_pool_timeouts_total", "counter", "Requests answered 503 after waiting pool_timeout_s.",
            [({}, b.pool.timeouts)])
    cache = {"cache": "dashboard"}
    _family(out, "medianest_cache_hits_total", "counter", "Cache hits.", [(cache, b.dashboard_cache.hits)])
    _family(out, "medianest_cache_misses_total", "counter", "Cache misses.", [(cache, b.dashboard_cache.misses)])
    _family(out, "medianest_cache_entries", "gauge", "Entries in the cache.", [(cache, len(b.dashboard_cache))])
    _family(out, "medianest_websocket_connections_active", "gauge", "Connected Socket.IO sockets by namespace.",
            (({"namespace": ns}, n) for ns, n in sorted(target.sockets.items())))
    _family(out, "user_sessions_active", "gauge", "Sessions holding a valid token.", [({}, len(target.store.sessions))])
    _family(out, "media_requests_total", "counter", "Media requests created.", [({}, target.store.requests_created)])
    _family(out, "reference_target_injected_faults_total", "counter",
            "Faults the reference target injected (error: HTTP 500, stall: no answer).",
            (({"kind": kind}, n) for kind, n in b.faults.injected.items()))
    _family(out, "reference_target_stalled_requests", "gauge", "Stalled requests whose client is still waiting.",
            [({}, b.faults.stalled_now)])
    _family(out, "reference_target_stall_window_held_total", "counter",
            "Requests and responses held until a stall window (--stall-window-s) ended.", [({}, b.stall_windows.held)])
    _family(out, "reference_target_leaked_bytes", "gauge", "Bytes kept by leak mode (never freed).",
            [({}, b.leak.retained_bytes)])
    out.append("")
    return "\n".join(out)
