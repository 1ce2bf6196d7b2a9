"""How the target behaves under load: lognormal service times, a bounded database pool, the dashboard cache,
injected faults, stall windows, the /api rate limiter and the socket leak. Service time is always `asyncio.sleep`, never CPU:
the load generator shares the machine."""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections.abc import AsyncIterator, Callable, Hashable
from contextlib import asynccontextmanager
from statistics import NormalDist
from typing import Any

from starlette.types import Receive

from reference_target.config import Z95, ServiceTime, TargetConfig

_NORMAL = NormalDist()
# Entries kept per bounded store: enough for any realistic user count, small enough never to matter in RSS.
STORE_CAPACITY = 50_000


def lognormal_params(mean: float, p95: float) -> tuple[float, float]:
    """mu, sigma of the lognormal with this mean and p95: ln(p95/mean) = Z95*sigma - sigma^2/2, smaller root."""
    sigma = Z95 - math.sqrt(max(Z95 * Z95 - 2 * math.log(p95 / mean), 0.0))
    return math.log(mean) - sigma * sigma / 2, sigma


class ServiceTimeSampler:
    """Lognormal draws in seconds, stratified in shuffled blocks of 100: every 100 draws of a route hold exactly
    one from each percentile band, so a run of a few hundred requests already shows the calibrated p95 (plain
    sampling wanders by about 10 % at that size). Each draw on its own is still exactly lognormal."""

    BLOCK = 100

    def __init__(self, spec: ServiceTime, scale: float, rng: random.Random):
        self.mu, self.sigma = lognormal_params(spec.mean_ms / 1000 * scale, spec.p95_ms / 1000 * scale)
        self._rng = rng
        self._queue: list[float] = []

    def draw(self) -> float:
        if not self._queue:
            bands = [min(max((i + self._rng.random()) / self.BLOCK, 1e-6), 1 - 1e-6) for i in range(self.BLOCK)]
            self._rng.shuffle(bands)
            self._queue = [math.exp(self.mu + self.sigma * _NORMAL.inv_cdf(u)) for u in bands]
        return self._queue.pop()


class PoolTimeout(Exception):
    """No database connection became free within pool_timeout_s (Prisma's P2024)."""


class DbPool:
    """The PostgreSQL connection pool: DB-backed work holds a slot for its whole service time, and work beyond
    the pool queues (FIFO) up to pool_timeout_s, so latency rises with load past a knee. With `crosstalk`, each
    service time also grows with the other requests in the database (lock and buffer contention, the event
    loop's and the collector's work on every pending request): past the knee, more users then lower throughput,
    the retrograde region the Universal Scalability Law's kappa describes."""

    def __init__(self, size: int, timeout_s: float, crosstalk: float = 0.0):
        self.size = size
        self.timeout_s = timeout_s
        self.crosstalk = crosstalk
        self.active = 0
        self.waiting = 0
        self.attempts = 0  # every request for a connection; timeouts are the failed ones
        self.timeouts = 0
        self._slots = asyncio.Semaphore(size)

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[None]:
        self.attempts += 1
        if self._slots.locked():
            self.waiting += 1
            try:
                await asyncio.wait_for(self._slots.acquire(), self.timeout_s)
            except TimeoutError:
                self.timeouts += 1
                raise PoolTimeout from None
            finally:
                self.waiting -= 1
        else:
            await self._slots.acquire()
        self.active += 1
        try:
            yield
        finally:
            self.active -= 1
            self._slots.release()

    def stretched(self, seconds: float) -> float:
        """A service time under the current crowding: +crosstalk for each other request active or queued."""
        return seconds * (1 + self.crosstalk * (self.active - 1 + self.waiting))


class BoundedDict(dict):
    """A dict that forgets its oldest insertion past `capacity`, so long runs cannot grow the target's memory."""

    def __init__(self, capacity: int = STORE_CAPACITY):
        super().__init__()
        self.capacity = capacity

    def __setitem__(self, key: Hashable, value: Any) -> None:
        super().pop(key, None)
        super().__setitem__(key, value)
        if len(self) > self.capacity:
            del self[next(iter(self))]


class TtlCache:
    """The server-side cache in front of dashboard stats (Redis in MediaNest), counting hits and misses."""

    def __init__(self, ttl_s: float, clock: Callable[[], float] = time.monotonic):
        self.ttl_s = ttl_s
        self.hits = 0
        self.misses = 0
        self._clock = clock
        self._entries: BoundedDict = BoundedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: Hashable) -> Any | None:
        entry = self._entries.get(key)
        if entry is not None and entry[0] > self._clock():
            self.hits += 1
            return entry[1]
        self.misses += 1
        return None

    def put(self, key: Hashable, value: Any) -> None:
        if self.ttl_s > 0:
            self._entries[key] = (self._clock() + self.ttl_s, value)


class RateLimiter:
    """express-rate-limit's memory store: each client key's window starts at its first request, `limit`
    requests per window; expired windows are dropped once per window length, so memory stays bounded."""

    def __init__(self, limit: int, window_s: float):
        self.limit = limit
        self.window_s = window_s
        self._windows: dict[str, list] = {}  # key -> [window end, count]
        self._next_prune = 0.0

    def check(self, key: str, now: float) -> tuple[bool, int, float]:
        """(allowed, remaining, seconds until the key's window resets) for one more request from `key`."""
        if now >= self._next_prune:
            self._windows = {k: w for k, w in self._windows.items() if w[0] > now}
            self._next_prune = now + self.window_s
        window = self._windows.get(key)
        if window is None or window[0] <= now:
            window = self._windows[key] = [now + self.window_s, 0]
        window[1] += 1
        return window[1] <= self.limit, max(self.limit - window[1], 0), window[0] - now


