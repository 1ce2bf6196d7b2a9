"""Scenario files: load, validate, scale in time.

Every mistake becomes one `ScenarioError` line naming the file, the field, the bad value and what was
expected; unknown keys are rejected so that a typo never passes silently.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, NoReturn

from medianest_load import bounds
from medianest_load.bounds import Bound
from medianest_load.host_guard import EXPECTED, shown, url_problem
from medianest_load.paths import SCENARIOS_DIR, SLO_DIR, TARGET_PROFILES_DIR, resolve_named_file
from medianest_load.target_profile import ProfileError, load_target_profile
from medianest_load.yaml_files import read_yaml

TRAFFIC_KINDS = ("health", "auth", "dashboard", "media", "upload", "frontend", "sockets")


class ScenarioError(ValueError):
    """A user mistake in a scenario file: its message is the one line the user sees."""


@dataclass(frozen=True, kw_only=True)
class Stage:
    """A closed-model stage holds `users`; an open-model one (`rate` set) starts `rate` iterations per second
    from a pool of `users` (its max_users): docs/scenarios.md."""

    name: str
    users: int
    hold_s: float
    ramp_s: float | None = None
    spawn_rate: float | None = None
    browsers: int = 0  # real headless Chromium users beside the mix (not weighted into it)
    rate: float | None = None       # open model: iterations per second across the mix
    arrivals: str = "constant"      # open model: constant | poisson

    @property
    def is_open(self) -> bool:
        return self.rate is not None

    def spawn_rate_from(self, previous_users: int) -> float:
        """Users per second to reach this stage from the previous one (ramp_s wins when given)."""
        if self.spawn_rate is not None:
            return self.spawn_rate
        delta = abs(self.users - previous_users)
        if not self.ramp_s or delta == 0:
            return float(max(delta, 1))
        return max(delta / self.ramp_s, 0.01)


@dataclass(frozen=True, kw_only=True)
class ThinkTime:
    min_s: float = 1.0
    max_s: float = 3.0


@dataclass(frozen=True, kw_only=True)
class Timeouts:
    """None: the target profile's timeout applies (the profile is where a deployment's limits live)."""

    request_s: float | None = None
    connect_s: float | None = None


@dataclass(frozen=True, kw_only=True)
class ProjectPlan:
    """`project:` in a scenario: fit the capacity projection at the end of the run (docs/analysis.md)."""

    users: str = "3000,5000"  # user counts, or multiples of the largest measured stage ("3x,5x")
    holdout: int = 0


@dataclass(frozen=True, kw_only=True)
class Scenario:
    name: str
    description: str
    host: str
    stages: tuple[Stage, ...]
    mix: dict[str, float]
    target_profile: str = "reference"
    think_time: ThinkTime = field(default_factory=ThinkTime)
    slo: str = "staging-gate"
    timeouts: Timeouts = field(default_factory=Timeouts)
    allowed_hosts: tuple[str, ...] = ()
    stop_on_failed_stage: bool = True
    scrape_interval_s: float | None = None  # None: the target profile's metrics.scrape_interval_s, else 5 s
    project: ProjectPlan | None = None
    source: str = ""
    socket_session_s: float | None = None  # None: --socket-session-s (60 s by default)

    @property
    def peak_users(self) -> int:
        return max(stage.users for stage in self.stages)

    def planned_duration_s(self) -> float:
        """Ramps at their spawn rates plus every hold: what a run takes when the generator keeps up."""
        total, previous = 0.0, 0
        for stage in self.stages:
            total += abs(stage.users - previous) / stage.spawn_rate_from(previous) + stage.hold_s
            previous = stage.users
        return total

    def scaled(self, time_scale: float) -> Scenario:
        """Every ramp and hold multiplied by time_scale (spawn rates divided by it), for rehearsals; the scale and
        the scaled plan must stay within bounds (a 1e300 scale of a valid scenario is no plan)."""
        if not bounds.TIME_SCALE.holds(time_scale):
            raise ScenarioError(f"--time-scale: got {time_scale!r}, expected a number {bounds.TIME_SCALE.text}")
        stages = tuple(
            replace(
                stage,
                hold_s=stage.hold_s * time_scale,
                ramp_s=None if stage.ramp_s is None else stage.ramp_s * time_scale,
                spawn_rate=None if stage.spawn_rate is None else stage.spawn_rate / time_scale,
            )
            for stage in self.stages
        )
        scaled = replace(self, stages=stages)
        check_plan(scaled, f" after --time-scale {time_scale:g}" if time_scale != 1 else "")
        return scaled

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --- parsing -------------------------------------------------------------------------------------

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86_400.0, None: 1.0}
_TOP_LEVEL = {
    "name", "description", "host", "stages", "mix", "target_profile", "think_time", "slo", "timeouts",
    "allowed_hosts", "stop_on_failed_stage", "scrape_interval", "project", "socket_session",
}
_STAGE_KEYS = {"name", "users", "hold", "ramp", "spawn_rate", "rate", "max_users", "arrivals", "browsers"}
_RATE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*/\s*(s|m|h)\s*$")
ARRIVALS = ("constant", "poisson")


class _Fields:
    """Reads fields out of one mapping and turns every bad value into a ScenarioError line."""

    def __init__(self, source: str, data: Any, where: str, allowed: set[str], required: set[str]):
        self.source, self.where = source, where
        if not isinstance(data, dict):
            self.fail(where or "(top level)", data, "a mapping of keys to values")
        for key in data:
            if key not in allowed:
                self.fail(self.path(str(key)), key, f"one of the known keys: {', '.join(sorted(allowed))}")
        for key in sorted(required - set(data)):
            self.fail(self.path(key), None, "a value (the field is required)")
        self.data = data

    def path(self, key: str) -> str:
        return f"{self.where}.{key}" if self.where else key

    def fail(self, field_path: str, value: Any, expected: str) -> NoReturn:
        shown = "missing" if value is None else _shown(value)
        raise ScenarioError(f"{self.source}: {field_path}: got {shown}, expected {expected}")

    def text(self, key: str, default: str | None = None, max_chars: int = bounds.TEXT_CHARS) -> str:
        value = self.data.get(key, default)
        if not isinstance(value, str) or not value.strip():
            self.fail(self.path(key), value, "a non-empty string")
        if len(value) > max_chars:
            self.fail(self.path(key), f"{len(value)} characters", f"a text of at most {max_chars} characters")
        return value

    def number(self, key: str, bound: Bound, default: float | None = None) -> float:
        value = self.data.get(key, default)
        if value is None or not bound.holds(value):
            self.fail(self.path(key), value, f"a number {bound.text}")
        return float(value)

    def integer(self, key: str, bound: Bound) -> int:
        value = self.data.get(key)
        if not isinstance(value, int) or not bound.holds(value):
            self.fail(self.path(key), value, f"a whole number {bound.text}")
        return value

    def duration(self, key: str, bound: Bound, default: float | None = None) -> float:
        value = self.data.get(key, default)
        seconds = _parse_duration(value)
        if seconds is None or not bound.holds(seconds):
            self.fail(self.path(key), value, f"a duration {bound.text}, in seconds or like '30s', '5m', '2h', '7d'")
        return seconds

    def boolean(self, key: str, default: bool) -> bool:
        value = self.data.get(key, default)
        if not isinstance(value, bool):
            self.fail(self.path(key), value, "true or false")
        return value


def _shown(value: Any) -> str:
    """A bad value as an error line may show it: short, on one line."""
    text = repr(value)
    return text if len(text) <= 80 else f"{text[:60]}... ({len(text)} characters)"


def _parse_duration(value: Any) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value) if value >= 0 else None
    if isinstance(value, str) and (match := _DURATION.match(value)):
        return float(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    return None


def _parse_host(fields: _Fields) -> str:
    host = fields.text("host")
    problem = url_problem(host)
    if problem:
        raise ScenarioError(f"{fields.source}: host: got {shown(host)}, expected {EXPECTED}; {problem}")
    return host.rstrip("/")


_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def _parse_name(fields: _Fields) -> str:
    """The name becomes part of the results folder's name: no path separators, no surprises."""
    name = fields.text("name", max_chars=bounds.NAME_CHARS)
    if not _NAME.match(name):
        fields.fail("name", name, "letters, digits, '.', '_' or '-' (it names the results folder)")
    return name


