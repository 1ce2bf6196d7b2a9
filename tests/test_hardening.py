"""Issue #14's fault matrix, one table per kind of fault: each case failed before the hardening and passes now.

Inputs: absurd numbers and duplicate keys are one line naming file, field and bound (exit 2), in `validate` and
`run`. Criteria that cannot match are load-time errors. Damaged results folders are one line in `analyze` and
`compare`. (Host-guard, ticker and memory cases are further down.)
"""

import json
import shutil
import socket
import subprocess
import sys
from dataclasses import replace
from datetime import datetime
from pathlib import Path

import pandas as pd
import pytest
import yaml
from click.testing import CliRunner
from locust.argument_parser import get_parser

from analysis.judging import Evidence, judge, judge_run
from analysis.load import load_run, series_chunks
from analysis.slo import SLO, SloError
from analysis.verdict import FAIL, INCONCLUSIVE, NO_DATA, WARN
from medianest_load.cli import main
from medianest_load.failures import HttpServerError
from medianest_load.host_guard import CLIENT_PARSERS, HostRefused, check_host, client_views
from medianest_load.inputs import load_named
from medianest_load.progress import Progress
from medianest_load.recorder import MESSAGES_PER_KIND, RECENT_SECONDS, Recorder
from medianest_load.results_format import NOT_REQUESTS
from medianest_load.run import RunRequest, ScenarioRun
from medianest_load.scenario import SCENARIO
from medianest_load.settings import HarnessOptions, host_refusal
from medianest_load.shape import StagedShape
from medianest_load.target_profile import TARGET_PROFILE, ProfileError
from reference_target.config import ConfigError, load_profiles
from reference_target.launcher import start_target

CLI = [sys.executable, "-m", "medianest_load.cli"]
VALID = {
    "name": "table",
    "host": "http://127.0.0.1:8080",
    "stages": [{"name": "one", "users": 5, "ramp": "2s", "hold": "10s"}],
    "mix": {"health": 1},
}
STAGE = VALID["stages"][0]

# (case, scenario text or a change to VALID's first stage / top level, field named, phrase of the bound)
BAD_SCENARIOS = [
    ("hold .inf", {"stage": {"hold": float("inf")}}, "stages[0].hold", "at most 604,800 s (7 days)"),
    ("hold nan", {"stage": {"hold": float("nan")}}, "stages[0].hold", "at most 604,800 s (7 days)"),
    ("hold 100000000h", {"stage": {"hold": "100000000h"}}, "stages[0].hold", "at most 604,800 s (7 days)"),
    ("ramp 8 days", {"stage": {"ramp": "192h"}}, "stages[0].ramp", "at most 604,800 s (7 days)"),
    ("a billion users", {"stage": {"users": 1_000_000_000}}, "stages[0].users", "at most 1,000,000"),
    ("spawn rate 1e9", {"stage": {"spawn_rate": 1_000_000_000, "ramp": None}}, "stages[0].spawn_rate",
     "at most 10,000 users/s"),
    ("a million users in no time", {"stage": {"users": 1_000_000, "ramp": 0}}, "stages[0].ramp",
     "a spawn rate greater than 0 and at most 10,000 users/s"),
    ("think time inf", {"think_time": {"min": 1, "max": float("inf")}}, "think_time.max", "at most 3,600 s"),
    ("timeout 2 hours", {"timeouts": {"request": "2h"}}, "timeouts.request", "at most 3,600 s"),
    ("mix weight inf", {"mix": {"health": float("inf")}}, "mix.health", "at most 1,000,000"),
    ("50 KB description", {"description": "x" * 50_000}, "description", "at most 2000 characters"),
    ("31 weekly stages", {"stages": [{**STAGE, "name": f"s{i}", "hold": 604_800} for i in range(6)]},
     "stages", "adding up to at least 0 and at most 2,678,400 s (31 days)"),
    ("duplicate users key", "name: dup\nhost: http://127.0.0.1:8080\nmix: {health: 1}\n"
                           "stages:\n  - {users: 6, users: 7, hold: 5}\n", "(YAML) line 5",
     "duplicate key 'users' (first on line 5)"),
    ("duplicate name key", "name: first\nhost: http://127.0.0.1:8080\nmix: {health: 1}\nname: second\n"
                          "stages: [{users: 1, hold: 5}]\n", "(YAML) line 4", "duplicate key 'name' (first on line 1)"),
]


