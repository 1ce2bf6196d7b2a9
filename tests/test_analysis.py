"""Verdicts, reports and comparisons on smoke-shaped runs, clean (twice) and against a degraded target, written
by the recorder's own on_request / write with a simulated clock (as benchmarks/bench_analysis.py does): the
commands `analyze` and `compare` see the very files a real run leaves. Expected values are recomputed here
independently (plain pandas over summary.csv, HdrHistogram.add over histograms.json), never hard-coded."""

import json
import os
import re
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ElementTree
from pathlib import Path

import matplotlib.image
import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from hdrh.histogram import HdrHistogram

from analysis.judging import abort_reason, judge_stage
from analysis.slo import SLO
from analysis.verdict import FAIL, NO_DATA, PASS, WARN
from medianest_load.cli import main
from medianest_load.failures import AuthUnavailable, HttpServerError
from medianest_load.inputs import load_named
from medianest_load.recorder import Recorder
from reference_target.config import load_config

REPO_ROOT = Path(__file__).resolve().parents[1]
MEDIANEST_LOAD = str(Path(sys.executable).with_name("medianest-load"))
HTTP = {"GET", "POST", "PUT", "PATCH", "DELETE"}
REPORT_FILES = {"verdict.json", "junit.xml", "report.md", "report.html"}


def cli(*args: str) -> subprocess.CompletedProcess:
    """The command in this process (a new interpreter would spend seconds importing pandas and matplotlib again);
    test_usage_errors_are_one_line_with_exit_code_2 runs the console script itself."""
    result = CliRunner().invoke(main, list(args))
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return subprocess.CompletedProcess([MEDIANEST_LOAD, *args], result.exit_code, result.stdout, result.stderr)


# --- smoke-shaped runs written through the recorder with a simulated clock -------------------------------------
# The figures below are those of a real `run scenarios/smoke.yaml --time-scale 2.5` against the baseline target:
# per user and second of a steady phase, how often each flow starts; each step's median service time in ms.
# The faults are issue 12's degraded target (`--error-rate 0.2 --latency-scale 4`): 20 % of the /api answers
# (health aside) are 500s, every service time is 4x, and a socket user whose login met a 500 has no token to
# connect with. A real run of each feature stays in test_run.py (smoke end to end, the abort of a dead target),
# test_traffic_model.py and test_fidelity.py (what each user class records).
STAGES = (("warm", 6), ("peak", 12))
RAMP_S, HOLD_S = 5, 20  # smoke at time scale 2.5: enough requests per stage for stable verdicts
HEALTH_ROUTES = {"/api/v1/health", "/api/v1/simple-health"}
# flow -> (starts per user-second, its steps as (request type, name, median ms, response bytes)); a flow of more
# than one step is one transaction (TXN <flow>) that stops at its first failed step
FLOWS = {
    "health": (0.18, [("GET", "/api/v1/health", 12, 143)]),
    "simple health": (0.22, [("GET", "/api/v1/simple-health", 8, 92)]),
    "session": (0.21, [("GET", "/api/v1/auth/session", 18, 115)]),
    "csrf": (0.10, [("GET", "/api/v1/csrf/token", 9, 100)]),
    "dashboard": (0.13, [("GET", "/api/v1/dashboard/stats", 12, 678), ("GET", "/api/v1/dashboard/status", 20, 355),
                         ("GET", "/api/v1/dashboard/notifications", 16, 436)]),
    "upload": (0.10, [("POST", "/api/v1/media/upload", 40, 64)]),
    "logout": (0.045, [("POST", "/api/v1/auth/logout", 12, 52)]),
    "login": (0.05, [("POST", "/api/v1/auth/plex/pin", 25, 113), ("POST", "/api/v1/auth/plex/verify", 45, 270),
                     ("GET", "/api/v1/auth/session", 18, 115)]),
    "media flow": (0.30, [("GET", "/api/v1/media/search", 45, 3332), ("POST", "/api/v1/media/request", 30, 178),
                          ("GET", "/api/v1/media/requests", 25, 2675), ("GET", "/api/v1/media/requests/:id", 15, 178)]),
}
PAGE_HTML_BYTES = 988
ASSETS_PER_VISIT, ASSET_BYTES = 6, 2_097_152
VISITS_PER_USER_S = 0.39
SOCKET_SESSIONS_PER_USER_S, PINGS_PER_USER_S, PUSHES_PER_USER_S = 0.05, 0.2, 0.1


