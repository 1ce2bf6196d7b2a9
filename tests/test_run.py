"""The staged runner end to end against the reference target: results folder, stage attribution, interrupts,
a dead target, and the host guard."""

import json
import re
import signal
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import gevent
import locust
import pandas as pd
import pytest
import yaml
from click.testing import CliRunner

from analysis.judging import judge_run
from analysis.slo import SLO
from medianest_load.cli import main, run_exit_code
from medianest_load.inputs import load_named
from medianest_load.paths import SCENARIOS_DIR
from medianest_load.results_format import NOT_REQUESTS, SUMMARY_COLUMNS, TIMESERIES_COLUMNS
from medianest_load.run import RunRequest, ScenarioRun
from medianest_load.scenario import SCENARIO

RESULT_FILES = {"run.json", "summary.csv", "timeseries.csv", "histograms.json", "failures.csv"}
MEDIANEST_LOAD = str(Path(sys.executable).with_name("medianest-load"))


def run_smoke(host: str, out_root: Path, watch=None, **overrides) -> tuple:
    """A smoke run in this process, with an independent request listener counting what Locust saw; `watch`, if
    given, runs in a greenlet beside the run (it is killed when the run ends)."""
    seen: Counter = Counter()

    def count(request_type, name, **_):
        seen[f"{request_type} {name}"] += 1

    locust.events.request.add_listener(count)
    watching = gevent.spawn(watch, out_root) if watch is not None else None
    try:
        request = RunRequest(scenario=load_named(SCENARIO, "smoke"), host=host, out_root=out_root, show_progress=False,
                             **overrides)
        outcome = ScenarioRun(request).execute()
    finally:
        locust.events.request.remove_listener(count)
        if watching is not None:
            watching.kill()
    return outcome, seen


class RunWatcher:
    """Reads a running run's folder the way an outsider would, every 50 ms until the run ends: the (stage, phase)
    run.json names while the status is still "running", and whether summary.csv already held samples then."""

    def __init__(self) -> None:
        self.phases: list[tuple[int, str]] = []
        self.flushed_while_running = False

    def __call__(self, out_root: Path) -> None:
        while True:
            gevent.sleep(0.05)
            found = list(out_root.glob("*/run.json"))
            if not found:
                continue
            run = json.loads(found[0].read_text())
            if run["status"] != "running":
                return
            if run["stages"]:
                last = run["stages"][-1]
                phase = (last["index"], "steady" if last["steady_start"] is not None else "ramp")
                if phase not in self.phases:
                    self.phases.append(phase)
            summary = found[0].with_name("summary.csv")
            if not self.flushed_while_running and summary.exists():
                self.flushed_while_running = pd.read_csv(summary).requests.sum() > 0