def scenario_text(change) -> str:
    if isinstance(change, str):
        return change
    data = {**VALID, **{key: value for key, value in change.items() if key != "stage"}}
    if "stage" in change:
        stage = {**STAGE, **change["stage"]}
        data["stages"] = [{key: value for key, value in stage.items() if value is not None}]
    return yaml.safe_dump(data, width=10**9)


def test_absurd_numbers_and_duplicate_keys_fail_validate_with_one_line_each(tmp_path):
    """One `validate` call over the whole table: one line per file, naming the file, the field and the bound."""
    paths = []
    for index, (_, change, _, _) in enumerate(BAD_SCENARIOS):
        paths.append(tmp_path / f"case{index}.yaml")
        paths[-1].write_text(scenario_text(change))
    result = subprocess.run([*CLI, "scenarios", "validate", *map(str, paths)], capture_output=True, text=True)
    assert result.returncode == 2 and result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == len(BAD_SCENARIOS), result.stderr
    for line, path, (case, _, field, bound) in zip(lines, paths, BAD_SCENARIOS, strict=True):
        assert line.startswith(f"error: {path}: {field}"), (case, line)
        assert bound in line, (case, line)
        assert len(line) < 400, (case, "the bad value is shown short")


def test_an_oversized_file_is_refused_before_it_is_parsed(tmp_path):
    huge = tmp_path / "huge.yaml"
    huge.write_text(scenario_text({}) + "description: '" + "x" * 1_100_000 + "'\n")
    result = subprocess.run([*CLI, "scenarios", "validate", str(huge)], capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stderr.strip() == (f"error: {huge}: (file): got {huge.stat().st_size:,} bytes, expected at most "
                                     "1,000,000 bytes of a YAML scenario file (see docs/scenarios.md)")


@pytest.mark.parametrize("scale, expected", [
    ("nan", "--time-scale: got nan, expected a number at least 0.001 and at most 1,000"),
    ("inf", "--time-scale: got inf, expected a number at least 0.001 and at most 1,000"),
    ("1e300", "--time-scale: got 1e+300, expected a number at least 0.001 and at most 1,000"),
    ("0", "--time-scale: got 0.0, expected a number at least 0.001 and at most 1,000"),
    ("-1", "--time-scale: got -1.0, expected a number at least 0.001 and at most 1,000"),
    ("500", "stages[1].hold: got 43,200,000 s after --time-scale 500, expected a duration greater than 0 and at most"),
    ("0.001", "stages[0].spawn_rate: got a spawn rate of 30,000 users/s after --time-scale 0.001, expected a spawn rate"),
])
def test_run_refuses_a_time_scale_out_of_bounds_before_anything_is_written(tmp_path, scale, expected):
    scenario = tmp_path / "weekly.yaml"
    scenario.write_text(yaml.safe_dump({**VALID, "stages": [
        {"name": "one", "users": 30, "spawn_rate": 30, "hold": "10s"},
        {"name": "two", "users": 40, "ramp": "10s", "hold": "1d"}]}))
    out = tmp_path / "results"
    result = CliRunner().invoke(main, ["run", str(scenario), "--time-scale", scale, "--out", str(out)])
    lines = result.output.strip().splitlines()
    assert result.exit_code == 2, result.output
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], lines
    assert not out.exists()


def test_the_same_duplicate_key_check_holds_for_slo_sets_profiles_and_reference_target_profiles(tmp_path):
    cases = [
        (lambda path: load_named(SLO, path), SloError,
         "name: x\ncriteria:\n  - name: a\n    metric: p95_ms\n    critical: '> 1 ms'\n    critical: '> 900 ms'\n",
         "line 6: got duplicate key 'critical' (first on line 5)"),
        (lambda path: load_named(TARGET_PROFILE, path), ProfileError, "name: p\nname: q\n",
         "line 2: got duplicate key 'name' (first on line 1)"),
        (lambda path: load_profiles(Path(path)), ConfigError, "profiles:\n  a: {}\n  a: {}\n",
         "line 3: got duplicate key 'a' (first on line 2)"),
    ]
    for index, (load, error, text, expected) in enumerate(cases):
        path = tmp_path / f"dup{index}.yaml"
        path.write_text(text)
        with pytest.raises(error) as caught:
            load(str(path))
        assert str(caught.value) == f"{path}: (YAML) {expected}, expected each key once per mapping"