class Clock:
    def __init__(self, start: float) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now


class SmokeTraffic:
    """One simulated second after another of smoke's users, recorded as the user classes record them."""

    def __init__(self, recorder: Recorder, seed: int, faulty: bool) -> None:
        self.recorder, self.rng, self.faulty = recorder, np.random.default_rng(seed), faulty
        self.error_rate, self.slower = (0.2, 4.0) if faulty else (0.0, 1.0)
        self.bundle_bytes = load_config("baseline", {}).bundle_kb * 1024

    def starts(self, users: int, per_user_s: float) -> int:
        return int(self.rng.poisson(users * per_user_s))

    def duration_ms(self, median_ms: float) -> float:
        return float(self.rng.lognormal(np.log(median_ms * self.slower), 0.45))

    def request(self, method: str, name: str, median_ms: float, size: int) -> tuple[float, BaseException | None]:
        failed = name.startswith("/api/") and name not in HEALTH_ROUTES and self.rng.random() < self.error_rate
        failure = HttpServerError("HTTP 500") if failed else None
        elapsed = self.duration_ms(median_ms)
        self.recorder.on_request(method, name, elapsed, 21 if failed else size, failure)
        return elapsed, failure

    def second(self, users: int) -> None:
        record = self.recorder.on_request
        for flow, (per_user_s, steps) in FLOWS.items():
            for _ in range(self.starts(users, per_user_s)):
                total, failure = 0.0, None
                for step in steps:
                    elapsed, failure = self.request(*step)
                    total += elapsed
                    if failure is not None:
                        break
                if len(steps) > 1:
                    record("TXN", flow, total, 0, failure)
        for _ in range(self.starts(users, VISITS_PER_USER_S)):
            ttfb = self.duration_ms(25)
            record("PAGE", "ttfb /", ttfb, 0)
            record("GET", "/", ttfb + 1, PAGE_HTML_BYTES)
            visit = ttfb + sum(self.request("GET", "/_next/static/:asset", 15, ASSET_BYTES)[0] for _ in range(ASSETS_PER_VISIT))
            record("PAGE", "/ (first visit)", visit, self.bundle_bytes + PAGE_HTML_BYTES)
            record("TXN", "first visit", visit, 0)
        for _ in range(self.starts(users, SOCKET_SESSIONS_PER_USER_S)):
            if self.rng.random() < self.error_rate:  # its login met a 500: no token to connect with
                record("SIO", "connect /media", 0, 0, AuthUnavailable("no token: the login failed"))
                continue
            record("SIO", "connect /media", self.duration_ms(8), 0)
            record("SIO", "ack /media join-media-room", self.duration_ms(4), 0)
            record("SIO", "disconnect /media", 0, 0)
        for _ in range(self.starts(users, PINGS_PER_USER_S)):
            record("SIO", "ack /media ping", self.duration_ms(5), 0)
        for _ in range(self.starts(users, PUSHES_PER_USER_S)):
            record("SIO", "push /media media-status", self.duration_ms(5), 63)