def test_smoke_run_writes_every_file_and_counts_match_an_independent_listener(reference_target, tmp_path):
    target = reference_target("--profile", "baseline", "--seed", "3")
    watcher = RunWatcher()
    outcome, seen = run_smoke(target.url, tmp_path, watch=watcher)

    # while it ran, run.json named each stage's ramp and steady phase as it began (not only at the 10-s flushes,
    # which would show two of the four phases at most), and the periodic flush had written samples already
    assert watcher.phases == [(1, "ramp"), (1, "steady"), (2, "ramp"), (2, "steady")], watcher.phases
    assert watcher.flushed_while_running, "results are flushed while the run goes on"

    assert outcome.status == "completed"
    assert RESULT_FILES <= {path.name for path in outcome.folder.iterdir()}
    summary = pd.read_csv(outcome.folder / "summary.csv")
    assert list(summary.columns) == list(SUMMARY_COLUMNS)
    assert summary.groupby("endpoint")["requests"].sum().to_dict() == dict(seen)

    kinds = {endpoint.split(" ", 1)[0] for endpoint in seen}
    assert {"GET", "POST", "SIO", "PAGE"} <= kinds, "every traffic kind ran"
    # short socket sessions: every stage connects often enough for the connect criterion to be judged
    connects = summary[summary.endpoint == "SIO connect /media"].groupby("stage")["requests"].sum()
    assert connects.reindex([1, 2]).fillna(0).min() >= 3, connects.to_dict()
    steady = summary[summary.phase == "steady"]
    assert set(steady.stage) == {1, 2} and set(steady.users) == {6, 12}
    assert (steady.p50_ms <= steady.p95_ms).all() and (steady.p95_ms <= steady.p99_ms).all()
    assert (steady.max_ms >= steady.p99_ms * 0.999 - 0.001).all()  # the histogram's floor: 1 us (0 ms disconnects)

    run = json.loads((outcome.folder / "run.json").read_text())
    assert run["status"] == "completed" and run["host"] == target.url
    stages = run["stages"]
    assert [stage["users"] for stage in stages] == [6, 12]
    for stage, planned in zip(stages, load_named(SCENARIO, "smoke").stages, strict=True):
        assert stage["ramp_start"] <= stage["steady_start"] < stage["steady_end"]
        assert stage["steady_end"] - stage["steady_start"] >= planned.hold_s - 0.01, "each stage gets its full hold"

    series = pd.read_csv(outcome.folder / "timeseries.csv")
    assert list(series.columns) == list(TIMESERIES_COLUMNS)
    every_second = series[series.endpoint == "ALL"]
    # the ALL row counts requests: transactions (and browser timings) span or time requests counted already
    requests = sum(count for endpoint, count in seen.items() if endpoint.split(" ", 1)[0] not in NOT_REQUESTS)
    assert len(every_second) >= 18 and every_second.requests.sum() == requests
    # the rows tile the run without gaps or overlaps: their intervals add up to the elapsed time of the last one
    assert (every_second.interval_s > 0).all() and every_second.time.is_unique
    assert every_second.interval_s.sum() == pytest.approx(every_second.elapsed_s.iloc[-1], abs=0.01)


def test_a_dead_target_still_leaves_complete_results(tmp_path):
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{probe.getsockname()[1]}"
    outcome, seen = run_smoke(dead, tmp_path, time_scale=0.3)  # stage 1 in 3 s: refusals come at once
    # staging-gate's error-rate criterion carries `abort`: the run stops after stage 1 instead of going on
    assert outcome.status == "aborted"
    assert outcome.stop_reason.startswith("aborted by API error rate 100.00 %")
    run = json.loads((outcome.folder / "run.json").read_text())
    assert run["status"] == "aborted" and [stage["index"] for stage in run["stages"]] == [1]
    summary = pd.read_csv(outcome.folder / "summary.csv")
    assert summary.requests.sum() == sum(seen.values()) > 0
    assert summary.failures.sum() == summary.requests.sum()
    assert summary.fail_connection_refused.sum() > 0
    # no sample reached a server: no latency at all, and latency criteria are NO_DATA, never a fast PASS
    assert summary.unreached.sum() == summary.requests.sum() and summary.p95_ms.isna().all()
    verdict = judge_run(outcome.folder, load_named(SLO, "staging-gate"))
    # (the browser users' UX criteria select samples smoke never makes: "matches no endpoint", a NO_DATA of its own)
    latency = [result for result in verdict.results
               if result.criterion.metric.family == "latency" and "matches no endpoint" not in result.note]
    assert {"API p95", "API average response"} <= {result.criterion.name for result in latency}
    for result in latency:
        assert result.status == "NO_DATA" and "no sample reached a server" in result.note, result.to_dict()