def _parse_stages(fields: _Fields) -> tuple[Stage, ...]:
    raw = fields.data.get("stages")
    if not isinstance(raw, list) or not raw:
        fields.fail("stages", raw, "a non-empty list of stages (users, ramp or spawn_rate, hold)")
    if not bounds.STAGES.holds(len(raw)):
        fields.fail("stages", f"{len(raw)} stages", f"a list of {bounds.STAGES.text}")
    stages = []
    for index, item in enumerate(raw):
        is_open = isinstance(item, dict) and "rate" in item
        stage = _Fields(fields.source, item, f"stages[{index}]", _STAGE_KEYS,
                        {"rate", "max_users", "hold"} if is_open else {"users", "hold"})
        if "ramp" in item and "spawn_rate" in item:
            stage.fail(stage.path("spawn_rate"), item["spawn_rate"], "either ramp or spawn_rate, not both")
        if is_open and "users" in item:
            stage.fail(stage.path("users"), item["users"], "no users in an open-model stage (rate): max_users is its pool")
        for key in ("max_users", "arrivals"):
            if not is_open and key in item:
                stage.fail(stage.path(key), item[key], "a rate beside it (only open-model stages have one)")
        name = stage.text("name", f"stage{index + 1}")
        browsers = stage.integer("browsers", bounds.BROWSERS) if "browsers" in item else 0
        stages.append(
            Stage(
                name=name,
                users=stage.integer("max_users" if is_open else "users", bounds.USERS),
                hold_s=stage.duration("hold", bounds.HOLD_S),
                ramp_s=stage.duration("ramp", bounds.RAMP_S) if "ramp" in item else None,
                spawn_rate=stage.number("spawn_rate", bounds.SPAWN_RATE) if "spawn_rate" in item else None,
                browsers=browsers,
                **(_open_model(stage) if is_open else {}),
            )
        )
    names = [stage.name for stage in stages]
    duplicate = next((name for name in names if names.count(name) > 1), None)
    if duplicate:
        fields.fail("stages[].name", duplicate, "a name used by one stage only")
    return tuple(stages)


