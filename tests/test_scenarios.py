"""Scenario files: every shipped one validates, and each kind of mistake gets its own one-line error."""

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from medianest_load.inputs import load_named
from medianest_load.scenario import SCENARIO, ScenarioError, list_scenarios

CLI = [sys.executable, "-m", "medianest_load.cli"]

VALID = {
    "name": "table",
    "host": "http://127.0.0.1:8080",
    "stages": [{"name": "one", "users": 5, "ramp": "2s", "hold": "10s"}],
    "mix": {"health": 1},
}

# (what is wrong, the change to VALID, the field named in the error, a phrase of what was expected)
MISTAKES = [
    ("unknown top-level key", {"stagse": []}, "stagse", "known keys"),
    ("missing name", {"name": None}, "name", "required"),
    ("empty name", {"name": " "}, "name", "non-empty string"),
    ("name with a path", {"name": "a/../../x"}, "name", "letters, digits"),
    ("host without scheme", {"host": "127.0.0.1:8080"}, "host", "http:// or https:// URL"),
    ("host with ftp", {"host": "ftp://127.0.0.1"}, "host", "http:// or https:// URL"),
    ("host name with a space", {"host": "http://qa:s3cret@bad host:8080"}, "host", "http:// or https:// URL"),
    ("no stages", {"stages": []}, "stages", "non-empty list"),
    ("stages not a list", {"stages": {"users": 5}}, "stages", "non-empty list"),
    ("users as text", {"stages": [{"users": "ten", "hold": 5}]}, "stages[0].users", "whole number"),
    ("zero users", {"stages": [{"users": 0, "hold": 5}]}, "stages[0].users", "at least 1"),
    ("missing hold", {"stages": [{"users": 5}]}, "stages[0].hold", "required"),
    ("bad hold unit", {"stages": [{"users": 5, "hold": "10 parsecs"}]}, "stages[0].hold", "duration"),
    ("negative ramp", {"stages": [{"users": 5, "hold": 5, "ramp": -3}]}, "stages[0].ramp", "duration"),
    ("ramp and spawn_rate", {"stages": [{"users": 5, "hold": 5, "ramp": 3, "spawn_rate": 2}]},
     "stages[0].spawn_rate", "not both"),
    ("zero spawn rate", {"stages": [{"users": 5, "hold": 5, "spawn_rate": 0}]}, "stages[0].spawn_rate", "greater than 0"),
    ("unknown stage key", {"stages": [{"users": 5, "hold": 5, "hodl": 5}]}, "stages[0].hodl", "known keys"),
    ("negative browsers", {"stages": [{"users": 5, "hold": 5, "browsers": -1}]}, "stages[0].browsers", "at least 0"),
    ("browsers as text", {"stages": [{"users": 5, "hold": 5, "browsers": "two"}]}, "stages[0].browsers", "whole number"),
    ("a crowd of browsers", {"stages": [{"users": 5, "hold": 5, "browsers": 50}]}, "stages[0].browsers", "at most 8"),
    ("duplicate stage names", {"stages": [{"name": "a", "users": 5, "hold": 5}, {"name": "a", "users": 9, "hold": 5}]},
     "stages[].name", "used by one stage only"),
    ("unknown traffic kind", {"mix": {"helth": 1}}, "mix.helth", "known keys"),
    ("negative weight", {"mix": {"health": -1}}, "mix.health", "at least 0"),
    ("all weights zero", {"mix": {"health": 0}}, "mix", "not all zero"),
    ("think max below min", {"think_time": {"min": "3s", "max": "1s"}}, "think_time.max", "at least think_time.min"),
    ("think time missing max", {"think_time": {"min": 1}}, "think_time.max", "required"),
    ("zero request timeout", {"timeouts": {"request": 0}}, "timeouts.request", "greater than 0"),
    ("unknown target profile", {"target_profile": "nonesuch"}, "target_profile", "one of"),
    ("unknown slo", {"slo": "nonesuch"}, "slo", "one of"),
    ("allowed_hosts as text", {"allowed_hosts": "staging.example"}, "allowed_hosts", "list of host names"),
    ("stop flag as text", {"stop_on_failed_stage": "yes"}, "stop_on_failed_stage", "true or false"),
]


def write(tmp_path: Path, data, name: str = "case.yaml") -> Path:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return path


