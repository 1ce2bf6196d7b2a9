"""The input layer (medianest_load/inputs.py): one parser for quantities with units, with explicit rules per field,
and, for each of the four kinds of YAML file, mistakes worded the same way: `FILE: FIELD: got X, expected Y`."""

from pathlib import Path

import pytest
import yaml

from analysis.slo import SLO, SloError
from medianest_load.inputs import InputError, duration_s, load_named, rate_per_s
from medianest_load.paths import TARGET_PROFILES_DIR
from medianest_load.scenario import SCENARIO, ScenarioError
from medianest_load.target_profile import TARGET_PROFILE, ProfileError
from reference_target.config import PROFILE_KEYS, PROFILES_FILE, ConfigError, load_config

DURATION_HINT = "in seconds or like '30s', '5m', '2h', '7d'"


@pytest.mark.parametrize("text, seconds", [
    (30, 30.0), (2.5, 2.5), (0, 0.0), ("0", 0.0), ("500ms", 0.5), ("30s", 30.0), ("30 s", 30.0), ("5m", 300.0),
    ("5min", 300.0), ("2h", 7200.0), ("7d", 604_800.0), (".5s", 0.5), ("1e3ms", 1.0), ("10S", 10.0),
    (-1, None), ("-1s", None), ("10 parsecs", None), ("", None), (True, None), (None, None), ([30], None),
])
def test_one_duration_parser_reads_what_scenarios_and_slo_sets_both_wrote(text, seconds):
    assert duration_s(text) == seconds


@pytest.mark.parametrize("text, per_second", [
    ("800/s", 800.0), ("600/m", 10.0), ("600/min", 10.0), ("3600/h", 1.0), ("5 / s", 5.0), (12.5, 12.5),
    ("800", 800.0), ("x/s", None), ("800/d", None), (-3, None), (False, None),
])
def test_one_rate_parser(text, per_second):
    assert rate_per_s(text) == per_second


SCENARIO_TEXT = {"name": "table", "host": "http://127.0.0.1:8080", "mix": {"health": 1},
                 "stages": [{"name": "one", "users": 5, "ramp": "2s", "hold": "10s"}]}


def scenario(**change):
    return yaml.safe_dump({**SCENARIO_TEXT, **change})


def staged(**stage):
    return scenario(stages=[{"name": "one", "users": 5, "hold": "10s", **stage}])


def profile(edit) -> str:
    data = yaml.safe_load((TARGET_PROFILES_DIR / "medianest-main.yaml").read_text())
    edit(data)
    return yaml.safe_dump(data)


def slo(**criterion):
    return yaml.safe_dump({"name": "table", "criteria": [{"name": "a", "metric": "p95_ms", "critical": "> 1 s",
                                                          **criterion}]})


def reference_profiles(**fields):
    return PROFILES_FILE.read_text() + "\n  broken:\n" + "".join(f"    {key}: {value}\n" for key, value in fields.items())