# --- criteria that cannot match, damaged results: judged on one short real run ---------------------------------


SHORT = {**VALID, "name": "short", "mix": {"health": 1, "dashboard": 1},
         "think_time": {"min": 0.1, "max": 0.3},
         "stages": [{"name": "one", "users": 3, "ramp": "1s", "hold": "3s"},
                    {"name": "two", "users": 4, "ramp": "1s", "hold": "2s"}]}


@pytest.fixture(scope="module")
def short_run(tmp_path_factory):
    """One short real run against the reference target (about 7 s), shared by the tests below."""
    root = tmp_path_factory.mktemp("short")
    scenario = root / "short.yaml"
    scenario.write_text(yaml.safe_dump(SHORT))
    target = start_target(["--profile", "baseline"])
    try:
        outcome = ScenarioRun(RunRequest(scenario=load_named(SCENARIO, str(scenario)), host=target.url, out_root=root / "results",
                                         show_progress=False, gate_stages=False)).execute()
    finally:
        target.stop()
    assert outcome.status == "completed", outcome.stop_reason
    return outcome.folder


def slo_file(tmp_path: Path, endpoint, name: str = "API p95") -> Path:
    path = tmp_path / f"slo-{abs(hash(str(endpoint)))}.yaml"
    path.write_text(yaml.safe_dump({"name": "typo", "criteria": [
        {"name": name, "metric": "p95_ms", "endpoint": endpoint, "critical": "> 900 ms", "min_requests": 1}]}))
    return path


UNMATCHABLE = [
    ("apix", "got 'apix' in criterion 'API p95', expected a group (all, api, browser, http, page, sio, ttfb, txn) or a pattern"),
    ("HTTP", "got 'HTTP' in criterion 'API p95', expected a group"),
    ("/api/v1/health", "got '/api/v1/health' in criterion 'API p95', expected a group"),
    (["api", "sioo"], "got 'sioo' in criterion 'API p95', expected a group"),
]


@pytest.mark.parametrize("endpoint, expected", UNMATCHABLE, ids=[str(case[0]) for case in UNMATCHABLE])
def test_a_selector_that_can_never_match_is_a_load_time_error(tmp_path, short_run, endpoint, expected):
    path = slo_file(tmp_path, endpoint)
    with pytest.raises(SloError) as caught:
        load_named(SLO, path)
    assert str(caught.value).startswith(f"{path}: criteria[0].endpoint: ") and expected in str(caught.value)
    result = CliRunner().invoke(main, ["analyze", str(short_run), "--slo", str(path), "--out", str(tmp_path / "out")])
    assert result.exit_code == 2 and result.output.strip().splitlines() == [f"error: {caught.value}"]


def test_a_valid_pattern_that_matches_nothing_stays_no_data_with_a_note(tmp_path, short_run):
    verdict = judge_run(short_run, load_named(SLO, slo_file(tmp_path, ["GET /api/v1/nonesuch", "PATCH *"])))
    (result,) = verdict.results
    assert result.status == NO_DATA
    assert {check.note for check in result.checks} == {"GET /api/v1/nonesuch, PATCH * matches no endpoint of this run"}
    matched = judge_run(short_run, load_named(SLO, slo_file(tmp_path, "GET /api/v1/health*")))
    assert matched.results[0].status != NO_DATA, "the same run has data for a pattern that matches"


# (case, file, damage) -> one line naming the file, exit 2, in analyze and compare alike
DAMAGES = [
    ("binary run.json", "run.json", b"\xff\xfe\x00\x81garbage"),
    ("empty run.json", "run.json", b""),
    ("run.json a list", "run.json", b"[1, 2]"),
    ("empty timeseries.csv", "timeseries.csv", b""),
    ("header-only timeseries.csv", "timeseries.csv", None),
    ("binary timeseries.csv", "timeseries.csv", b"\x00\xff\xfe\x81\x00" * 50),
    ("empty summary.csv", "summary.csv", b""),
    ("binary histograms.json", "histograms.json", b"\xff\xfe\x00"),
    ("histograms.json a list", "histograms.json", b"[]"),
    ("binary failures.csv", "failures.csv", b"\x81\xff\x00"),
]


