"""Scenario files: load, validate, scale in time.

Every mistake becomes one `ScenarioError` line (medianest_load/inputs.py) naming the file, the field, the bad value
and what was expected; unknown keys are rejected so that a typo never passes silently.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from medianest_load import bounds
from medianest_load.host_guard import EXPECTED, shown, url_problem
from medianest_load.inputs import Fields, InputError, InputKind, load_named, rate_per_s
from medianest_load.paths import SCENARIOS_DIR, SLO_DIR, TARGET_PROFILES_DIR, resolve_named_file
from medianest_load.target_profile import TARGET_PROFILE

TRAFFIC_KINDS = ("health", "auth", "dashboard", "media", "upload", "frontend", "sockets")


class ScenarioError(InputError):
    """A user mistake in a scenario file (or in --time-scale, which scales it)."""


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
    api_ttfb: bool | None = None  # None: --api-ttfb (off by default)

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

_TOP_LEVEL = {
    "name", "description", "host", "stages", "mix", "target_profile", "think_time", "slo", "timeouts",
    "allowed_hosts", "stop_on_failed_stage", "scrape_interval", "project", "socket_session", "api_ttfb",
}
_STAGE_KEYS = {"name", "users", "hold", "ramp", "spawn_rate", "rate", "max_users", "arrivals", "browsers"}
ARRIVALS = ("constant", "poisson")


def _parse_host(fields: Fields) -> str:
    host = fields.text("host")
    problem = url_problem(host)
    if problem:
        raise ScenarioError.at(fields.source, "host", shown(host), f"{EXPECTED}; {problem}")
    return host.rstrip("/")


_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def _parse_name(fields: Fields) -> str:
    """The name becomes part of the results folder's name: no path separators, no surprises."""
    name = fields.text("name", max_chars=bounds.NAME_CHARS)
    if not _NAME.match(name):
        fields.fail("name", name, "letters, digits, '.', '_' or '-' (it names the results folder)")
    return name


def _parse_stages(fields: Fields) -> tuple[Stage, ...]:
    raw = fields.get("stages")
    if not isinstance(raw, list) or not raw:
        fields.fail("stages", raw, "a non-empty list of stages (users, ramp or spawn_rate, hold)")
    if not bounds.STAGES.holds(len(raw)):
        fields.refuse("stages", f"{len(raw)} stages", f"a list of {bounds.STAGES.text}")
    stages = [_parse_stage(fields, item, index) for index, item in enumerate(raw)]
    names = [stage.name for stage in stages]
    duplicate = next((name for name in names if names.count(name) > 1), None)
    if duplicate:
        fields.fail("stages[].name", duplicate, "a name used by one stage only")
    return tuple(stages)


def _parse_stage(fields: Fields, item: Any, index: int) -> Stage:
    """A closed-model stage (users) or an open-model one (rate, max_users): never a mix of both."""
    is_open = isinstance(item, dict) and "rate" in item
    stage = Fields.of(fields.source, item, f"stages[{index}]", ScenarioError, _STAGE_KEYS,
                      {"rate", "max_users", "hold"} if is_open else {"users", "hold"})
    if "ramp" in item and "spawn_rate" in item:
        stage.fail("spawn_rate", item["spawn_rate"], "either ramp or spawn_rate, not both")
    if is_open and "users" in item:
        stage.fail("users", item["users"], "no users in an open-model stage (rate): max_users is its pool")
    for key in ("max_users", "arrivals"):
        if not is_open and key in item:
            stage.fail(key, item[key], "a rate beside it (only open-model stages have one)")
    return Stage(
        name=stage.text("name", f"stage{index + 1}"),
        users=stage.integer("max_users" if is_open else "users", bounds.USERS),
        hold_s=stage.duration("hold", bounds.HOLD_S),
        ramp_s=stage.duration("ramp", bounds.RAMP_S, None),
        spawn_rate=stage.number("spawn_rate", bounds.SPAWN_RATE, None),
        browsers=stage.integer("browsers", bounds.BROWSERS, 0),
        **(_open_model(stage) if is_open else {}),
    )


def _open_model(stage: Fields) -> dict[str, Any]:
    """rate ('800/s', '600/m' or a number per second) and arrivals of an open-model stage."""
    raw = stage.get("rate")
    per_second = rate_per_s(raw)
    if not bounds.ARRIVAL_RATE.holds(per_second):
        stage.fail("rate", raw, f"iterations per time {bounds.ARRIVAL_RATE.text}, like '800/s', '600/m' or 800")
    return {"rate": per_second, "arrivals": stage.choice("arrivals", ARRIVALS, "constant")}


def _parse_mix(fields: Fields) -> dict[str, float]:
    mix_fields = fields.section("mix", TRAFFIC_KINDS, default=None)
    mix = {kind: mix_fields.number(kind, bounds.MIX_WEIGHT) for kind in mix_fields.data}
    if not mix or sum(mix.values()) <= 0:
        fields.fail("mix", fields.data.get("mix"), f"weights for at least one of {', '.join(TRAFFIC_KINDS)}, not all zero")
    return mix


