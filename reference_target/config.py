"""TargetConfig: the reference target's behaviour, read from a named profile in profiles.yaml (every profile
inherits `baseline`) with command-line flags on top. Every bad value becomes a one-line ConfigError."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from statistics import NormalDist
from typing import Any

from medianest_load.yaml_files import read_yaml

PROFILES_FILE = Path(__file__).with_name("profiles.yaml")
BASE_PROFILE = "baseline"

# z of the 95th percentile; a lognormal can only have p95/mean up to exp(Z95^2 / 2), about 3.87.
Z95 = NormalDist().inv_cdf(0.95)
MAX_P95_RATIO = math.exp(Z95 * Z95 / 2)

# One service-time distribution per kind of work the app does (app.py names them in its routes).
SERVICE_KEYS = (
    "health", "simple_health", "csrf", "plex_pin", "plex_verify", "session", "logout",
    "dashboard_cached", "dashboard_uncached", "dashboard_status", "notifications",
    "media_search", "media_details", "media_request_create", "media_requests_list",
    "media_request_detail", "media_request_delete", "upload", "page", "static",
)


class ConfigError(ValueError):
    """A user mistake in a profile or a flag, phrased as one line; `option` is set when a flag caused it."""

    def __init__(self, message: str, option: str | None = None):
        super().__init__(message)
        self.option = option


@dataclass(frozen=True)
class ServiceTime:
    """A lognormal service time given by its mean and 95th percentile, in milliseconds."""

    mean_ms: float
    p95_ms: float


@dataclass(frozen=True, kw_only=True)
class TargetConfig:
    """Everything the target's behaviour depends on; built by load_config, never mutated."""

    profile: str
    description: str
    latency_scale: float
    error_rate: float
    stall_rate: float
    stall_max_s: float
    pool_size: int
    pool_timeout_s: float
    crosstalk: float
    cache_ttl_s: float
    rate_limit: int
    rate_window_s: float
    push_interval_s: float
    push_latency_ms: float
    bundle_kb: int
    max_upload_mb: float
    leak_kb_per_connection: int
    leak_kb_per_request: int
    stall_window_s: float  # every response waits while a window of this length lasts (0 = off) ...
    stall_every_s: float   # ... and a window starts every this many seconds
    service_times: Mapping[str, ServiceTime]
    host: str = "127.0.0.1"
    port: int = 8080
    seed: int | None = None
    metrics_token: str | None = None
    exit_with_parent: bool = False
    enforce_csrf: bool = False  # double-submit CSRF check on unsafe methods (MediaNest's csrfProtection)
    push_source: str = "server"  # server: the target pushes media-status; relay: it forwards what clients emit
    fail_routes: tuple[str, ...] = ()  # route templates that always answer 500 (a broken route, e.g. the PIN)
    hang_routes: tuple[str, ...] = ()  # route templates that never answer until the client gives up
    socket_auth_error: bool = False  # /media handshakes fail with an internal error, as main's did
    third_party_script: str | None = None  # a <script src> on another host in the page (tests the browser guard)


@dataclass(frozen=True)
class _Rule:
    """What one numeric field accepts."""

    kind: type
    low: float
    low_open: bool = False
    high: float | None = None

    def describe(self) -> str:
        noun = "an integer" if self.kind is int else "a number"
        if self.high is not None:
            return f"{noun} between {self.low:g} and {self.high:g}"
        return f"{noun} {'>' if self.low_open else '>='} {self.low:g}"

    def accepts(self, value: Any) -> bool:
        allowed = (int,) if self.kind is int else (int, float)
        if isinstance(value, bool) or not isinstance(value, allowed) or not math.isfinite(value):
            return False
        if value < self.low or (self.low_open and value == self.low):
            return False
        return self.high is None or value <= self.high


_RULES: dict[str, _Rule] = {
    "latency_scale": _Rule(float, 0, low_open=True),
    "error_rate": _Rule(float, 0, high=1),
    "stall_rate": _Rule(float, 0, high=1),
    "stall_max_s": _Rule(float, 0, low_open=True),
    "pool_size": _Rule(int, 1),
    "pool_timeout_s": _Rule(float, 0, low_open=True),
    "crosstalk": _Rule(float, 0),
    "cache_ttl_s": _Rule(float, 0),
    "rate_limit": _Rule(int, 0),
    "rate_window_s": _Rule(float, 0, low_open=True),
    "push_interval_s": _Rule(float, 0.01),
    "push_latency_ms": _Rule(float, 0),
    "bundle_kb": _Rule(int, 1),
    "max_upload_mb": _Rule(float, 0, low_open=True),
    "leak_kb_per_connection": _Rule(int, 0),
    "leak_kb_per_request": _Rule(int, 0),
    "stall_window_s": _Rule(float, 0),
    "stall_every_s": _Rule(float, 0, low_open=True),
}
_SERVER_FIELDS = ("host", "port", "seed", "metrics_token", "exit_with_parent", "enforce_csrf", "fail_routes",
                  "hang_routes", "socket_auth_error", "third_party_script")
PUSH_SOURCES = ("server", "relay")


def option_name(field: str) -> str:
    """The flag that overrides a field: pool_size -> --pool-size."""
    return "--" + field.replace("_", "-")