@pytest.mark.parametrize("case, name, damage", DAMAGES, ids=[case[0] for case in DAMAGES])
def test_a_damaged_results_file_is_one_line_and_exit_2_in_analyze_and_compare(tmp_path, short_run, case, name, damage):
    folder = tmp_path / "damaged"
    shutil.copytree(short_run, folder)
    target = folder / name
    if damage is None:
        damage = target.read_bytes().split(b"\n", 1)[0] + b"\n"
    target.write_bytes(damage)
    for args in (["analyze", str(folder), "--out", str(tmp_path / "out")],
                 ["compare", str(short_run), str(folder), "--out", str(tmp_path / "cmp")],
                 ["compare", str(folder), str(short_run), "--out", str(tmp_path / "cmp")]):
        result = CliRunner().invoke(main, args)
        lines = result.output.strip().splitlines()
        assert result.exit_code == 2, (case, args[0], result.output, result.exception)
        assert len(lines) == 1 and lines[0].startswith(f"error: {target}: "), (case, args[0], lines)
    assert json.loads((short_run / "run.json").read_text())["status"] == "completed", "the original stays intact"


# --- the host guard reads a URL the way every client does -------------------------------------------------------


PORT = 18080  # never listened on: every case must be refused before a connection is even tried
# (case, URL, a phrase of the refusal)
HOSTILE = [
    ("backslash before @ (urllib3 reads 10.0.0.1)", f"http://10.0.0.1\\@127.0.0.1:{PORT}", "a backslash"),
    ("backslash alone", f"http://127.0.0.1\\:{PORT}", "a backslash"),
    ("userinfo", f"http://qa:secret@127.0.0.1:{PORT}", "an '@'"),
    ("userinfo naming loopback", f"http://127.0.0.1@10.0.0.1:{PORT}", "an '@'"),
    ("@ in the path", f"http://127.0.0.1:{PORT}/@10.0.0.1", "an '@'"),
    ("@ in the query", f"http://127.0.0.1:{PORT}?x=@10.0.0.1", "an '@'"),
    ("query", f"http://127.0.0.1:{PORT}/?next=http://10.0.0.1", "a query"),
    ("fragment", f"http://127.0.0.1:{PORT}#@10.0.0.1", "an '@'"),
    ("a path", f"http://127.0.0.1:{PORT}/api", "a path"),
    ("space", f"http://127.0.0.1 .evil:{PORT}", "whitespace"),
    ("tab", f"http://127.0.0.1\t:{PORT}", "whitespace"),
    ("newline", f"http://127.0.0.1:{PORT}\nHost: 10.0.0.1", "whitespace"),
    ("NUL", f"http://127.0.0.1\x00.evil:{PORT}", "control"),
    ("DEL", f"http://127.0.0.1\x7f:{PORT}", "control"),
    ("IDNA look-alike", f"http://ⓛocalhost:{PORT}", "non-ASCII"),
    ("fullwidth dot", f"http://127。0。0。1:{PORT}", "non-ASCII"),
    ("percent-encoded host", f"http://%31%32%37.0.0.1:{PORT}", "percent-encoding"),
    ("percent-encoded zone id", f"http://[fe80::1%25eth0]:{PORT}", "percent-encoding"),
    ("decimal IPv4", f"http://2130706433:{PORT}", "another form than dotted decimal"),
    ("octal IPv4", f"http://0177.0.0.1:{PORT}", "another form than dotted decimal"),
    ("hex IPv4", f"http://0x7f.0.0.1:{PORT}", "another form than dotted decimal"),
    ("short IPv4", f"http://127.1:{PORT}", "another form than dotted decimal"),
    ("trailing dot", f"http://127.0.0.1.:{PORT}", "not a host name"),
    ("trailing dot on a name", f"http://localhost.:{PORT}", "not a host name"),
    ("IPv4 in brackets", f"http://[127.0.0.1]:{PORT}", "not a bracketed IPv6"),
    ("IPv4-mapped IPv6", f"http://[::ffff:10.0.0.1]:{PORT}", "not loopback"),
    ("unclosed bracket", f"http://[::1:{PORT}", "not a bracketed IPv6"),
    ("leading zeros", f"http://127.000.000.001:{PORT}", "another form than dotted decimal"),
    ("IPv6 loopback with a port inside", f"http://[::1:{PORT}]", "not a bracketed IPv6"),
    ("ftp scheme", f"ftp://127.0.0.1:{PORT}", "scheme is not http"),
    ("ws scheme", f"ws://127.0.0.1:{PORT}", "scheme is not http"),
    ("upper-case scheme", f"HTTP://10.0.0.1:{PORT}", "scheme is not http"),
    ("no scheme", f"127.0.0.1:{PORT}", "scheme is not http"),
    ("scheme-relative", f"//127.0.0.1:{PORT}", "scheme is not http"),
    ("port out of range", "http://127.0.0.1:99999", "port is not a number"),
    ("port with a sign", "http://127.0.0.1:+80", "port is not a number"),
    ("empty host", f"http://:{PORT}", "not a host name"),
    ("another host", f"http://10.0.0.1:{PORT}", "not loopback"),
]