def _open_model(stage: _Fields) -> dict[str, Any]:
    """rate ('800/s', '600/m' or a number per second) and arrivals of an open-model stage."""
    raw = stage.data["rate"]
    match = _RATE.match(raw) if isinstance(raw, str) else None
    per_second = (float(match.group(1)) / {"s": 1, "m": 60, "h": 3600}[match.group(2)] if match
                  else float(raw) if isinstance(raw, (int, float)) and not isinstance(raw, bool) else 0.0)
    if not bounds.ARRIVAL_RATE.holds(per_second):
        stage.fail(stage.path("rate"), raw, f"iterations per time {bounds.ARRIVAL_RATE.text}, like '800/s', '600/m' or 800")
    arrivals = stage.data.get("arrivals", "constant")
    if arrivals not in ARRIVALS:
        stage.fail(stage.path("arrivals"), arrivals, f"one of {', '.join(ARRIVALS)}")
    return {"rate": per_second, "arrivals": arrivals}


def _parse_mix(fields: _Fields) -> dict[str, float]:
    mix_fields = _Fields(fields.source, fields.data.get("mix"), "mix", set(TRAFFIC_KINDS), set())
    mix = {kind: mix_fields.number(kind, bounds.MIX_WEIGHT) for kind in mix_fields.data}
    if not mix or sum(mix.values()) <= 0:
        fields.fail("mix", fields.data.get("mix"), f"weights for at least one of {', '.join(TRAFFIC_KINDS)}, not all zero")
    return mix


def _parse_think_time(fields: _Fields) -> ThinkTime:
    raw = fields.data.get("think_time", {"min": 1.0, "max": 3.0})
    think = _Fields(fields.source, raw, "think_time", {"min", "max"}, {"min", "max"})
    low, high = think.duration("min", bounds.THINK_S), think.duration("max", bounds.THINK_S)
    if high < low:
        think.fail("think_time.max", raw["max"], f"a duration at least think_time.min ({low:g} s)")
    return ThinkTime(min_s=low, max_s=high)


def _parse_timeouts(fields: _Fields) -> Timeouts:
    raw = fields.data.get("timeouts", {})
    timeouts = _Fields(fields.source, raw, "timeouts", {"request", "connect"}, set())
    return Timeouts(**{
        f"{key}_s": timeouts.duration(key, bounds.TIMEOUT_S) for key in ("request", "connect") if key in timeouts.data
    })


def _parse_named_file(fields: _Fields, key: str, default: str, folder: Path) -> str:
    name = fields.text(key, default)
    if not resolve_named_file(name, folder).exists():
        known = ", ".join(sorted(path.stem for path in folder.glob("*.yaml")))
        fields.fail(key, name, f"a file path or one of: {known}")
    return name


def _parse_target_profile(fields: _Fields) -> str:
    """The profile must exist and be valid itself: its own one-line error names its file and field."""
    name = _parse_named_file(fields, "target_profile", "reference", TARGET_PROFILES_DIR)
    try:
        load_target_profile(name)
    except ProfileError as error:
        raise ScenarioError(f"{fields.source}: target_profile: {error}") from None
    return name


