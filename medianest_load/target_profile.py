"""Target profiles: where a MediaNest deployment keeps its routes, Socket.IO namespaces, auth and timeouts.

A staging deployment that differs from MediaNest `main` (another upload path, tokens instead of the Plex
login, a proxy in front) is a YAML edit in `target_profiles/`, never a code change. Every key is required
(except `description`) so a profile reads as the full picture of its target; unknown keys are rejected so a
typo cannot silently fall back to a default.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any

from medianest_load.bounds import CONTAINER_LIMIT_MB, SCRAPE_INTERVAL_S, TIMEOUT_S, Bound
from medianest_load.inputs import Fields, InputError, InputKind
from medianest_load.paths import TARGET_PROFILES_DIR

AUTH_MODES = ("login", "tokens")


class ProfileError(InputError):
    """A target profile that cannot be used (medianest_load/inputs.py words it)."""


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
PUBLISHER_SHARE = Bound(0, 1, low_open=True)
PUSH_RATE = Bound(0, 100, " events/s", low_open=True)
ROOMS = Bound(1)


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


def _is_path(value: Any) -> bool:
    return isinstance(value, str) and value.startswith("/") and " " not in value


PATH = "a path starting with '/'"


def _routes(r: Fields) -> Routes:
    paths = {name: r.value(name, _is_path, PATH) for name in Routes.__dataclass_fields__ if name != "media_upload"}
    routes = Routes(**paths, media_upload=r.value("media_upload", _is_path, f"{PATH} (or null)", None))
    if ":id" not in routes.media_request_detail.split("/"):
        r.fail("media_request_detail", routes.media_request_detail,
               "a path with an ':id' segment, e.g. /api/v1/media/requests/:id")
    return routes


def _socketio(r: Fields) -> SocketConfig:
    transports = r.value("transports", lambda v: isinstance(v, list) and len(v) > 0 and
                         all(t in ("websocket", "polling") for t in v),
                         "a non-empty list of 'websocket' and/or 'polling'")
    media_ns = r.section("namespaces", {"media"}, {"media"}).value("media", _is_path, PATH)
    events = r.section("events", SocketEvents.__dataclass_fields__, SocketEvents.__dataclass_fields__)
    return SocketConfig(
        path=r.value("path", _is_path, PATH),
        transports=tuple(transports),
        media_namespace=media_ns,
        events=SocketEvents(**{name: events.text(name) for name in SocketEvents.__dataclass_fields__}),
        rooms=r.integer("rooms", ROOMS),
        push=_push(r.section("push", {"source", "publishers", "rate_per_s"}, {"source"})) if "push" in r.data
        else PushConfig(),
    )


def _push(r: Fields) -> PushConfig:
    return PushConfig(
        source=r.choice("source", PUSH_SOURCES),
        publishers=r.number("publishers", PUBLISHER_SHARE, PushConfig.publishers,
                            noun="a share of the socket users"),
        rate_per_s=r.number("rate_per_s", PUSH_RATE, PushConfig.rate_per_s, noun="events per second per publisher"),
    )


def _is_url(value: Any) -> bool:
    return isinstance(value, str) and value.startswith(("http://", "https://")) and " " not in value


def _is_env_name(value: Any) -> bool:
    return isinstance(value, str) and value.replace("_", "").isalnum()


def _auth(r: Fields) -> AuthConfig:
    config = AuthConfig(
        mode=r.choice("mode", AUTH_MODES),
        tokens_file=r.text("tokens_file", None),
        tokens_env=r.value("tokens_env", _is_env_name,
                           "the name of an environment variable (letters, digits, '_') or null", None),
        csrf=r.boolean("csrf"),
        csrf_header=r.text("csrf_header"),
    )
    if config.mode == "tokens" and not (config.tokens_file or config.tokens_env):
        r.fail("mode", config.mode, "tokens_file or tokens_env to be set when mode is tokens")
    return config


def _is_network(value: Any) -> bool:
    try:
        return isinstance(value, str) and ipaddress.ip_network(value).num_addresses >= 4
    except ValueError:
        return False


def _forwarded_for(r: Fields) -> ForwardedFor:
    return ForwardedFor(enabled=r.boolean("enabled"),
                        network=r.value("network", _is_network, "an IP network with at least 4 addresses, e.g. 10.0.0.0/8"))


def _metrics(r: Fields) -> Metrics:
    return Metrics(
        url=r.value("url", lambda v: _is_path(v) or _is_url(v), f"{PATH} or an http(s) URL"),
        token_env=r.text("token_env", None),
        scrape_interval_s=r.number("scrape_interval_s", SCRAPE_INTERVAL_S, None, noun="a number of seconds"),
        container_limit_mb=r.number("container_limit_mb", CONTAINER_LIMIT_MB, None, noun="MB (10^6 bytes)"),
        names=tuple({**DEFAULT_METRIC_NAMES, **_metric_names(r)}.items()),
    )


def _is_metric_name(value: Any) -> bool:
    return isinstance(value, str) and value.replace("_", "").replace(":", "").isalnum()


def _metric_names(r: Fields) -> dict[str, tuple[str, ...]]:
    """metrics.names: concept -> a name or a list of prom-client sample names (first one present wins)."""
    if r.data.get("names") is None:
        return {}
    names = r.section("names", DEFAULT_METRIC_NAMES, expected="a mapping of concept to names")
    given = {concept: names.value(concept, lambda v: _is_metric_name(v) or isinstance(v, list) and len(v) > 0 and
                                  all(map(_is_metric_name, v)), "a metric name or a non-empty list of metric names")
             for concept in names.data}
    return {concept: (value,) if isinstance(value, str) else tuple(value) for concept, value in given.items()}


SECTIONS = {  # every key of a profile, section by section (all required but the optional ones below)
    "": {"name", "description", "routes", "static_prefix", "upload", "socketio", "auth", "forwarded_for", "timeouts",
         "metrics", "frontend_url"},
    "routes": set(Routes.__dataclass_fields__),
    "upload": {"field", "content_type"},
    "socketio": {"path", "transports", "namespaces", "events", "rooms", "push"},
    "auth": {"mode", "tokens_file", "tokens_env", "csrf", "csrf_header"},
    "forwarded_for": {"enabled", "network"},
    "timeouts": {"request_s", "connect_s"},
    "metrics": {"url", "token_env", "scrape_interval_s", "container_limit_mb", "names"},
}
OPTIONAL = {"description", "frontend_url", "media_upload", "push", "tokens_file", "tokens_env", "token_env",
            "scrape_interval_s", "container_limit_mb", "names"}


def _section(top: Fields, key: str) -> Fields:
    return top.section(key, SECTIONS[key], SECTIONS[key] - OPTIONAL)


def parse_target_profile(data: Any, source: str) -> TargetProfile:
    """Build a TargetProfile from parsed YAML; `source` names the file in error messages."""
    top = Fields.of(source, data, "", ProfileError, SECTIONS[""], SECTIONS[""] - OPTIONAL)
    upload, timeouts = _section(top, "upload"), _section(top, "timeouts")
    return TargetProfile(
        name=top.text("name"),
        description=top.value("description", lambda v: isinstance(v, str), "a string", ""),
        source=source,
        routes=_routes(_section(top, "routes")),
        static_prefix=top.value("static_prefix", _is_path, PATH),
        upload=UploadConfig(field=upload.text("field"), content_type=upload.text("content_type")),
        socketio=_socketio(_section(top, "socketio")),
        auth=_auth(_section(top, "auth")),
        forwarded_for=_forwarded_for(_section(top, "forwarded_for")),
        timeouts=Timeouts(request_s=timeouts.number("request_s", TIMEOUT_S, noun="a number of seconds"),
                          connect_s=timeouts.number("connect_s", TIMEOUT_S, noun="a number of seconds")),
        metrics=_metrics(_section(top, "metrics")),
        frontend_url=top.value("frontend_url", _is_url, "an http(s) URL of the frontend host, or null", None),
    )


TARGET_PROFILE = InputKind("target profile", TARGET_PROFILES_DIR,
                           "a YAML target profile (see target_profiles/medianest-main.yaml)", parse_target_profile,
                           ProfileError)