def smoke_run(folder: Path, seed: int, faulty: bool = False) -> Path:
    """A smoke-shaped results folder. Like the runner, it judges each finished stage with staging-gate's criteria
    (judge_stage, abort_reason) and stops when an `abort` criterion fails."""
    clock = Clock(1_760_000_000.0)
    recorder = Recorder(clock=clock)
    traffic = SmokeTraffic(recorder, seed, faulty)
    slo = load_named(SLO, "staging-gate")
    stages, users, reason = [], 0, None
    folder.mkdir(parents=True)
    for index, (name, target) in enumerate(STAGES, start=1):
        stage = {"index": index, "name": name, "users": target, "spawn_rate": (target - users) / RAMP_S,
                 "planned_hold_s": HOLD_S}
        for phase, seconds in (("ramp", RAMP_S), ("steady", HOLD_S)):
            recorder.enter(index, name, target, phase)
            stage[f"{phase}_start"] = clock.now
            for second in range(seconds):
                active = round(users + (target - users) * (second + 1) / seconds) if phase == "ramp" else target
                traffic.second(active)
                clock.now += 1.0
                recorder.close_second(active)
        stage["steady_end"] = clock.now
        stages.append(stage)
        users = target
        recorder.write(folder)
        histograms = {(e["stage"], e["phase"], e["endpoint"]): e["encoded"]
                      for e in json.loads((folder / "histograms.json").read_text())["histograms"]}
        reason = abort_reason(judge_stage(pd.read_csv(folder / "summary.csv"), slo, index, histograms))
        if reason:
            break
    recorder.finish()
    recorder.write(folder)
    info = {"scenario": {"name": "smoke"}, "scenario_name": "smoke", "scenario_file": "scenarios/smoke.yaml",
            "host": "http://127.0.0.1:8080", "target_profile": "reference", "slo": "staging-gate", "time_scale": 2.5,
            "status": "aborted" if reason else "completed", "stop_reason": reason or "completed",
            "started_at": None, "ended_at": None, "stages": stages}
    (folder / "run.json").write_text(json.dumps(info, indent=2))
    return folder


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Three smoke-shaped runs, made once for the module: two clean ones and one against the degraded target."""
    root = tmp_path_factory.mktemp("runs")
    return {"clean": smoke_run(root / "clean", seed=1), "clean_again": smoke_run(root / "clean_again", seed=2),
            "faulty": smoke_run(root / "faulty", seed=3, faulty=True)}


@pytest.fixture(scope="module")
def faulty_analyzed(runs) -> tuple[subprocess.CompletedProcess, dict]:
    """`analyze` of the faulty run into its own folder with the SLO named in run.json (staging-gate), once: its
    verdict and its report.html are each checked by a test of their own."""
    return analyze(runs["faulty"])


def api_steady(folder: Path) -> pd.DataFrame:
    summary = pd.read_csv(folder / "summary.csv")
    return summary[(summary.phase == "steady") & (summary.stage > 0) & summary.request_type.isin(HTTP)
                   & summary.name.str.startswith("/api/")]


def merged_p95_ms(folder: Path, rows: pd.DataFrame) -> float:
    """The reference: HdrHistogram's own add() and get_value_at_percentile()."""
    wanted = set(zip(rows.stage, rows.phase, rows.endpoint, strict=True))
    merged = HdrHistogram(1, 3_600_000_000, 3)
    for entry in json.loads((folder / "histograms.json").read_text())["histograms"]:
        if (entry["stage"], entry["phase"], entry["endpoint"]) in wanted:
            merged.add(HdrHistogram.decode(entry["encoded"]))
    return merged.get_value_at_percentile(95) / 1000


def level(value: float, warn: float | None, critical: float, higher_is_worse: bool = True, inclusive: bool = False) -> str:
    beyond = (lambda limit: value >= limit if inclusive else value > limit) if higher_is_worse else (lambda limit: value < limit)
    return FAIL if beyond(critical) else WARN if warn is not None and beyond(warn) else PASS


def analyze(folder: Path, *args: str) -> tuple[subprocess.CompletedProcess, dict]:
    done = cli("analyze", str(folder), *args)
    verdict = json.loads((folder / "verdict.json").read_text()) if (folder / "verdict.json").exists() else {}
    return done, verdict


def by_name(verdict: dict) -> dict:
    return {criterion["name"]: criterion for criterion in verdict["criteria"]}


def expected_stage_values(folder: Path) -> pd.DataFrame:
    """API error rate, average and merged p95 per steady stage, computed without the analysis package."""
    api = api_steady(folder)
    per_stage = api.groupby("stage").agg(requests=("requests", "sum"), failures=("failures", "sum"))
    per_stage["error_rate"] = per_stage.failures / per_stage.requests
    per_stage["avg_ms"] = (api.avg_ms * api.requests).groupby(api.stage).sum() / per_stage.requests
    per_stage["p95_ms"] = [merged_p95_ms(folder, api[api.stage == stage]) for stage in per_stage.index]
    return per_stage


def transaction_success(folder: Path) -> pd.Series:
    """Per stage: the share of steady-phase TXN samples (login, media flow, first visit) that succeeded."""
    summary = pd.read_csv(folder / "summary.csv")
    txn = summary[(summary.phase == "steady") & (summary.stage > 0) & (summary.request_type == "TXN")]
    totals = txn.groupby("stage")[["requests", "failures"]].sum()
    return 1 - totals.failures / totals.requests


UX_CRITERIA = ("Time to first byte", "First contentful paint", "Bundle load time", "Interactive response")