def test_hostile_urls_show_why_the_guard_asks_every_client():
    """The issue's bypass, through each client's own parser: the clients do not agree on the host."""
    views = client_views(HOSTILE[0][1])
    assert set(views) == set(CLIENT_PARSERS)
    assert views["urllib.parse (the guard)"] == ("127.0.0.1", PORT)
    assert views["requests/urllib3 (Socket.IO polling)"] == ("10.0.0.1", 80)
    good = client_views(f"http://[::1]:{PORT}")
    assert set(good.values()) == {("::1", PORT)}, good


def test_a_url_the_clients_read_differently_is_refused_even_in_the_strict_form(monkeypatch):
    monkeypatch.setitem(CLIENT_PARSERS, "a client that reads another host", lambda url: ("10.0.0.1", PORT))
    with pytest.raises(HostRefused, match=r"its clients read it differently: .*a client that reads another host"):
        check_host(f"http://127.0.0.1:{PORT}", (), "--host")


@pytest.mark.parametrize("case, url, reason", HOSTILE, ids=[case[0] for case in HOSTILE])
def test_hostile_host_urls_are_refused_by_every_path_before_any_connection(tmp_path, monkeypatch, case, url, reason):
    attempts = []
    real_connect, real_getaddrinfo = socket.socket.connect, socket.getaddrinfo
    monkeypatch.setattr(socket.socket, "connect", lambda sock, address: attempts.append(address) or real_connect(sock, address))
    monkeypatch.setattr(socket, "getaddrinfo", lambda host, *a, **k: attempts.append(host) or real_getaddrinfo(host, *a, **k))
    with pytest.raises(HostRefused) as caught:
        check_host(url, ("evil.example",), "--host")
    assert reason in str(caught.value) and "\n" not in str(caught.value)
    assert "secret" not in str(caught.value)
    # plain `locust -f` (its init and test_start listeners) and `medianest-load run` use the same guard
    plain_locust = HarnessOptions.given(get_parser(default_config_files=[]).parse_args(["--headless"]))
    assert str(host_refusal(url, plain_locust.allowed_hosts)) == \
        str(caught.value).replace("--host", "locust --host", 1)
    result = CliRunner().invoke(main, ["run", "smoke", "--host", url, "--out", str(tmp_path)])
    lines = result.output.strip().splitlines()
    assert result.exit_code == 2 and len(lines) == 1 and reason in lines[0], (case, result.output)
    assert attempts == [] and list(tmp_path.iterdir()) == []


# --- an internal error ends the run: aborted, the error in stop_reason, complete results, exit 1 ------------------


RESULT_FILES = {"run.json", "summary.csv", "timeseries.csv", "histograms.json", "failures.csv", "verdict.json"}
INJECTED = [  # (where, class, method, the stop reason's start, through `run`, the failing call: about 2 s in)
    ("ticker", Progress, "update", "internal error in the once-a-second ticker: ValueError: injected", True, 3),
    # the runner alone: what `run` makes of an aborted run (exit 1, the stop reason in verdict.json) does not
    # depend on which part failed, and is checked on the ticker's run (the exit code's table: test_run.py)
    ("shape", StagedShape, "tick", "internal error in the stage shape: ValueError: injected", False, 20),  # every 0.1 s
]