def test_a_run_that_stopped_before_its_plan_ended_never_exits_0():
    """A deadline or a dead shape aborts without a failed criterion: the stages it never ran are no pass."""
    passed, failed = SimpleNamespace(exit_code=0), SimpleNamespace(exit_code=1)
    codes = {status: [run_exit_code(SimpleNamespace(status=status), verdict) for verdict in (passed, failed)]
             for status in ("completed", "aborted", "interrupted")}
    assert codes == {"completed": [0, 1], "aborted": [1, 1], "interrupted": [130, 130]}


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_mid_run_leaves_an_interrupted_analysable_run(reference_target, tmp_path, signum):
    target = reference_target("--profile", "baseline")
    out, log = tmp_path / "out", tmp_path / "stderr.txt"
    # progress on stderr without a terminal: a plain line every 10 s from the first second of stage 1
    line_format = r"users \d+/6 \| [\d.]+ req/s \| p95 \d+ ms \| errors [\d.]+% \| ~\d+:\d\d left"

    def progress() -> list[str]:
        return [line for line in log.read_text().splitlines() if line.startswith("stage 1/2 ")]

    def steady() -> bool:  # run.json names the phase in progress from its start (the flush every 10 s: the rest)
        found = list(out.glob("*/run.json"))
        stages = json.loads(found[0].read_text())["stages"] if found else []
        return bool(stages) and stages[0]["steady_start"] is not None

    # the signal lands in stage 1's 8-s steady phase, once a progress line is out (that results are flushed while
    # a run goes on: test_smoke_run_writes_every_file...)
    # the interrupted run's report is drawn once, after SIGINT; SIGTERM's run is judged without it (6 CPU-s)
    no_report = ["--no-report"] if signum == signal.SIGTERM else []
    with log.open("w") as stderr:
        process = subprocess.Popen([MEDIANEST_LOAD, "run", "smoke", "--host", target.url, "--out", str(out), *no_report],
                                   stdout=subprocess.PIPE, stderr=stderr, text=True)
    deadline = time.monotonic() + 90  # roomy: a busy shared machine starts the run slowly
    while not (steady() and any(re.search(line_format, line) for line in progress())):
        assert time.monotonic() < deadline and process.poll() is None, log.read_text()
        time.sleep(0.2)
    assert process.poll() is None, "the signal comes while the run goes on"
    process.send_signal(signum)
    process.communicate(timeout=60)
    err = log.read_text()
    assert process.returncode == 130, err
    assert any(re.search(line_format, line) for line in progress()), err
    (folder,) = list(out.iterdir())
    verdict = json.loads((folder / "verdict.json").read_text())
    assert verdict["run_status"] == "interrupted" and verdict["criteria"]
    run = json.loads((folder / "run.json").read_text())
    assert run["status"] == "interrupted", err
    assert run["stop_reason"] == f"interrupted by {signal.Signals(signum).name}"
    assert RESULT_FILES <= {path.name for path in folder.iterdir()}
    assert (folder / "report.html").exists() != bool(no_report)
    summary = pd.read_csv(folder / "summary.csv")
    assert summary.requests.sum() > 0
    assert run["ended_at"] is not None and len(run["stages"]) >= 1


def test_non_loopback_host_is_refused_before_any_connection(tmp_path, monkeypatch):
    attempts = []
    real_connect, real_getaddrinfo = socket.socket.connect, socket.getaddrinfo

    def spy(sock, address):
        attempts.append(address)
        return real_connect(sock, address)

    def lookup_spy(host, *args, **kwargs):  # not even a DNS query may leave for the refused host
        attempts.append(host)
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket.socket, "connect", spy)
    monkeypatch.setattr(socket, "getaddrinfo", lookup_spy)
    result = CliRunner().invoke(main, ["run", "smoke", "--host", "http://medianest-staging.example.com",
                                       "--out", str(tmp_path)])
    assert result.exit_code == 2
    assert "host: refusing 'medianest-staging.example.com'" in result.output
    assert "--allow-host medianest-staging.example.com" in result.output
    assert len(result.output.strip().splitlines()) == 1
    assert attempts == [] and list(tmp_path.iterdir()) == []


def test_user_mistakes_stop_a_run_with_one_line_before_anything_is_written(tmp_path):
    binary_tokens = tmp_path / "tokens.bin"
    binary_tokens.write_bytes(b"\xff\xfe\x00\x81")
    a_file = tmp_path / "a-file"
    a_file.write_text("not a folder")
    out = tmp_path / "results"
    cases = {
        "bad --slo": (["run", "smoke", "--slo", "nonesuch"], "nonesuch"),
        "bad --target-profile": (["run", "smoke", "--target-profile", "nonesuch"], "nonesuch"),
        "host without scheme": (["run", "smoke", "--host", "127.0.0.1:8080"], "expected an http:// or https:// URL"),
        "zero time scale": (["run", "smoke", "--time-scale", "0"], "--time-scale"),
        "unknown scenario": (["run", "nonesuch"], "nonesuch: (file): got no such file, expected a path to a YAML scenario"),
        "binary tokens file": (["run", "smoke", "--tokens", str(binary_tokens)], str(binary_tokens)),
        "unknown demo profile": (["demo", "--profile", "nope", "--out", str(out)], "nope"),
        "--out under a file": (["run", "smoke", "--out", str(a_file / "results")], "expected a writable folder"),
    }
    for what, (args, expected) in cases.items():
        if args[0] == "run" and "--out" not in args:
            args = [*args, "--out", str(out)]
        result = CliRunner().invoke(main, args)
        lines = result.output.strip().splitlines()
        assert result.exit_code == 2, (what, result.output)
        assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], (what, result.output)
    assert not out.exists() or list(out.iterdir()) == []