def assert_checks_match(criterion: dict, expected: pd.Series, levels) -> None:
    checks = {check["stage"]: check for check in criterion["checks"]}
    assert set(checks) == set(expected.index)
    for stage, value in expected.items():
        assert checks[stage]["value"] == pytest.approx(value, rel=1e-9), (criterion["name"], stage)
        assert checks[stage]["status"] == levels(value), (criterion["name"], stage, value)


def test_clean_baseline_run_passes_staging_gate(runs):
    folder = runs["clean"]
    done, verdict = analyze(folder, "--slo", "staging-gate")

    assert done.returncode == 0, done.stdout + done.stderr
    assert verdict["verdict"] in (PASS, WARN) and verdict["counts"][FAIL] == 0
    criteria = by_name(verdict)
    expected = expected_stage_values(folder)
    assert_checks_match(criteria["API p95"], expected.p95_ms, lambda v: level(v, 200, 500))
    assert_checks_match(criteria["API error rate"], expected.error_rate, lambda v: level(v, 0.01, 0.02))
    assert_checks_match(criteria["API average response"], expected.avg_ms, lambda v: level(v, None, 50, inclusive=True))
    # a smoke run has no 1,000-user stage: reported as no data, never as a pass
    throughput = criteria["Throughput at 1,000 users"]
    assert throughput["status"] == NO_DATA and throughput["value"] is None and "1000 users" in throughput["note"]
    assert "NO_DATA  Throughput at 1,000 users" in done.stdout
    # smoke has no browser users: the user-experience criteria have nothing to judge, and say so
    for name in UX_CRITERIA:
        assert criteria[name]["status"] == NO_DATA and "matches no endpoint of this run" in criteria[name]["note"], name
    assert_checks_match(criteria["Transaction success"], transaction_success(folder), lambda v: level(v, None, 0.97, False))

    suite = ElementTree.parse(folder / "junit.xml").getroot().find("testsuite")
    cases = {case.get("name"): case for case in suite.iter("testcase")}
    assert set(cases) == set(criteria) and suite.get("failures") == "0"
    assert suite.get("skipped") == str(verdict["counts"][NO_DATA])  # throughput, and server criteria short stages leave unjudged
    assert cases["Throughput at 1,000 users"].find("skipped") is not None
    assert REPORT_FILES <= {path.name for path in folder.iterdir()}
    assert {path.name for path in (folder / "plots").glob("*.png")} == {f"{name}.png" for name in verdict["plots"]}
    assert {"latency_vs_users", "throughput_vs_users", "error_rate_by_stage", "timeline", "latency_spectrum",
            "socketio"} <= set(verdict["plots"])


def test_faulty_run_aborts_and_fails_exactly_the_criteria_it_should(runs, faulty_analyzed):
    folder = runs["faulty"]
    info = json.loads((folder / "run.json").read_text())
    # the runner judged each finished stage with judge_stage and stopped on the abort criterion
    assert info["status"] == "aborted" and "API error rate" in info["stop_reason"]

    done, verdict = faulty_analyzed  # the SLO named in run.json: staging-gate
    assert done.returncode == 1
    criteria = by_name(verdict)
    # a socket user whose login met an injected 500 records its connects as auth_unavailable (and only those fail)
    summary = pd.read_csv(folder / "summary.csv")
    connects = summary[(summary.endpoint == "SIO connect /media") & (summary.stage > 0)]
    assert connects.failures.sum() == connects.fail_auth_unavailable.sum()
    sockets_failed = {"Socket.IO connect success"} if connects.fail_auth_unavailable.sum() else set()
    # 10 % of API answers fail: a flow of two to four API steps fails far more often than 3 % of the time
    assert {name for name, c in criteria.items() if c["status"] == FAIL} == {
        "API error rate", "API average response", "Transaction success", *sockets_failed}
    assert_checks_match(criteria["Transaction success"], transaction_success(folder), lambda v: level(v, None, 0.97, False))
    expected = expected_stage_values(folder)
    assert_checks_match(criteria["API error rate"], expected.error_rate, lambda v: level(v, 0.01, 0.02))
    assert_checks_match(criteria["API average response"], expected.avg_ms, lambda v: level(v, None, 50, inclusive=True))
    assert_checks_match(criteria["API p95"], expected.p95_ms, lambda v: level(v, 200, 500))
    worst = expected.error_rate.max()
    assert criteria["API error rate"]["value"] == pytest.approx(worst)
    assert criteria["API error rate"]["measured"] == f"{worst * 100:.2f} %"
    assert criteria["Socket.IO connect success"]["status"] == (FAIL if sockets_failed else PASS)
    assert criteria["Bundle size"]["status"] == PASS

    suite = ElementTree.parse(folder / "junit.xml").getroot().find("testsuite")
    failures = {case.get("name"): case.find("failure") for case in suite.iter("testcase") if case.find("failure") is not None}
    assert set(failures) == {"API error rate", "API average response", "Transaction success", *sockets_failed}
    assert f"{worst * 100:.2f} %" in failures["API error rate"].get("message")
    markdown = (folder / "report.md").read_text()
    assert "**Verdict: FAIL**" in markdown and "API error rate FAIL" in markdown