def _parse_allowed_hosts(fields: _Fields) -> tuple[str, ...]:
    raw = fields.data.get("allowed_hosts", [])
    if not isinstance(raw, list) or not all(isinstance(host, str) and host for host in raw):
        fields.fail("allowed_hosts", raw, "a list of host names, like [staging.medianest.example]")
    return tuple(raw)


USER_COUNTS = re.compile(r"^\s*\d+(\.\d+)?x?\s*(,\s*\d+(\.\d+)?x?\s*)*$", re.IGNORECASE)


def _parse_project(fields: _Fields) -> ProjectPlan | None:
    raw = fields.data.get("project", False)
    if isinstance(raw, bool):
        return ProjectPlan() if raw else None
    if not isinstance(raw, dict):
        fields.fail("project", raw, "true, false or a mapping like {users: '3x,5x', holdout: 2}")
    plan = _Fields(fields.source, raw, "project", {"users", "holdout"}, set())
    users = str(raw.get("users", ProjectPlan.users))
    if not USER_COUNTS.match(users):
        plan.fail(plan.path("users"), raw.get("users"),
                  "user counts like '3000,5000' or multiples of the largest stage like '3x,5x'")
    return ProjectPlan(users=users, holdout=plan.integer("holdout", bounds.HOLDOUT) if "holdout" in raw else 0)


def check_plan(scenario: Scenario, scaled: str = "") -> None:
    """What the stages imply together stays within bounds: each ramp's spawn rate, each hold, the whole plan."""
    previous = 0
    for index, stage in enumerate(scenario.stages):
        rate = stage.spawn_rate_from(previous)
        if not bounds.SPAWN_RATE.holds(rate):
            field = "spawn_rate" if stage.spawn_rate is not None else "ramp"
            raise ScenarioError(f"{scenario.source}: stages[{index}].{field}: a spawn rate of {rate:,g} users/s{scaled}, "
                                f"expected a spawn rate {bounds.SPAWN_RATE.text} (a longer ramp)")
        for field, value, bound in (("hold", stage.hold_s, bounds.HOLD_S), ("ramp", stage.ramp_s, bounds.RAMP_S)):
            if value is not None and not bound.holds(value):
                raise ScenarioError(f"{scenario.source}: stages[{index}].{field}: {value:,.0f} s{scaled}, "
                                    f"expected a duration {bound.text}")
        previous = stage.users
    planned = scenario.planned_duration_s()
    if not bounds.PLANNED_S.holds(planned):
        raise ScenarioError(f"{scenario.source}: stages: a plan of {planned:,.0f} s{scaled}, "
                            f"expected ramps and holds adding up to {bounds.PLANNED_S.text}")


def parse_scenario(data: Any, source: str) -> Scenario:
    fields = _Fields(source, data, "", _TOP_LEVEL, {"name", "host", "stages", "mix"})
    scenario = Scenario(
        name=_parse_name(fields),
        description=fields.text("description", "(no description)", bounds.DESCRIPTION_CHARS),
        host=_parse_host(fields),
        stages=_parse_stages(fields),
        mix=_parse_mix(fields),
        target_profile=_parse_target_profile(fields),
        think_time=_parse_think_time(fields),
        slo=_parse_named_file(fields, "slo", "staging-gate", SLO_DIR),
        timeouts=_parse_timeouts(fields),
        allowed_hosts=_parse_allowed_hosts(fields),
        stop_on_failed_stage=fields.boolean("stop_on_failed_stage", True),
        scrape_interval_s=(fields.duration("scrape_interval", bounds.SCRAPE_INTERVAL_S)
                           if "scrape_interval" in fields.data else None),
        project=_parse_project(fields),
        source=source,
        socket_session_s=(fields.duration("socket_session", bounds.SOCKET_SESSION_S)
                          if "socket_session" in fields.data else None),
    )
    check_plan(scenario)
    return scenario


def load_scenario(name_or_path: str) -> Scenario:
    """Load and validate a scenario file (a path, or a name in scenarios/)."""
    path = resolve_named_file(name_or_path, SCENARIOS_DIR)
    data = read_yaml(path, ScenarioError, "a YAML scenario file (see docs/scenarios.md)")
    return parse_scenario(data, str(path))


def list_scenarios() -> list[Path]:
    return sorted(SCENARIOS_DIR.glob("*.yaml"))
