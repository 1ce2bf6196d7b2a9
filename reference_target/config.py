"""TargetConfig: the reference target's behaviour, read from a named profile in profiles.yaml (every profile
inherits `baseline`) with command-line flags on top. Every bad value becomes a one-line ConfigError, through the
harness's input layer (medianest_load/inputs.py)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from statistics import NormalDist
from typing import Any

from medianest_load.bounds import Bound
from medianest_load.inputs import MISSING, Fields, InputError, shown
from medianest_load.yaml_files import read_yaml

PROFILES_FILE = Path(__file__).with_name("profiles.yaml")
BASE_PROFILE = "baseline"

# z of the 95th percentile; a lognormal can only have p95/mean up to exp(Z95^2 / 2), about 3.87.
Z95 = NormalDist().inv_cdf(0.95)
MAX_P95_RATIO = math.exp(Z95 * Z95 / 2)

# One service-time distribution per kind of work the app does (routes.py names them).
SERVICE_KEYS = (
    "health", "simple_health", "csrf", "plex_pin", "plex_verify", "session", "logout",
    "dashboard_cached", "dashboard_uncached", "dashboard_status", "notifications",
    "media_search", "media_details", "media_request_create", "media_requests_list",
    "media_request_detail", "media_request_delete", "upload", "page", "static",
)


class ConfigError(InputError):
    """A user mistake in a profile or a flag, as one line; `option` is set when a flag caused it (the command then
    reports it as click's bad parameter: `Invalid value for '--pool-size': got ..., expected ...`)."""

    def __init__(self, message: str, option: str | None = None):
        super().__init__(message)
        self.option = option

    @classmethod
    def of_option(cls, option: str, got: str, expected: str) -> ConfigError:
        return cls(f"Invalid value for '{option}': got {got}, expected {expected}", option)


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


# field -> (bound, whether it takes whole numbers only)
NUMBERS: dict[str, tuple[Bound, bool]] = {
    "latency_scale": (Bound(0, low_open=True), False),
    "error_rate": (Bound(0, 1), False),
    "stall_rate": (Bound(0, 1), False),
    "stall_max_s": (Bound(0, low_open=True), False),
    "pool_size": (Bound(1), True),
    "pool_timeout_s": (Bound(0, low_open=True), False),
    "crosstalk": (Bound(0), False),
    "cache_ttl_s": (Bound(0), False),
    "rate_limit": (Bound(0), True),
    "rate_window_s": (Bound(0, low_open=True), False),
    "push_interval_s": (Bound(0.01), False),
    "push_latency_ms": (Bound(0), False),
    "bundle_kb": (Bound(1), True),
    "max_upload_mb": (Bound(0, low_open=True), False),
    "leak_kb_per_connection": (Bound(0), True),
    "leak_kb_per_request": (Bound(0), True),
    "stall_window_s": (Bound(0), False),
    "stall_every_s": (Bound(0, low_open=True), False),
}
_SERVER_FIELDS = ("host", "port", "seed", "metrics_token", "exit_with_parent", "enforce_csrf", "fail_routes",
                  "hang_routes", "socket_auth_error", "third_party_script")
PUSH_SOURCES = ("server", "relay")
PROFILE_KEYS = {"description", "push_source", "service_times_ms", *NUMBERS}
SERVICE_TIME = Bound(0, low_open=True)


def option_name(field: str) -> str:
    """The flag that overrides a field: pool_size -> --pool-size."""
    return "--" + field.replace("_", "-")


def load_profiles(path: Path = PROFILES_FILE) -> dict[str, dict[str, Any]]:
    """The raw profiles of the YAML file, checked for shape only."""
    document = Fields.of(path, read_yaml(path, ConfigError, "a YAML file with a mapping 'profiles'"), "", ConfigError,
                         {"profiles"}, {"profiles"}, "a YAML file with a mapping 'profiles'")
    raw = document.data["profiles"]
    profiles = document.section("profiles", set(raw) if isinstance(raw, dict) else set(),
                                expected="a mapping of profile name -> mapping of fields")
    for name, fields in profiles.data.items():
        if not isinstance(fields, dict):
            profiles.fail(str(name), fields, "a mapping of fields")
    if BASE_PROFILE not in profiles.data:
        profiles.fail(BASE_PROFILE, MISSING, "a value (every profile inherits it)")
    return profiles.data


def profile_names(path: Path = PROFILES_FILE) -> list[str]:
    return list(load_profiles(path))


def _number_expected(field: str) -> str:
    bound, whole = NUMBERS[field]
    return f"{'a whole number' if whole else 'a number'} {bound.text}"


def _number(fields: Fields, field: str) -> float | int:
    bound, whole = NUMBERS[field]
    return fields.integer(field, bound) if whole else fields.number(field, bound)


def _service_times(fields: Fields) -> dict[str, ServiceTime]:
    times = fields.section("service_times_ms", SERVICE_KEYS, expected="a mapping of route -> [mean_ms, p95_ms]")
    parsed = {}
    for key, pair in times.data.items():
        if not (isinstance(pair, list) and len(pair) == 2 and all(SERVICE_TIME.holds(v) for v in pair)):
            times.fail(key, pair, "[mean_ms, p95_ms], both greater than 0")
        mean, p95 = pair
        if not mean <= p95 <= mean * MAX_P95_RATIO:
            times.fail(key, pair, f"p95 between the mean and {MAX_P95_RATIO:.2f} x the mean (a lognormal)")
        parsed[key] = ServiceTime(float(mean), float(p95))
    return parsed


def _profile_values(path: Path, name: str, raw: dict[str, Any]) -> tuple[dict[str, Any], dict[str, ServiceTime]]:
    fields = Fields.of(path, raw, f"profiles.{name}", ConfigError, PROFILE_KEYS)
    values: dict[str, Any] = {field: _number(fields, field) for field in NUMBERS if field in raw}
    if "description" in raw:
        values["description"] = str(raw["description"])
    if "push_source" in raw:
        values["push_source"] = fields.choice("push_source", PUSH_SOURCES)
    return values, _service_times(fields) if "service_times_ms" in raw else {}


def _override(field: str, raw: Any) -> Any:
    """A flag's value, checked as the profile's field is."""
    if field == "push_source":
        if raw not in PUSH_SOURCES:
            raise ConfigError.of_option("--push-source", shown(raw), f"one of {', '.join(PUSH_SOURCES)}")
        return raw
    bound, whole = NUMBERS[field]
    if not bound.holds(raw) or whole and not isinstance(raw, int):
        raise ConfigError.of_option(option_name(field), shown(raw), _number_expected(field))
    return int(raw) if whole else float(raw)


def _check_together(values: dict[str, Any], overrides: Mapping[str, Any], where: str) -> None:
    """What the fields imply together: faults of at most every request, pauses shorter than their period."""
    for first, second, broken, expected, got in (
            ("error_rate", "stall_rate", values["error_rate"] + values["stall_rate"] > 1,
             "error_rate + stall_rate at most 1", f"{values['error_rate']:g} + {values['stall_rate']:g}"),
            ("stall_window_s", "stall_every_s", values["stall_window_s"] >= values["stall_every_s"],
             "stall_window_s shorter than stall_every_s (else the target never answers)",
             f"{values['stall_window_s']:g} and {values['stall_every_s']:g}")):
        if not broken:
            continue
        flagged = [field for field in (first, second) if overrides.get(field) is not None]
        if flagged:
            raise ConfigError.of_option(option_name(flagged[0]), f"{first}, {second} = {got}", expected)
        raise ConfigError.at(where, f"{first}, {second}", got, expected)


def load_config(profile: str = BASE_PROFILE, overrides: Mapping[str, Any] | None = None,
                path: Path = PROFILES_FILE) -> TargetConfig:
    """Baseline, then the named profile, then the flags (`overrides`, keyed by field name; None = not given)."""
    profiles = load_profiles(path)
    if profile not in profiles:
        raise ConfigError.of_option("--profile", shown(profile), f"one of {', '.join(profiles)}")
    values: dict[str, Any] = {}
    service_times: dict[str, ServiceTime] = {}
    for name in dict.fromkeys([BASE_PROFILE, profile]):
        profile_values, profile_times = _profile_values(path, name, profiles[name])
        values.update(profile_values)
        service_times.update(profile_times)
    missing = [f for f in NUMBERS if f not in values] + [f"service_times_ms.{k}" for k in SERVICE_KEYS if k not in service_times]
    if missing:
        raise ConfigError.at(path, f"profiles.{BASE_PROFILE}.{missing[0]}", "nothing",
                             "a value (baseline sets every field; the other profiles inherit them)")
    server: dict[str, Any] = {}
    overrides = {field: raw for field, raw in (overrides or {}).items() if raw is not None}
    for field, raw in overrides.items():
        if field in _SERVER_FIELDS:
            server[field] = tuple(raw) if field.endswith("_routes") else raw
        elif field in NUMBERS or field == "push_source":
            values[field] = _override(field, raw)
        else:
            raise ConfigError(f"unknown setting {field!r}")
    _check_together(values, overrides, f"{path}: profiles.{profile}")
    return TargetConfig(profile=profile, description=values.get("description", ""),
                        push_source=values.get("push_source", "server"),
                        service_times=service_times, **{f: values[f] for f in NUMBERS}, **server)