def test_judge_stage_decides_the_abort_from_one_stage(runs):
    """The function the runner calls per finished stage, fed the way the runner feeds it."""
    folder = runs["faulty"]
    summary = pd.read_csv(folder / "summary.csv")
    histograms = {(entry["stage"], entry["phase"], entry["endpoint"]): entry["encoded"]
                  for entry in json.loads((folder / "histograms.json").read_text())["histograms"]}
    slo = load_named(SLO, "staging-gate")
    results = {result.criterion.name: result for result in judge_stage(summary, slo, 1, histograms)}

    # `stage: all` (bundle) and a selector that picks no stage (1000 users) are not decided per stage
    assert set(results) == {"API p95", "API error rate", "API average response", "Socket.IO connect success",
                            "Transaction success", *UX_CRITERIA}
    expected = expected_stage_values(folder).loc[1]
    assert results["API error rate"].value == pytest.approx(expected.error_rate)
    assert results["API p95"].value == pytest.approx(expected.p95_ms)
    assert expected.error_rate > 0.02 and expected.p95_ms <= 500  # the degraded target: errors beyond the abort level
    reason = abort_reason(list(results.values()))
    assert reason is not None and reason.startswith("aborted by API error rate ") and "stage 1" in reason, reason


def test_windows_split_and_missing_data_on_a_real_run(runs, tmp_path):
    folder = runs["clean"]
    slo_file = tmp_path / "windows.yaml"
    slo_file.write_text("""
name: windows
criteria:
  - {name: traffic every second, metric: rps, endpoint: all, critical: "> 0", for: 3s}
  - {name: per endpoint p95, metric: p95_ms, endpoint: api, split: endpoint, min_requests: 1,
     warn: "> 0 ms", critical: "> 3600 s"}
  - {name: window longer than the phase, metric: error_rate, endpoint: api, warn: "> 0 %", for: 10m}
  - {name: peak only, metric: avg_ms, endpoint: "GET /api/v1/health", stage: peak, critical: "> 3600 s"}
""")
    done, verdict = analyze(folder, "--slo", str(slo_file), "--out", str(tmp_path / "out"), "--no-report")
    verdict = json.loads((tmp_path / "out" / "verdict.json").read_text())
    assert not (tmp_path / "out" / "report.md").exists() and verdict["plots"] == {}  # judged only
    criteria = by_name(verdict)
    assert done.returncode == 1

    # every steady second carries requests, so the "violation" lasts the whole steady phase of each stage; only the
    # run's last row (the moment of the stop, a fraction of a second) may hold none, which ends the violation there
    series = pd.read_csv(folder / "timeseries.csv")
    steady = series[(series.phase == "steady") & (series.endpoint == "ALL")]
    assert (steady.iloc[:-1].requests > 0).all()
    seconds = steady[steady.requests > 0].groupby("stage").time.agg(lambda t: t.max() - t.min() + 1)
    sustained = {check["stage"]: check["sustained_s"] for check in criteria["traffic every second"]["checks"]}
    assert sustained == seconds.to_dict() and criteria["traffic every second"]["status"] == FAIL

    api = api_steady(folder)
    checks = {(check["stage"], check["endpoint"]): check
              for check in criteria["per endpoint p95"]["checks"] if check["value"] is not None}
    assert set(checks) == set(zip(api.stage, api.endpoint, strict=True))
    assert all(checks[(row.stage, row.endpoint)]["value"] == row.p95_ms for row in api.itertuples())

    longer = criteria["window longer than the phase"]
    assert longer["status"] == NO_DATA and "shorter than the 600 s window" in longer["note"]
    peak = criteria["peak only"]["checks"]
    assert [check["stage"] for check in peak] == [2] and criteria["peak only"]["status"] == PASS