def _parse_think_time(fields: Fields) -> ThinkTime:
    think = fields.section("think_time", {"min", "max"}, {"min", "max"}, {"min": 1.0, "max": 3.0})
    low, high = think.duration("min", bounds.THINK_S), think.duration("max", bounds.THINK_S)
    if high < low:
        think.fail("max", think.data["max"], f"a duration at least think_time.min ({low:g} s)")
    return ThinkTime(min_s=low, max_s=high)


def _parse_timeouts(fields: Fields) -> Timeouts:
    timeouts = fields.section("timeouts", {"request", "connect"}, default={})
    return Timeouts(request_s=timeouts.duration("request", bounds.TIMEOUT_S, None),
                    connect_s=timeouts.duration("connect", bounds.TIMEOUT_S, None))


def _parse_named_file(fields: Fields, key: str, default: str, folder: Path) -> str:
    name = fields.text(key, default)
    if not resolve_named_file(name, folder).exists():
        known = ", ".join(sorted(path.stem for path in folder.glob("*.yaml")))
        fields.fail(key, name, f"a file path or one of: {known}")
    return name


def _parse_target_profile(fields: Fields) -> str:
    """The profile must exist and be valid itself: its own one-line error names its file and field."""
    name = _parse_named_file(fields, "target_profile", "reference", TARGET_PROFILES_DIR)
    try:
        load_named(TARGET_PROFILE, name)
    except InputError as error:
        raise ScenarioError.nested(fields.source, "target_profile", error) from None
    return name


def _parse_allowed_hosts(fields: Fields) -> tuple[str, ...]:
    hosts = fields.value("allowed_hosts", lambda v: isinstance(v, list) and all(isinstance(h, str) and h for h in v),
                         "a list of host names, like [staging.medianest.example]", [])
    return tuple(hosts)


USER_COUNTS = re.compile(r"^\s*\d+(\.\d+)?x?\s*(,\s*\d+(\.\d+)?x?\s*)*$", re.IGNORECASE)


def _parse_project(fields: Fields) -> ProjectPlan | None:
    raw = fields.get("project", False)
    if isinstance(raw, bool):
        return ProjectPlan() if raw else None
    plan = fields.section("project", {"users", "holdout"},
                          expected="true, false or a mapping like {users: '3x,5x', holdout: 2}")
    users = str(plan.get("users", ProjectPlan.users))
    if not USER_COUNTS.match(users):
        plan.fail("users", raw.get("users"), "user counts like '3000,5000' or multiples of the largest stage like '3x,5x'")
    return ProjectPlan(users=users, holdout=plan.integer("holdout", bounds.HOLDOUT, 0))


def check_plan(scenario: Scenario, scaled: str = "") -> None:
    """What the stages imply together stays within bounds: each ramp's spawn rate, each hold, the whole plan."""
    previous = 0
    for index, stage in enumerate(scenario.stages):
        rate = stage.spawn_rate_from(previous)
        if not bounds.SPAWN_RATE.holds(rate):
            field = "spawn_rate" if stage.spawn_rate is not None else "ramp"
            raise ScenarioError.at(scenario.source, f"stages[{index}].{field}", f"a spawn rate of {rate:,g} users/s{scaled}",
                                   f"a spawn rate {bounds.SPAWN_RATE.text} (a longer ramp)")
        for field, value, bound in (("hold", stage.hold_s, bounds.HOLD_S), ("ramp", stage.ramp_s, bounds.RAMP_S)):
            if value is not None and not bound.holds(value):
                raise ScenarioError.at(scenario.source, f"stages[{index}].{field}", f"{value:,.0f} s{scaled}",
                                       f"a duration {bound.text}")
        previous = stage.users
    planned = scenario.planned_duration_s()
    if not bounds.PLANNED_S.holds(planned):
        raise ScenarioError.at(scenario.source, "stages", f"a plan of {planned:,.0f} s{scaled}",
                               f"ramps and holds adding up to {bounds.PLANNED_S.text}")


def parse_scenario(data: Any, source: str) -> Scenario:
    fields = Fields.of(source, data, "", ScenarioError, _TOP_LEVEL, {"name", "host", "stages", "mix"})
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
        scrape_interval_s=fields.duration("scrape_interval", bounds.SCRAPE_INTERVAL_S, None),
        project=_parse_project(fields),
        source=source,
        socket_session_s=fields.duration("socket_session", bounds.SOCKET_SESSION_S, None),
        api_ttfb=fields.boolean("api_ttfb", None),
    )
    check_plan(scenario)
    return scenario


SCENARIO = InputKind("scenario", SCENARIOS_DIR, "a YAML scenario file (see docs/scenarios.md)", parse_scenario,
                     ScenarioError)


def list_scenarios() -> list[Path]:
    return sorted(SCENARIOS_DIR.glob("*.yaml"))