def write_short_scenario(tmp_path: Path, **changes) -> Path:
    scenario = yaml.safe_load((SCENARIOS_DIR / "smoke.yaml").read_text())
    scenario["stages"] = [{"name": "first", "users": 3, "ramp": "1s", "hold": "2s"},
                          {"name": "second", "users": 6, "ramp": "1s", "hold": "2s"}]
    scenario.update(changes)
    path = tmp_path / "short.yaml"
    path.write_text(yaml.safe_dump(scenario))
    return path


def test_stop_on_failed_stage_stops_after_a_failed_stage_and_no_gate_runs_every_stage(reference_target, tmp_path):
    """A criterion without `abort` stops the run only under stop_on_failed_stage (the audit's protocol)."""
    target = reference_target("--profile", "baseline")
    slo = tmp_path / "strict.yaml"
    slo.write_text(yaml.safe_dump({"name": "strict", "criteria": [
        # not a latency: on a busy machine one fails by less than the generator's loop lag may add, and is
        # INCONCLUSIVE (judging.py), which stops nothing
        {"name": "any traffic", "metric": "rps", "endpoint": "api", "stage": "each", "critical": "> 0 req/s"},
    ]}))
    scenario = write_short_scenario(tmp_path, stop_on_failed_stage=True, slo=str(slo))

    gated = ScenarioRun(RunRequest(scenario=load_named(SCENARIO, str(scenario)), host=target.url, out_root=tmp_path / "gated",
                                   show_progress=False)).execute()
    assert gated.status == "aborted"
    assert gated.stop_reason == "stage 1 failed any traffic (stop_on_failed_stage)"
    assert [stage["index"] for stage in json.loads((gated.folder / "run.json").read_text())["stages"]] == [1]

    ungated = ScenarioRun(RunRequest(scenario=load_named(SCENARIO, str(scenario)), host=target.url, out_root=tmp_path / "ungated",
                                     show_progress=False, gate_stages=False)).execute()
    assert ungated.status == "completed"
    summary = pd.read_csv(ungated.folder / "summary.csv")
    assert set(summary[summary.phase == "steady"].stage) == {1, 2}


def test_tokens_handed_to_users_never_reach_the_results(reference_target, issue_tokens, tmp_path):
    target = reference_target("--profile", "baseline")
    tokens, tokens_file = issue_tokens(target.url, 3)
    scenario = write_short_scenario(tmp_path, mix={"auth": 1, "dashboard": 1, "sockets": 1, "upload": 1})

    # judged on errors alone (latency on a busy shared machine is no concern here): a clean target that accepts
    # every handed token answers every request, so the run passes and exits 0
    slo = tmp_path / "no-errors.yaml"
    slo.write_text(yaml.safe_dump({"name": "no-errors", "criteria": [
        {"name": "no error", "metric": "error_rate", "endpoint": "all", "critical": "> 0 %"}]}))
    result = CliRunner().invoke(main, ["run", str(scenario), "--host", target.url, "--tokens", str(tokens_file),
                                       "--slo", str(slo), "--out", str(tmp_path / "out"), "--quiet"])
    assert result.exit_code == 0, result.output
    (folder,) = list((tmp_path / "out").iterdir())
    summary = pd.read_csv(folder / "summary.csv")
    assert summary[summary.endpoint == "GET /api/v1/auth/session"].requests.sum() > 0
    assert summary[summary.endpoint == "GET /api/v1/auth/session"].failures.sum() == 0, "the tokens were used"
    written = [path for path in folder.rglob("*") if path.is_file() and path.suffix != ".png"]
    assert {"run.json", "summary.csv", "failures.csv", "report.html", "verdict.json"} <= {p.name for p in written}
    for token in tokens:
        assert token not in result.output
        for path in written:
            assert token not in path.read_text(errors="replace"), path