def compare_rows(folder: Path) -> pd.DataFrame:
    return pd.DataFrame(json.loads((folder / "compare.json").read_text())["rows"])


def test_compare_flags_the_degraded_run_by_default(runs, tmp_path):
    """Issue 12's case: smoke, clean against 20 % errors and 4x latency, with compare's defaults (--window auto).
    It used to print NO REGRESSION ("43 too few windows") and exit 0."""
    slowed = cli("compare", str(runs["clean"]), str(runs["faulty"]), "--out", str(tmp_path / "slowed"), "--no-report")
    assert slowed.returncode == 1, slowed.stdout + slowed.stderr
    rows = compare_rows(tmp_path / "slowed")
    flagged = rows[rows.verdict == "regression"]
    # every stage both runs reached got slower and failed more as a whole, by the injected factor's order of magnitude
    common = sorted(set(rows.stage))
    stage_level = flagged[flagged.endpoint == "ALL"]
    for metric in ("p95_ms", "error_rate"):
        assert sorted(stage_level[stage_level.metric == metric].stage) == common, metric
    p95 = stage_level[stage_level.metric == "p95_ms"]
    assert (p95.value_candidate > 1.5 * p95.value_base).all()
    errors = stage_level[stage_level.metric == "error_rate"]
    assert (errors.value_base < 0.01).all() and (errors.value_candidate > 0.03).all()
    # auto: per stage the largest window giving 8 windows in both runs' steady phases (about 20 s here: 2 s)
    assert (rows.window_s >= 1).all() and (rows[rows.endpoint == "ALL"].windows_base >= 8).all()
    lines = slowed.stdout.splitlines()
    headline = next(line for line in lines if not line.startswith("note:"))
    assert headline.startswith("REGRESSION")
    named = {(line.split()[4], line.split()[5]) for line in lines if line.startswith("regression")}
    assert {("ALL", "error_rate"), ("ALL", "p95_ms")} <= named


def test_compare_of_two_clean_runs_finds_no_regression_and_notes_what_differs(runs, tmp_path):
    again = tmp_path / "again"
    shutil.copytree(runs["clean_again"], again)
    info = json.loads((again / "run.json").read_text())
    (again / "run.json").write_text(json.dumps({**info, "target_profile": "medianest-main"}))

    steady = cli("compare", str(runs["clean"]), str(again), "--allow-inconclusive", "--out", str(tmp_path / "clean"))
    assert steady.returncode == 0, steady.stdout + steady.stderr
    document = json.loads((tmp_path / "clean" / "compare.json").read_text())
    rows = compare_rows(tmp_path / "clean")
    assert not (rows.verdict == "regression").any()
    assert document["verdict"] in ("NO REGRESSION", "INCONCLUSIVE") and document["exit_code"] == 0
    # a run this short cannot judge every rare endpoint, but every stage-level row is judged
    stage_level = rows[rows.endpoint == "ALL"]
    assert {1, 2} == set(stage_level.stage) and not (stage_level.verdict == "too few windows").any()
    assert stage_level.p_worse.notna().all()
    first = steady.stdout.splitlines()[0]
    assert first == "note: the runs differ in target profile: 'reference' in the base run, 'medianest-main' in the candidate"
    assert (tmp_path / "clean" / "compare.html").exists() and len(list((tmp_path / "clean" / "plots").glob("*.png"))) == 3


def test_compare_of_a_pair_too_short_for_its_window_is_inconclusive(runs, tmp_path):
    """30-s windows in 20-s steady phases: no stage-level row can be judged; exit 3, each named with what it needs."""
    short = cli("compare", str(runs["clean"]), str(runs["clean_again"]), "--window", "30", "--out", str(tmp_path / "short"),
                "--no-report")
    assert short.returncode == 3, short.stdout + short.stderr
    assert short.stdout.startswith("INCONCLUSIVE")
    rows = compare_rows(tmp_path / "short")
    undecided = rows[(rows.verdict == "too few windows") & (rows.endpoint == "ALL")]
    assert set(zip(undecided.stage, undecided.metric, strict=True)) == {
        (s, m) for s in (1, 2) for m in ("p95_ms", "p99_ms", "rps")}
    for row in undecided.itertuples():
        window = (row.windows_base, row.windows_candidate)
        assert min(window) < 8 and f"{min(window)} of 8 windows of 30 s: try --window " in row.needs
        assert f"  {row.stage} {row.stage_name} ALL {row.metric}: {row.needs}" in short.stdout
    # the error rate is judged on the totals all the same
    assert rows[rows.metric == "error_rate"].p_worse.notna().all()

    accepted = cli("compare", str(runs["clean"]), str(runs["clean_again"]), "--window", "30", "--allow-inconclusive",
                   "--out", str(tmp_path / "accepted"), "--no-report")
    assert accepted.returncode == 0 and accepted.stdout.startswith("INCONCLUSIVE (accepted: --allow-inconclusive)")
    # --no-report decides only: compare.json and the table, and says which command writes the rest
    assert {path.name for path in (tmp_path / "accepted").iterdir()} == {"compare.json"}
    assert json.loads((tmp_path / "accepted" / "compare.json").read_text())["plots"] == {}
    assert accepted.stdout.rstrip().endswith("no report: the same command without --no-report writes compare.md, "
                                             "compare.html and the plots")