def load_profiles(path: Path = PROFILES_FILE) -> dict[str, dict[str, Any]]:
    """The raw profiles of the YAML file, checked for shape only."""
    document = read_yaml(path, ConfigError, "a YAML file with a mapping 'profiles'")
    profiles = document.get("profiles") if isinstance(document, dict) else None
    if not isinstance(profiles, dict) or not all(isinstance(p, dict) for p in profiles.values()):
        raise ConfigError(f"{path.name}: expected a mapping 'profiles' of name -> mapping of fields")
    if BASE_PROFILE not in profiles:
        raise ConfigError(f"{path.name}: profile '{BASE_PROFILE}' is missing (every profile inherits it)")
    return profiles


def profile_names(path: Path = PROFILES_FILE) -> list[str]:
    return list(load_profiles(path))


def _service_times(raw: Any, where: str) -> dict[str, ServiceTime]:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}, field 'service_times_ms': expected a mapping of route -> [mean_ms, p95_ms]")
    times = {}
    for key, pair in raw.items():
        if key not in SERVICE_KEYS:
            raise ConfigError(
                f"{where}, field 'service_times_ms': unknown route {key!r}; expected one of {', '.join(SERVICE_KEYS)}"
            )
        positive = _Rule(float, 0, low_open=True)
        if not (isinstance(pair, list) and len(pair) == 2 and all(positive.accepts(v) for v in pair)):
            raise ConfigError(f"{where}, field 'service_times_ms.{key}': expected [mean_ms, p95_ms] > 0, got {pair!r}")
        mean, p95 = pair
        if not mean <= p95 <= mean * MAX_P95_RATIO:
            raise ConfigError(
                f"{where}, field 'service_times_ms.{key}': expected p95 between the mean and "
                f"{MAX_P95_RATIO:.2f} x the mean (a lognormal), got {pair!r}"
            )
        times[key] = ServiceTime(float(mean), float(p95))
    return times


def _check_field(field: str, value: Any, where: str, option: str | None) -> Any:
    rule = _RULES[field]
    if not rule.accepts(value):
        raise ConfigError(f"{where}: expected {rule.describe()}, got {value!r}", option)
    return rule.kind(value)


def load_config(profile: str = BASE_PROFILE, overrides: Mapping[str, Any] | None = None,
                path: Path = PROFILES_FILE) -> TargetConfig:
    """Baseline, then the named profile, then the flags (`overrides`, keyed by field name; None = not given)."""
    profiles = load_profiles(path)
    if profile not in profiles:
        raise ConfigError(f"unknown profile {profile!r}; expected one of {', '.join(profiles)}", "--profile")
    values: dict[str, Any] = {}
    service_times: dict[str, ServiceTime] = {}
    for name in dict.fromkeys([BASE_PROFILE, profile]):
        where = f"{path.name}: profile '{name}'"
        for field, raw in profiles[name].items():
            if field == "description":
                values[field] = str(raw)
            elif field == "push_source":
                values[field] = _check_push_source(raw, f"{where}, field '{field}'")
            elif field == "service_times_ms":
                service_times.update(_service_times(raw, where))
            elif field in _RULES:
                values[field] = _check_field(field, raw, f"{where}, field '{field}'", None)
            else:
                raise ConfigError(
                    f"{where}: unknown field {field!r}; expected one of description, service_times_ms, push_source, "
                    f"{', '.join(_RULES)}"
                )
    missing = [f for f in _RULES if f not in values] + [k for k in SERVICE_KEYS if k not in service_times]
    if missing:
        raise ConfigError(f"{path.name}: profile '{BASE_PROFILE}' must set {', '.join(missing)}")
    server: dict[str, Any] = {}
    for field, raw in (overrides or {}).items():
        if raw is None:
            continue
        if field in _SERVER_FIELDS:
            server[field] = tuple(raw) if field.endswith("_routes") else raw
        elif field == "push_source":
            values[field] = _check_push_source(raw, "Invalid value for '--push-source'", "--push-source")
        elif field in _RULES:
            option = option_name(field)
            values[field] = _check_field(field, raw, f"Invalid value for '{option}'", option)
        else:
            raise ConfigError(f"unknown setting {field!r}")
    if values["error_rate"] + values["stall_rate"] > 1:
        flagged = [f for f in ("error_rate", "stall_rate") if (overrides or {}).get(f) is not None]
        raise ConfigError(
            f"error_rate + stall_rate must be at most 1, got {values['error_rate']:g} + {values['stall_rate']:g}"
            + ("" if flagged else f" ({path.name}: profile '{profile}')"),
            option_name(flagged[0]) if flagged else None,
        )
    if values["stall_window_s"] >= values["stall_every_s"]:
        flagged = [f for f in ("stall_window_s", "stall_every_s") if (overrides or {}).get(f) is not None]
        raise ConfigError(
            f"stall_window_s must be shorter than stall_every_s (else the target never answers), got "
            f"{values['stall_window_s']:g} and {values['stall_every_s']:g}"
            + ("" if flagged else f" ({path.name}: profile '{profile}')"),
            option_name(flagged[0]) if flagged else None,
        )
    return TargetConfig(profile=profile, description=values.get("description", ""),
                        push_source=values.get("push_source", "server"),
                        service_times=service_times, **{f: values[f] for f in _RULES}, **server)


def _check_push_source(value: Any, where: str, option: str | None = None) -> str:
    if value not in PUSH_SOURCES:
        raise ConfigError(f"{where}: expected one of {', '.join(PUSH_SOURCES)}, got {value!r}", option)
    return value
