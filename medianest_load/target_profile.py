"""Target profiles: where a MediaNest deployment keeps its routes, Socket.IO namespaces, auth and timeouts.

A staging deployment that differs from MediaNest `main` (another upload path, tokens instead of the Plex
login, a proxy in front) is a YAML edit in `target_profiles/`, never a code change. Every key is required
(except `description`) so a profile reads as the full picture of its target; unknown keys are rejected so a
typo cannot silently fall back to a default.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, overload

from medianest_load.bounds import CONTAINER_LIMIT_MB, SCRAPE_INTERVAL_S, TIMEOUT_S
from medianest_load.paths import TARGET_PROFILES_DIR, resolve_named_file
from medianest_load.yaml_files import read_yaml

AUTH_MODES = ("login", "tokens")


class ProfileError(ValueError):
    """A target profile that cannot be used; the message is one line: file, field, bad value, expectation."""


@dataclass(frozen=True, kw_only=True)
class Routes:
    """HTTP paths. `:name` segments are placeholders; a request is named by the template, not the URL."""

    home: str
    health: str
    simple_health: str
    csrf_token: str
    plex_pin: str
    plex_verify: str
    session: str
    logout: str
    dashboard_stats: str
    dashboard_status: str
    dashboard_notifications: str
    media_search: str
    media_request: str
    media_requests: str
    media_request_detail: str
    media_upload: str | None  # None: the target has no upload route, upload users send nothing


@dataclass(frozen=True, kw_only=True)
class UploadConfig:
    field: str
    content_type: str


@dataclass(frozen=True, kw_only=True)
class SocketEvents:
    ping: str
    pong: str
    join_room: str
    joined_room: str
    media_status: str


PUSH_SOURCES = ("server", "relay")


@dataclass(frozen=True, kw_only=True)
class PushConfig:
    """Who makes media-status pushes. server: the target pushes by itself. relay (MediaNest main): a client emits
    one and the server forwards it to the other members of the room, so `publishers` (a share of the socket
    users) emit `rate_per_s` events each, stamped with their own sentAt."""

    source: str = "server"
    publishers: float = 0.1
    rate_per_s: float = 0.5


@dataclass(frozen=True, kw_only=True)
class SocketConfig:
    path: str
    transports: tuple[str, ...]
    media_namespace: str
    events: SocketEvents
    rooms: int  # room ids 1..rooms are joined at random, so pushes fan out to several users per room
    push: PushConfig = PushConfig()


@dataclass(frozen=True, kw_only=True)
class AuthConfig:
    mode: str  # login: the profile's pin/verify flow; tokens: one per line from a file or an env variable
    tokens_file: str | None
    tokens_env: str | None
    csrf: bool  # send the double-submit CSRF header on unsafe methods
    csrf_header: str


@dataclass(frozen=True, kw_only=True)
class ForwardedFor:
    enabled: bool
    network: str  # each user presents its own address from this network in X-Forwarded-For


@dataclass(frozen=True, kw_only=True)
class Timeouts:
    request_s: float
    connect_s: float


# Server-telemetry concepts -> prom-client sample names, first one present wins: MediaNest main's names, then the
# newer branch's medianest_-prefixed ones. A profile's metrics.names replaces the list of a concept it names.
DEFAULT_METRIC_NAMES: dict[str, tuple[str, ...]] = {
    "resident_memory_bytes": ("process_resident_memory_bytes",),
    "heap_used_bytes": ("nodejs_heap_size_used_bytes",),
    "cpu_seconds": ("process_cpu_seconds_total",),
    "loop_lag_seconds": ("nodejs_eventloop_lag_seconds",),
    "loop_lag_p50_seconds": ("nodejs_eventloop_lag_p50_seconds",),
    "loop_lag_p90_seconds": ("nodejs_eventloop_lag_p90_seconds",),
    "loop_lag_p99_seconds": ("nodejs_eventloop_lag_p99_seconds",),
    "gc_seconds": ("nodejs_gc_duration_seconds_sum",),
    "connected_sockets": ("medianest_websocket_connections_active", "socketio_connected_sockets",
                          "websocket_connections_active"),
    "db_connections_active": ("database_connections_active", "medianest_database_connections_active"),
    "db_connection_attempts": ("database_connection_attempts_total", "medianest_database_connection_attempts_total"),
    "db_connection_failures": ("database_connection_failures_total", "medianest_database_connection_failures_total"),
    "cache_hits": ("cache_hits_total", "medianest_cache_hits_total"),
    "cache_misses": ("cache_misses_total", "medianest_cache_misses_total"),
}
DEFAULT_SCRAPE_INTERVAL_S = 5.0


@dataclass(frozen=True, kw_only=True)
class Metrics:
    url: str  # absolute URL, or a path on the target host
    token_env: str | None  # name of the environment variable holding the metrics bearer token
    scrape_interval_s: float | None = None  # None: the scenario's, else DEFAULT_SCRAPE_INTERVAL_S
    container_limit_mb: float | None = None  # MediaNest's container memory limit, for memory_pct_of_limit
    names: tuple[tuple[str, tuple[str, ...]], ...] = tuple(DEFAULT_METRIC_NAMES.items())

    @property
    def name_map(self) -> dict[str, tuple[str, ...]]:
        return dict(self.names)


@dataclass(frozen=True, kw_only=True)
class TargetProfile:
    name: str
    description: str
    source: str
    routes: Routes
    static_prefix: str
    upload: UploadConfig
    socketio: SocketConfig
    auth: AuthConfig
    forwarded_for: ForwardedFor
    timeouts: Timeouts
    metrics: Metrics
    frontend_url: str | None = None  # where pages and assets are served (Next.js), when not on the API host


class _Reader:
    """Walks one YAML mapping, turning every mistake into a one-line ProfileError."""

    def __init__(self, source: str, data: Any, prefix: str = "") -> None:
        self.source = source
        self.prefix = prefix
        if not isinstance(data, dict):
            raise self.error(prefix.rstrip(".") or "(top level)", data, "a mapping")
        self.data = data
        self.seen: set[str] = set()

    def error(self, field: str, value: Any, expected: str) -> ProfileError:
        shown = repr(value)
        if len(shown) > 80:
            shown = shown[:77] + "..."
        return ProfileError(f"{self.source}: field {field}: got {shown}, expected {expected}")

    def _get(self, key: str, optional: bool = False, default: Any = None) -> Any:
        self.seen.add(key)
        if key not in self.data:
            if optional:
                return default
            raise ProfileError(f"{self.source}: field {self.prefix}{key}: missing, expected a value "
                               "(every key but description is required)")
        return self.data[key]

    def value(self, key: str, check: Callable[[Any], bool], expected: str, optional: bool = False,
              default: Any = None) -> Any:
        value = self._get(key, optional, default)
        if optional and value is None:
            return default
        if not check(value):
            raise self.error(self.prefix + key, value, expected)
        return value

    # A required key is always there: the overloads give its reader a str, an optional one's a str | None.
    @overload
    def text(self, key: str, optional: Literal[False] = False, default: str | None = None) -> str: ...
    @overload
    def text(self, key: str, optional: bool, default: str | None = None) -> str | None: ...

    def text(self, key: str, optional: bool = False, default: str | None = None) -> str | None:
        return self.value(key, lambda v: isinstance(v, str) and v.strip() != "", "a non-empty string",
                          optional, default)

    @overload
    def path(self, key: str, optional: Literal[False] = False) -> str: ...
    @overload
    def path(self, key: str, optional: bool) -> str | None: ...

    def path(self, key: str, optional: bool = False) -> str | None:
        return self.value(key, lambda v: isinstance(v, str) and v.startswith("/") and " " not in v,
                          "a path starting with '/' (or null where allowed)" if optional else
                          "a path starting with '/'", optional)

    def number(self, key: str) -> float:
        value = self.value(key, TIMEOUT_S.holds, f"a number of seconds {TIMEOUT_S.text}")
        return float(value)

    def flag(self, key: str) -> bool:
        return self.value(key, lambda v: isinstance(v, bool), "true or false")

    def section(self, key: str) -> _Reader:
        return _Reader(self.source, self._get(key), f"{self.prefix}{key}.")

    def done(self) -> None:
        """Reject keys nobody read: typos, and keys that are not strings at all (YAML `1: x`, `true: x`)."""
        unknown = sorted((key for key in self.data if not isinstance(key, str) or key not in self.seen), key=str)
        if unknown:
            key = unknown[0]
            raise self.error(self.prefix + str(key), self.data[key],
                             f"no such key (known: {', '.join(sorted(self.seen))})")


def _routes(r: _Reader) -> Routes:
    routes = Routes(**{name: r.path(name) for name in Routes.__dataclass_fields__ if name != "media_upload"},
                    media_upload=r.path("media_upload", optional=True))
    if ":id" not in routes.media_request_detail.split("/"):
        raise r.error(r.prefix + "media_request_detail", routes.media_request_detail,
                      "a path with an ':id' segment, e.g. /api/v1/media/requests/:id")
    r.done()
    return routes


def _socketio(r: _Reader) -> SocketConfig:
    transports = r.value("transports", lambda v: isinstance(v, list) and len(v) > 0 and
                         all(t in ("websocket", "polling") for t in v),
                         "a non-empty list of 'websocket' and/or 'polling'")
    namespaces = r.section("namespaces")
    media_ns = namespaces.path("media")
    namespaces.done()
    events = r.section("events")
    socket_events = SocketEvents(**{name: events.text(name) for name in SocketEvents.__dataclass_fields__})
    events.done()
    config = SocketConfig(
        path=r.path("path"),
        transports=tuple(transports),
        media_namespace=media_ns,
        events=socket_events,
        rooms=r.value("rooms", lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 1,
                      "a whole number >= 1"),
        push=_push(r.section("push")) if "push" in r.data else PushConfig(),
    )
    r.seen.add("push")
    r.done()
    return config


def _push(r: _Reader) -> PushConfig:
    def share(v: Any) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v <= 1

    def rate(v: Any) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v <= 100

    config = PushConfig(
        source=r.value("source", lambda v: v in PUSH_SOURCES, f"one of {', '.join(PUSH_SOURCES)}"),
        publishers=float(r.value("publishers", share, "a share of the socket users in (0, 1], e.g. 0.1",
                                 optional=True, default=PushConfig.publishers)),
        rate_per_s=float(r.value("rate_per_s", rate, "events per second per publisher in (0, 100]",
                                 optional=True, default=PushConfig.rate_per_s)),
    )
    r.done()
    return config


def _frontend_url(value: Any) -> bool:
    return isinstance(value, str) and value.startswith(("http://", "https://")) and " " not in value


def _auth(r: _Reader) -> AuthConfig:
    config = AuthConfig(
        mode=r.value("mode", lambda v: v in AUTH_MODES, f"one of {', '.join(AUTH_MODES)}"),
        tokens_file=r.text("tokens_file", optional=True),
        tokens_env=r.value("tokens_env", lambda v: isinstance(v, str) and v.replace("_", "").isalnum(),
                           "the name of an environment variable (letters, digits, '_') or null", optional=True),
        csrf=r.flag("csrf"),
        csrf_header=r.text("csrf_header"),
    )
    if config.mode == "tokens" and not (config.tokens_file or config.tokens_env):
        raise r.error(r.prefix + "mode", config.mode, "tokens_file or tokens_env to be set when mode is tokens")
    r.done()
    return config


def _forwarded_for(r: _Reader) -> ForwardedFor:
    def is_network(value: Any) -> bool:
        try:
            return isinstance(value, str) and ipaddress.ip_network(value).num_addresses >= 4
        except ValueError:
            return False

    config = ForwardedFor(enabled=r.flag("enabled"),
                          network=r.value("network", is_network, "an IP network with at least 4 addresses, "
                                          "e.g. 10.0.0.0/8"))
    r.done()
    return config


def _metrics(r: _Reader) -> Metrics:
    url = r.value("url", lambda v: isinstance(v, str) and (v.startswith("/") or v.startswith(("http://", "https://"))),
                  "a path starting with '/' or an http(s) URL")
    interval = r.value("scrape_interval_s", SCRAPE_INTERVAL_S.holds, f"a number of seconds {SCRAPE_INTERVAL_S.text}, "
                       "or null", optional=True)
    limit = r.value("container_limit_mb", CONTAINER_LIMIT_MB.holds, f"MB (10^6 bytes) {CONTAINER_LIMIT_MB.text}, or null",
                    optional=True)
    config = Metrics(url=url, token_env=r.text("token_env", optional=True),
                     scrape_interval_s=None if interval is None else float(interval),
                     container_limit_mb=None if limit is None else float(limit),
                     names=tuple({**DEFAULT_METRIC_NAMES, **_metric_names(r)}.items()))
    r.done()
    return config


def _metric_names(r: _Reader) -> dict[str, tuple[str, ...]]:
    """metrics.names: concept -> a name or a list of prom-client sample names (first one present wins)."""
    if r.value("names", lambda v: v is None or isinstance(v, dict), "a mapping of concept to names", optional=True) is None:
        return {}
    names = r.section("names")

    def is_name(v: Any) -> bool:
        return isinstance(v, str) and v.replace("_", "").replace(":", "").isalnum()

    given = {concept: names.value(concept, lambda v: is_name(v) or isinstance(v, list) and len(v) > 0 and all(map(is_name, v)),
                                  "a metric name or a non-empty list of metric names")
             for concept in DEFAULT_METRIC_NAMES if concept in names.data}
    names.seen.update(DEFAULT_METRIC_NAMES)  # an unknown concept's error then lists every known one
    names.done()
    return {concept: (value,) if isinstance(value, str) else tuple(value) for concept, value in given.items()}


def parse_target_profile(data: Any, source: str) -> TargetProfile:
    """Build a TargetProfile from parsed YAML; `source` names the file in error messages."""
    top = _Reader(source, data)
    upload = top.section("upload")
    upload_config = UploadConfig(field=upload.text("field"), content_type=upload.text("content_type"))
    upload.done()
    timeouts = top.section("timeouts")
    timeouts_config = Timeouts(request_s=timeouts.number("request_s"), connect_s=timeouts.number("connect_s"))
    timeouts.done()
    profile = TargetProfile(
        name=top.text("name"),
        description=top.value("description", lambda v: isinstance(v, str), "a string", optional=True, default=""),
        source=source,
        routes=_routes(top.section("routes")),
        static_prefix=top.path("static_prefix"),
        upload=upload_config,
        socketio=_socketio(top.section("socketio")),
        auth=_auth(top.section("auth")),
        forwarded_for=_forwarded_for(top.section("forwarded_for")),
        timeouts=timeouts_config,
        metrics=_metrics(top.section("metrics")),
        frontend_url=top.value("frontend_url", _frontend_url, "an http(s) URL of the frontend host, or null",
                               optional=True),
    )
    top.done()
    return profile


def available_profiles() -> list[str]:
    return sorted(p.stem for p in TARGET_PROFILES_DIR.glob("*.yaml"))


def load_target_profile(name_or_path: str | Path) -> TargetProfile:
    """Load a profile by bare name (looked up in target_profiles/) or by path."""
    path = resolve_named_file(str(name_or_path), TARGET_PROFILES_DIR)
    if not path.is_file():
        raise ProfileError(f"{name_or_path}: field target_profile: got {str(name_or_path)!r}, expected a YAML file "
                           f"or one of the names {', '.join(available_profiles())}")
    data = read_yaml(path, ProfileError, "a YAML target profile (see target_profiles/medianest-main.yaml)")
    return parse_target_profile(data, str(path))