def test_compare_refuses_runs_without_a_shared_stage_in_one_line(runs, tmp_path):
    other = tmp_path / "other"
    shutil.copytree(runs["clean_again"], other)
    for name in ("summary.csv", "timeseries.csv"):
        frame = pd.read_csv(other / name)
        frame.loc[frame.stage > 0, "stage"] += 2
        frame.to_csv(other / name, index=False)
    done = cli("compare", str(runs["clean"]), str(other), "--out", str(tmp_path / "out"))
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1, done.stderr
    assert "no steady stage in common" in lines[0] and "expected" in lines[0] and not (tmp_path / "out").exists()


def test_bundle_is_judged_on_successful_page_visits_against_the_500_kb_target(runs, tmp_path):
    folder = runs["clean"]
    done, _ = analyze(folder, "--slo", "optimization-targets", "--out", str(tmp_path / "out"), "--no-report")
    verdict = json.loads((tmp_path / "out" / "verdict.json").read_text())
    assert done.returncode == 1, done.stdout + done.stderr
    bundle = by_name(verdict)["Bundle size"]
    summary = pd.read_csv(folder / "summary.csv")
    # the visits themselves: `PAGE ttfb /` carries no bytes and is no visit
    pages = summary[(summary.phase == "steady") & (summary.endpoint == "PAGE / (first visit)")]
    visits = (pages.requests - pages.failures).sum()
    assert visits > 0 and bundle["value"] == pytest.approx(pages.ok_bytes.sum() / visits)
    # what the baseline target serves: its bundle plus the page itself (a few KB of HTML)
    served = load_config("baseline", {}).bundle_kb * 1024
    assert served <= bundle["value"] < served + 64 * 1024 and bundle["status"] == FAIL


def test_a_damaged_histogram_is_one_line_with_exit_code_2(runs, tmp_path):
    folder = tmp_path / "damaged"
    shutil.copytree(runs["clean"], folder)
    stored = json.loads((folder / "histograms.json").read_text())
    stored["histograms"][0]["encoded"] = "not a histogram"
    (folder / "histograms.json").write_text(json.dumps(stored))
    done = cli("analyze", str(folder), "--out", str(tmp_path / "out"))
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1, done.stderr
    assert "histograms.json" in lines[0] and "cannot decode" in lines[0] and "expected" in lines[0]


@pytest.mark.skipif(shutil.which("chromium") is None and not os.environ.get("CI"),
                    reason="chromium is not installed (CI installs it, .ci/run, and there this test never skips)")
def test_report_html_renders_offline_in_headless_chromium(runs, faulty_analyzed, tmp_path):
    folder = runs["faulty"]
    page = folder / "report.html"
    text = page.read_text()
    assert not re.search(r'(?:src|href)\s*=\s*"(?!data:|#)', text), "the report must not fetch anything"
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
             "--disable-component-update", "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run(["chromium", *flags, "--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120)
    plots = json.loads((folder / "verdict.json").read_text())["plots"]
    assert dom.stdout.count('src="data:image/png;base64,') == len(plots) >= 6
    assert "FAIL" in dom.stdout and "API error rate" in dom.stdout

    shot = tmp_path / "report.png"
    subprocess.run(["chromium", *flags, "--window-size=1280,2400", f"--screenshot={shot}", page.as_uri()],
                   capture_output=True, timeout=120)
    pixels = matplotlib.image.imread(shot)
    assert pixels.shape[:2] == (2400, 1280) and float(np.std(pixels[..., :3])) > 0.05, "a blank or uniform page"