def test_every_shipped_scenario_validates_and_the_required_ones_exist():
    names = {path.stem for path in list_scenarios()}
    assert {"smoke", "demo", "staging-stage1", "staging-stage2", "staging-stage3", "stress-1000", "scale-3x",
            "scale-5x", "capacity-ladder", "soak", "spike"} <= names
    for path in list_scenarios():
        load_named(SCENARIO, str(path))


def test_shipped_scenarios_match_the_audit_protocol():
    peaks = {path.stem: load_named(SCENARIO, str(path)).peak_users for path in list_scenarios()}
    assert (peaks["staging-stage1"], peaks["staging-stage2"], peaks["staging-stage3"]) == (50, 200, 500)
    assert (peaks["stress-1000"], peaks["scale-3x"], peaks["scale-5x"]) == (1000, 3000, 5000)
    smoke = load_named(SCENARIO, "smoke")
    assert smoke.planned_duration_s() < 30
    assert set(smoke.mix) == {"health", "auth", "dashboard", "media", "upload", "frontend", "sockets"}
    ladder = load_named(SCENARIO, "capacity-ladder")
    users = [stage.users for stage in ladder.stages]
    assert len(users) >= 8 and users[0] >= 10 and users[-1] <= 3000 and users == sorted(users)
    soak = load_named(SCENARIO, "soak")
    assert soak.stages[-1].users == 500 and soak.stages[-1].hold_s == 7200
    assert 60 <= load_named(SCENARIO, "demo").planned_duration_s() <= 120


@pytest.mark.parametrize("what, change, field, expected", MISTAKES, ids=[m[0] for m in MISTAKES])
def test_each_mistake_gets_one_line_naming_file_field_and_expectation(tmp_path, what, change, field, expected):
    data = {**VALID, **change}
    data = {key: value for key, value in data.items() if value is not None}
    path = write(tmp_path, data)
    with pytest.raises(ScenarioError) as caught:
        load_named(SCENARIO, str(path))
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: {field}: ")
    assert expected in message
    assert "s3cret" not in message, "a password in a URL is never echoed"


def test_yaml_syntax_error_and_missing_file_are_one_line(tmp_path):
    broken = write(tmp_path, "name: x\nstages: [\n")
    with pytest.raises(ScenarioError, match=rf"^{broken}: \(YAML\) line \d+, column \d+: got text that is not valid YAML"):
        load_named(SCENARIO, str(broken))
    absent = tmp_path / "absent.yaml"
    with pytest.raises(ScenarioError, match=rf"^{absent}: \(file\): got no such file, expected a path to a YAML scenario "
                                            r"file .* or one of the names .*smoke"):
        load_named(SCENARIO, str(absent))
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"name: \xff\xfe\x00")
    with pytest.raises(ScenarioError, match=rf"^{binary}: \(file\): got bytes that are not UTF-8 text"):
        load_named(SCENARIO, str(binary))


def test_time_scale_shortens_ramps_and_holds():
    stress = load_named(SCENARIO, "stress-1000")
    scaled = stress.scaled(0.05)
    assert scaled.planned_duration_s() == pytest.approx(stress.planned_duration_s() * 0.05)
    assert [stage.users for stage in scaled.stages] == [stage.users for stage in stress.stages]


def test_cli_validate_and_list(tmp_path):
    bad = write(tmp_path, {**VALID, "mix": {"helth": 1}})
    result = subprocess.run([*CLI, "scenarios", "validate", str(bad), "smoke"], capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [f"error: {bad}: mix.helth: got 'helth', expected one of the known keys: "
                                                  "auth, dashboard, frontend, health, media, sockets, upload"]
    assert "ok: " in result.stdout and "smoke.yaml" in result.stdout
    listing = subprocess.run([*CLI, "scenarios", "list"], capture_output=True, text=True, check=True).stdout
    assert "stress-1000" in listing and "peak  1000 users" in listing and "2h" in listing


def test_validate_parses_the_scenarios_slo_set_too(tmp_path):
    slo = write(tmp_path, "name: broken\ncriteria:\n  - {name: a, metric: p97_ms, critical: '> 1'}\n", "broken-slo.yaml")
    scenario = write(tmp_path, {**VALID, "slo": str(slo)})
    result = subprocess.run([*CLI, "scenarios", "validate", str(scenario)], capture_output=True, text=True)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {scenario}: slo: {slo}: criteria[0].metric"), lines