KINDS = {  # kind -> (how to load a file of it, the error it raises)
    "scenario": (lambda path: load_named(SCENARIO, path), ScenarioError),
    "target profile": (lambda path: load_named(TARGET_PROFILE, path), ProfileError),
    "SLO set": (lambda path: load_named(SLO, path), SloError),
    "reference target profiles": (lambda path: load_config("broken", path=Path(path)), ConfigError),
}
# (kind, file text, field, got, expected): the whole line, word for word
MISTAKES = [
    ("scenario", staged(hold=0), "stages[0].hold", "0",
     f"a duration greater than 0 and at most 604,800 s (7 days), {DURATION_HINT}"),
    ("scenario", staged(ramp="2 fortnights"), "stages[0].ramp", "'2 fortnights'",
     f"a duration at least 0 and at most 604,800 s (7 days), {DURATION_HINT}"),
    ("scenario", staged(users=2.5), "stages[0].users", "2.5", "a whole number at least 1 and at most 1,000,000"),
    ("scenario", staged(hold=None), "stages[0].hold", "null",
     f"a duration greater than 0 and at most 604,800 s (7 days), {DURATION_HINT}"),
    ("scenario", scenario(stages=[{"name": "one", "users": 5}]), "stages[0].hold", "nothing",
     "a value (the field is required)"),
    ("scenario", scenario(mix={"helth": 1}), "mix.helth", "'helth'",
     "one of the known keys: auth, dashboard, frontend, health, media, sockets, upload"),
    ("scenario", scenario(description="x" * 2500), "description", "2,500 characters", "a text of at most 2000 characters"),
    ("scenario", scenario(stages=[{"rate": "fast", "max_users": 5, "hold": "10s"}]), "stages[0].rate", "'fast'",
     "iterations per time greater than 0 and at most 100,000 iterations/s, like '800/s', '600/m' or 800"),
    ("scenario", scenario(stop_on_failed_stage="yes"), "stop_on_failed_stage", "'yes'", "true or false"),
    ("target profile", profile(lambda d: d["timeouts"].update(request_s="10s")), "timeouts.request_s", "'10s'",
     "a number of seconds greater than 0 and at most 3,600 s (1 hour)"),
    ("target profile", profile(lambda d: d["routes"].pop("session")), "routes.session", "nothing",
     "a value (the field is required)"),
    ("target profile", profile(lambda d: d["auth"].update(mode="oauth")), "auth.mode", "'oauth'", "one of login, tokens"),
    ("target profile", profile(lambda d: d["metrics"].update(scrape_interval_s=0.1)), "metrics.scrape_interval_s", "0.1",
     "a number of seconds at least 0.2 and at most 3,600 s (1 hour)"),
    ("target profile", profile(lambda d: d.update(routes=["/"])), "routes", "['/']", "a mapping of keys to values"),
    ("SLO set", slo(**{"for": "0s"}), "criteria[0].for", "'0s'",
     "a duration greater than 0 and at most 2,678,400 s (31 days), like \"30s\" or \"2m\""),
    ("SLO set", slo(critical="> fast"), "criteria[0].critical", "'> fast'",
     "a condition like \"> 200 ms\" (>, >=, <, <= then a number; units for p95_ms: 'ms', 's', 'us')"),
    ("SLO set", slo(colour="red"), "criteria[0].colour", "'colour'",
     "one of the known keys: abort, confidence, critical, description, endpoint, for, metric, min_requests, name, phase, "
     "required, split, stage, timing, warn"),
    ("SLO set", slo(min_requests=0), "criteria[0].min_requests", "0", "a whole number at least 1"),
    ("SLO set", slo(warn="> 2 s"), "criteria[0].critical", "'> 1 s'",
     "a limit at least as far as warn '> 2 s' (critical is the more severe)"),
    ("reference target profiles", reference_profiles(pool_size="many"), "profiles.broken.pool_size", "'many'",
     "a whole number at least 1"),
    ("reference target profiles", reference_profiles(error_rate=1.5), "profiles.broken.error_rate", "1.5",
     "a number at least 0 and at most 1"),
    ("reference target profiles", reference_profiles(pool_sise=5), "profiles.broken.pool_sise", "'pool_sise'",
     f"one of the known keys: {', '.join(sorted(PROFILE_KEYS))}"),
    ("reference target profiles", reference_profiles(push_source="carrier-pigeon"), "profiles.broken.push_source",
     "'carrier-pigeon'", "one of server, relay"),
    ("reference target profiles", reference_profiles(service_times_ms="{health: [10, 50]}"),
     "profiles.broken.service_times_ms.health", "[10, 50]", "p95 between the mean and 3.87 x the mean (a lognormal)"),
]


@pytest.mark.parametrize("kind, text, field, got, expected", MISTAKES,
                         ids=[f"{case[0]}: {case[2]}: {case[3]}" for case in MISTAKES])
def test_each_kind_of_file_words_a_mistake_as_file_field_got_expected(tmp_path, kind, text, field, got, expected):
    load, error = KINDS[kind]
    path = tmp_path / "input.yaml"
    path.write_text(text)
    with pytest.raises(error) as caught:
        load(str(path))
    assert isinstance(caught.value, InputError), "the CLI catches this one base class"
    assert str(caught.value) == f"{path}: {field}: got {got}, expected {expected}"


@pytest.mark.parametrize("kind", ["scenario", "target profile", "SLO set"])  # (one file holds the reference target's)
def test_a_name_that_is_no_file_lists_the_names_there_are(kind):
    load, error = KINDS[kind]
    with pytest.raises(error, match=r"^nonesuch: \(file\): got no such file, expected a path to a YAML .* or one of the "
                                    r"names [a-z0-9-]+(, [a-z0-9-]+)+$"):
        load("nonesuch")


@pytest.mark.parametrize("field, value", [("ramp", 0), ("ramp", "0s"), ("hold", "30min"), ("spawn_rate", 0.5)])
def test_a_scenario_keeps_its_per_field_rules(tmp_path, field, value):
    """ramp may be 0 (a jump), hold may not; `min` is a unit everywhere now. What was valid stays valid."""
    path = tmp_path / "ok.yaml"
    stage = {"name": "one", "users": 5, "hold": "10s", field: value}
    path.write_text(scenario(stages=[stage]))
    assert load_named(SCENARIO, str(path)).stages[0].users == 5
