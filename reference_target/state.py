"""What one target process holds: users, sessions and media requests (the Store), the frontend bundle, the
behaviour and the instruments; routes and Socket.IO namespaces read and change it, /metrics reads a snapshot."""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import psutil
from prometheus_client import CollectorRegistry

from reference_target.behaviour import Behaviour, BoundedDict
from reference_target.bundle import Bundle
from reference_target.config import TargetConfig
from reference_target.metrics import (
    GcTimer,
    HttpMetrics,
    LoopLagMonitor,
    MetricsSnapshot,
    PoolReading,
    read_process,
    registry_for,
)

REQUESTS_PER_USER = 500  # a user's media requests beyond this forget the oldest (bounded memory on long runs)


def now_iso() -> str:
    """A timestamp as MediaNest's JSON writes it: UTC, milliseconds, a Z."""
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass
class User:
    id: int
    username: str
    email: str
    role: str
    requests: BoundedDict = field(default_factory=lambda: BoundedDict(REQUESTS_PER_USER))

    def public(self) -> dict[str, Any]:
        return {"id": self.id, "username": self.username, "email": self.email, "role": self.role}


class Store:
    """Users (one per Plex pin id), sessions (opaque bearer tokens) and media requests, all bounded."""

    def __init__(self) -> None:
        self.users: BoundedDict = BoundedDict()
        self.sessions: BoundedDict = BoundedDict()
        self.requests_created = 0
        self._next_user = 0
        self._next_request = 0

    def login(self, pin_id: str) -> tuple[User, str]:
        """The stand-in Plex login: the same pin id is the same user; every login is a new session."""
        user = self.users.get(pin_id)
        if user is None:
            self._next_user += 1
            n = self._next_user
            user = User(n, f"plexuser{n}", f"plexuser{n}@medianest.local", "admin" if n == 1 else "user")
            self.users[pin_id] = user
        token = secrets.token_urlsafe(32)
        self.sessions[token] = user
        return user, token

    def session_user(self, token: str | None) -> User | None:
        """The user a bearer token is a session of; None for no token or an unknown one."""
        return self.sessions.get(token) if token else None

    def create_request(self, user: User, media_type: str, tmdb_id: int) -> dict[str, Any]:
        self._next_request += 1
        self.requests_created += 1
        item = {"id": self._next_request, "userId": user.id, "title": f"{media_type.title()} {tmdb_id}",
                "mediaType": media_type, "tmdbId": tmdb_id, "status": "pending", "createdAt": now_iso(),
                "completedAt": None}
        user.requests[item["id"]] = item
        return item


@dataclass
class Target:
    """Everything one target process holds; routes reach it as request.app.state.target, the Socket.IO
    namespaces as their `target`."""

    cfg: TargetConfig
    behaviour: Behaviour
    store: Store = field(default_factory=Store)
    http: HttpMetrics = field(default_factory=HttpMetrics)
    lag: LoopLagMonitor = field(default_factory=LoopLagMonitor)
    gc: GcTimer = field(default_factory=GcTimer)
    process: psutil.Process = field(default_factory=psutil.Process)
    started_at: float = field(default_factory=time.time)
    # namespace -> sid -> its session's user (None: anonymous); each namespace registers itself here
    connected: dict[str, dict[str, User | None]] = field(default_factory=dict)
    bundle: Bundle = field(init=False)
    page: str = field(init=False)
    registry: CollectorRegistry = field(init=False)

    def __post_init__(self) -> None:
        self.bundle = Bundle(self.cfg.bundle_kb, self.cfg.third_party_script)
        self.page = self.bundle.html()
        self.registry = registry_for(self.metrics_snapshot)

    def metrics_snapshot(self) -> MetricsSnapshot:
        """Every value /metrics shows, read now."""
        b = self.behaviour
        pool = b.pool
        return MetricsSnapshot(
            process=read_process(self.process, self.started_at),
            loop_lag=self.lag.summary(),
            gc_seconds=dict(self.gc.seconds),
            gc_counts=dict(self.gc.counts),
            http=self.http.readings(),
            pool=PoolReading(active=pool.active, waiting=pool.waiting, size=pool.size, attempts=pool.attempts,
                             timeouts=pool.timeouts),
            cache_hits=b.dashboard_cache.hits,
            cache_misses=b.dashboard_cache.misses,
            cache_entries=len(b.dashboard_cache),
            sockets={namespace: len(sids) for namespace, sids in self.connected.items()},
            sessions=len(self.store.sessions),
            media_requests=self.store.requests_created,
            injected_faults=dict(b.faults.injected),
            stalled_requests=b.faults.stalled_now,
            stall_window_held=b.stall_windows.held,
            leaked_bytes=b.leak.retained_bytes,
        )