@pytest.mark.parametrize("where, cls, method, reason, command, failing_call", INJECTED, ids=[case[0] for case in INJECTED])
def test_an_exception_in_the_ticker_or_the_shape_ends_the_run_with_complete_results(
        reference_target, tmp_path, monkeypatch, where, cls, method, reason, command, failing_call):
    target = reference_target("--profile", "baseline")
    scenario = tmp_path / "long.yaml"  # planned for 2 minutes: it must end on its own within seconds
    scenario.write_text(yaml.safe_dump({**SHORT, "stages": [{"name": "one", "users": 3, "ramp": "1s", "hold": "60s"},
                                                            {"name": "two", "users": 4, "ramp": "1s", "hold": "60s"}]}))
    real, calls = getattr(cls, method), []

    def faulty(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == failing_call:  # users have sent requests by then
            raise ValueError("injected: cannot convert float NaN to integer")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(cls, method, faulty)
    if command:
        result = CliRunner().invoke(main, ["run", str(scenario), "--host", target.url, "--out", str(tmp_path / "out"),
                                           "--quiet", "--no-gate", "--no-report"])
        assert result.exit_code == 1, result.output
        (folder,) = (tmp_path / "out").iterdir()
    else:
        outcome = ScenarioRun(RunRequest(scenario=load_named(SCENARIO, str(scenario)), host=target.url,
                                         out_root=tmp_path / "out", show_progress=False, gate_stages=False)).execute()
        assert outcome.status == "aborted" and outcome.stop_reason.startswith(reason), outcome.stop_reason
        folder = outcome.folder
    run = json.loads((folder / "run.json").read_text())
    assert run["status"] == "aborted" and run["stop_reason"].startswith(reason), run["stop_reason"]
    assert run["ended_at"] is not None
    # the run itself (not the analysis after it, which a busy machine slows) ended within seconds of its 2 minutes
    lasted = datetime.fromisoformat(run["ended_at"]) - datetime.fromisoformat(run["started_at"])
    assert lasted.total_seconds() < 30, "the run ended on its own, long before its plan"
    assert RESULT_FILES - ({"verdict.json"} if not command else set()) <= {path.name for path in folder.iterdir()}
    if command:
        verdict = json.loads((folder / "verdict.json").read_text())
        assert verdict["run_status"] == "aborted" and verdict["stop_reason"] == run["stop_reason"]
    summary, series = pd.read_csv(folder / "summary.csv"), pd.read_csv(folder / "timeseries.csv")
    assert summary.requests.sum() > 0 and summary.failures.sum() == 0, "the target is not blamed"
    requests = summary[~summary.request_type.isin(NOT_REQUESTS)]  # ALL counts requests, not transactions
    assert series.loc[series.endpoint == "ALL", "requests"].sum() == requests.requests.sum()


# --- long runs in bounded memory -------------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1_760_000_000.0

    def __call__(self) -> float:
        return self.now


def test_the_recorder_forgets_written_series_rows_and_bounds_failure_messages(tmp_path):
    """A simulated hour: rows leave memory at each flush, the file holds every one, failure counts stay exact."""
    clock = Clock()
    recorder = Recorder(clock=clock)
    recorder.enter(1, "one", 5, "steady")
    held = []
    for second in range(3600):
        for endpoint in ("/a", "/b", "/c"):
            recorder.on_request("GET", endpoint, 10.0 + second % 7, 100,
                                HttpServerError(f"HTTP 500 for request {second}") if endpoint == "/c" else None)
        clock.now += 1.0
        recorder.close_second(5)
        if second % 10 == 9:
            recorder.write(tmp_path)
            held.append(len(recorder._unwritten_rows))
    recorder.write(tmp_path)
    assert max(held) == 0 and len(recorder.recent_totals) == RECENT_SECONDS
    series = pd.read_csv(tmp_path / "timeseries.csv")
    assert len(series) == 3600 * 4 and series.time.is_monotonic_increasing
    assert series[series.endpoint == "ALL"].requests.sum() == 3 * 3600
    failures = pd.read_csv(tmp_path / "failures.csv")
    assert len(failures) == MESSAGES_PER_KIND + 1 and failures["count"].sum() == 3600
    assert failures["message"].iloc[-1].startswith("(further distinct messages") and failures["count"].iloc[-1] == 3600 - 20


def test_for_windows_judged_chunk_by_chunk_equal_those_judged_on_the_whole_series(tmp_path, short_run):
    whole = pd.read_csv(short_run / "timeseries.csv")
    run = load_run(short_run)
    assert run.overview.endpoint.eq("ALL").all() and len(run.overview) == whole.endpoint.eq("ALL").sum()
    slo = tmp_path / "windows.yaml"
    slo.write_text("name: w\ncriteria:\n"
                   "  - {name: traffic, metric: rps, endpoint: all, critical: '> 0', for: 2s}\n"
                   "  - {name: health p95, metric: p95_ms, endpoint: 'GET /api/v1/health', critical: '> 0 ms', for: 1s, "
                   "min_requests: 1}\n"
                   "  - {name: api errors, metric: error_rate, endpoint: api, warn: '>= 0 %', for: 2s}\n"
                   "  - {name: per endpoint, metric: avg_ms, endpoint: api, split: endpoint, critical: '> 0 ms', for: 1s}\n")
    slo_set = load_named(SLO, slo)
    from_files = Evidence.from_run(run)  # ALL rows in memory, the rest read chunk by chunk
    in_memory = judge(replace(from_files, timeseries=whole, series_chunks=None), slo_set)
    chunked = judge(replace(from_files, series_chunks=lambda: read_series_chunks(short_run, 7)), slo_set)
    assert [r.to_dict() for r in chunked.results] == [r.to_dict() for r in in_memory.results]
    assert [r.to_dict() for r in judge_run(run, slo_set).results] == [r.to_dict() for r in in_memory.results]
    # a busy machine's loop lag may make a latency FAIL INCONCLUSIVE, and says so (analysis/judging.py)
    statuses = [FAIL if r.status == INCONCLUSIVE and "the load generator may have added" in r.note else r.status
                for r in chunked.results]
    assert statuses == [FAIL, FAIL, WARN, FAIL], [r.note for r in chunked.results]


def read_series_chunks(folder: Path, rows: int):
    return series_chunks(folder / "timeseries.csv", chunk_rows=rows)


def test_the_live_gate_judges_for_windows_from_the_flushed_series(reference_target, tmp_path):
    """The recorder no longer holds the series: the gate reads the finished stage's rows back from disk."""
    target = reference_target("--profile", "baseline")
    scenario, slo = tmp_path / "gated.yaml", tmp_path / "gate.yaml"
    slo.write_text("name: gate\ncriteria:\n  - {name: traffic every second, metric: rps, endpoint: all, "
                   "critical: '> 0', for: 2s}\n")
    scenario.write_text(yaml.safe_dump({**SHORT, "slo": str(slo)}))
    outcome = ScenarioRun(RunRequest(scenario=load_named(SCENARIO, str(scenario)), host=target.url, out_root=tmp_path / "out",
                                     show_progress=False)).execute()
    assert outcome.status == "aborted"
    assert outcome.stop_reason == "stage 1 failed traffic every second (stop_on_failed_stage)"
    run = json.loads((outcome.folder / "run.json").read_text())
    assert [stage["index"] for stage in run["stages"]] == [1]


def test_a_stage_holds_its_time_and_not_a_second_more(short_run):
    """Locust polls a shape once a second, which held this 3-s stage 3.9-4 s; the harness polls every 0.1 s. (Its
    steady phase ends where the next ramp begins; without a gate nothing else happens in between. The last
    stage's ends when the run has stopped its users.)"""
    first = json.loads((short_run / "run.json").read_text())["stages"][0]
    held = first["steady_end"] - first["steady_start"]
    assert SHORT["stages"][0]["hold"] == "3s" and 3 - 0.01 <= held <= 3.5, held


def test_run_json_records_the_host_every_client_connected_to(short_run):
    run = json.loads((short_run / "run.json").read_text())
    views = set(client_views(run["host"]).values())
    assert len(views) == 1 and views.pop()[0] == "127.0.0.1"
    assert run["scenario"]["host"] == run["host"] != VALID["host"] and "@" not in json.dumps(run)