@pytest.mark.parametrize("content, field, bad", [
    ("name: x\ncriteria:\n  - {name: a, metric: p95_ms, warn: '> 200 ms', colour: red}\n", "criteria[0].colour",
     "one of the known keys"),
    ("name: x\ncriteria:\n  - {name: a, metric: p95_ms, critical: '> fast'}\n", "criteria[0].critical", "'> fast'"),
    ("name: x\ncriteria:\n  - {name: a, metric: p97_ms, critical: '> 1'}\n", "criteria[0].metric", "'p97_ms'"),
    ("name: x\ncriteria:\n  - {name: a, metric: error_rate, warn: '> 2 %', critical: '< 1 %'}\n",
     "criteria[0].critical", "'< 1 %'"),
    ("name: x\ncriteria:\n  - {name: a, metric: p95_ms, endpoint: api, critical: '> 1 s', for: 30s}\n",
     "criteria[0].for", "per-second p95"),
    ("name: x\ncriteria:\n  - name: a\n    metric: p95_ms\n    critical: > 500\n", "line", "not valid YAML"),
    ("name: x\nthresholds: []\ncriteria:\n  - {name: a, metric: rps, critical: '< 1'}\n", "thresholds", "one of the known keys"),
])
def test_slo_mistakes_are_one_line_with_exit_code_2(runs, tmp_path, content, field, bad):
    slo_file = tmp_path / "bad.yaml"
    slo_file.write_text(content)
    done = cli("analyze", str(runs["clean"]), "--slo", str(slo_file), "--out", str(tmp_path / "out"))
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and str(slo_file) in lines[0] and field in lines[0] and bad in lines[0], done.stderr
    assert "expected" in lines[0]


def test_usage_errors_are_one_line_with_exit_code_2(tmp_path):
    cases = (["analyze", str(tmp_path / "nowhere")], ["analyze"], ["compare", str(tmp_path)],
             ["analyze", str(tmp_path), "--slo", "no-such-slo"])
    # the four interpreters start at once: each spends its time importing, not waiting on the others
    started = [subprocess.Popen([MEDIANEST_LOAD, *args], cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True) for args in cases]
    try:
        finished = [(args, process.communicate(timeout=120), process.returncode)
                    for args, process in zip(cases, started, strict=True)]
    finally:
        for process in started:
            if process.poll() is None:
                process.kill()
                process.wait()
    for args, (_, stderr), returncode in finished:
        assert returncode == 2 and len(stderr.strip().splitlines()) == 1, (args, stderr)
        assert "Traceback" not in stderr


def test_shipped_slo_sets_load_and_carry_the_audit_levels():
    gate = {criterion.name: criterion for criterion in load_named(SLO, "staging-gate").criteria}
    assert (gate["API p95"].warn.limit, gate["API p95"].critical.limit) == (200, 500)
    assert (gate["API error rate"].warn.limit, gate["API error rate"].critical.limit) == (0.01, 0.02)
    assert (gate["Bundle size"].warn.limit, gate["Bundle size"].critical.limit) == (15e6, 50e6)
    assert gate["Throughput at 1,000 users"].critical.limit == 500 and gate["Throughput at 1,000 users"].stage == "1000 users"
    assert gate["Socket.IO connect success"].critical.limit == 0.99
    # the audit's user-experience targets warn (it gives no alert level for them); transactions fail below 97 %
    ux = {name: (gate[name].endpoint, gate[name].warn.limit, gate[name].critical) for name in
          ("Time to first byte", "First contentful paint", "Bundle load time", "Interactive response")}
    assert ux == {"Time to first byte": (("BROWSER ttfb *",), 100, None),
                  "First contentful paint": (("BROWSER fcp *",), 1500, None),
                  "Bundle load time": (("BROWSER load *",), 3000, None),
                  "Interactive response": (("BROWSER interactive *",), 100, None)}
    assert gate["Transaction success"].metric.name == "transaction_success" and gate["Transaction success"].critical.limit == 0.97
    targets = {criterion.name: criterion.critical.limit for criterion in load_named(SLO, "optimization-targets").criteria}
    assert targets == {"API p95": 80, "Dashboard average": 25, "Bundle size": 500e3}
    assert load_named(SLO, "staging-gate").baseline["/api/v1/media/upload"] == {"avg_ms": 125, "p95_ms": 380}