class FaultInjector:
    """Decides per request whether to answer 500 or never answer (a stall), and holds stalls until the client
    gives up, so a stalled request costs nothing once its client has gone."""

    def __init__(self, error_rate: float, stall_rate: float, stall_max_s: float, rng: random.Random):
        self.error_rate = error_rate
        self.stall_rate = stall_rate
        self.stall_max_s = stall_max_s
        self.injected = {"error": 0, "stall": 0}
        self._rng = rng
        self._stalled: set[asyncio.Task] = set()
        self._releasing = False

    @property
    def stalled_now(self) -> int:
        return len(self._stalled)

    def draw(self) -> str | None:
        if not (self.error_rate or self.stall_rate):
            return None
        u = self._rng.random()
        kind = "error" if u < self.error_rate else "stall" if u < self.error_rate + self.stall_rate else None
        if kind:
            self.injected[kind] += 1
        return kind

    async def stall(self, receive: Receive) -> None:
        """Wait, without answering, until the client disconnects, stall_max_s passes or the server stops."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.stall_max_s
        task = asyncio.current_task()
        assert task is not None  # a request is always handled inside a task
        self._stalled.add(task)
        try:
            while (remaining := deadline - loop.time()) > 0:
                try:
                    message = await asyncio.wait_for(receive(), remaining)
                except TimeoutError:
                    return
                if message["type"] == "http.disconnect":
                    return
        except asyncio.CancelledError:
            if not self._releasing:
                raise
            task.uncancel()
        finally:
            self._stalled.discard(task)

    def release_all(self) -> None:
        """End every stall now (server shutdown), so stopping never waits for stalled requests."""
        self._releasing = True
        for task in self._stalled:
            task.cancel()


class StallWindows:
    """A pause of `window_s` that repeats every `every_s` seconds, like a GC pause or a blocked event loop: a
    request that arrives, or would be answered, inside a window waits until the window ends. The first window
    ends `every_s` after the target started (so start-up is never paused); window_s 0 switches it off."""

    def __init__(self, window_s: float, every_s: float, clock: Callable[[], float] = time.monotonic):
        self.window_s = window_s
        self.every_s = every_s
        self.held = 0  # requests that waited for a window to end
        self._clock = clock
        self._origin = clock()

    def remaining_s(self) -> float:
        """Seconds until the current window ends (0 outside every window)."""
        if not self.window_s:
            return 0.0
        phase = (self._clock() - self._origin) % self.every_s
        return self.every_s - phase if phase >= self.every_s - self.window_s else 0.0

    async def hold(self) -> None:
        wait = self.remaining_s()
        if wait > 0:
            self.held += 1
            await asyncio.sleep(wait)


class Leak:
    """The audit's suspected leaks: N KB kept per Socket.IO connection (socket listeners) and per /api request
    (request middleware; MediaNest main grew about 137 KB a request on loopback), never freed. The bytes are
    written, so they are resident and show in process_resident_memory_bytes. Never more than MAX_BYTES in all:
    the machine is shared."""

    MAX_BYTES = 1 << 30

    def __init__(self, kb_per_connection: int, kb_per_request: int = 0):
        self.size = kb_per_connection * 1024
        self.request_size = kb_per_request * 1024
        self.retained_bytes = 0
        self._kept: list[bytes] = []

    def retain(self, size: int | None = None) -> None:
        size = self.size if size is None else size
        if size and self.retained_bytes + size <= self.MAX_BYTES:
            self._kept.append(b"\xa5" * size)
            self.retained_bytes += size

    def retain_request(self) -> None:
        self.retain(self.request_size)


class Behaviour:
    """All behaviour state of one target process, built from its TargetConfig."""

    def __init__(self, cfg: TargetConfig):
        self.cfg = cfg

        def rng(stream: str) -> random.Random:
            return random.Random(f"{cfg.seed}:{stream}") if cfg.seed is not None else random.Random()

        self.samplers = {key: ServiceTimeSampler(spec, cfg.latency_scale, rng(key))
                         for key, spec in cfg.service_times.items()}
        self.pool = DbPool(cfg.pool_size, cfg.pool_timeout_s, cfg.crosstalk)
        self.dashboard_cache = TtlCache(cfg.cache_ttl_s)
        self.limiter = RateLimiter(cfg.rate_limit, cfg.rate_window_s) if cfg.rate_limit else None
        self.faults = FaultInjector(cfg.error_rate, cfg.stall_rate, cfg.stall_max_s, rng("faults"))
        self.leak = Leak(cfg.leak_kb_per_connection, cfg.leak_kb_per_request)
        self.stall_windows = StallWindows(cfg.stall_window_s, cfg.stall_every_s)

    async def work(self, key: str, db: bool = False) -> None:
        """Spend one service time of `key`; DB-backed work holds a pool slot meanwhile (may raise PoolTimeout)."""
        delay = self.samplers[key].draw()
        if db:
            async with self.pool.connection():
                await asyncio.sleep(self.pool.stretched(delay))
        else:
            await asyncio.sleep(delay)
