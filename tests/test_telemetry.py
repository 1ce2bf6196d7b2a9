"""Server telemetry end to end: runs of `medianest-load run` (in subprocesses, in parallel) that scrape the
reference target's /metrics, and a run whose /metrics is broken in every way a scrape can fail."""

import itertools
import json
import os
import secrets
import subprocess
import sys
from pathlib import Path

import gevent
import pandas as pd
import pytest
import yaml
from click.testing import CliRunner
from gevent.pywsgi import WSGIServer

from analysis.criteria import FAIL, NO_DATA, PASS, WARN, _server_status, parse_criterion
from analysis.server import WindowValue
from medianest_load.cli import main
from medianest_load.paths import TARGET_PROFILES_DIR
from medianest_load.results_format import SCRAPE_METRIC, TELEMETRY_COLUMNS
from medianest_load.scenario import ScenarioError, parse_scenario
from medianest_load.target_profile import ProfileError, parse_target_profile
from reference_target.launcher import start_target

MEDIANEST_LOAD = str(Path(sys.executable).with_name("medianest-load"))
SERVER_CRITERIA = {"Memory growth", "Memory of the container limit", "Event-loop lag p95", "CPU", "Cache hit ratio",
                   "Database connection failures"}
RUN_TIMEOUT_S = 300


def scenario_file(folder: Path, stages: list[dict], profile: str = "reference", slo: str = "soak", **extra) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "scenario.yaml"
    path.write_text(yaml.safe_dump({
        "name": "telemetry", "host": "http://127.0.0.1:9", "stages": stages, "target_profile": profile, "slo": slo,
        "mix": {"health": 2, "dashboard": 2, "sockets": 1}, "think_time": {"min": "0.2s", "max": "0.6s"},
        "stop_on_failed_stage": False, **extra}))
    return path


def start_run(scenario: Path, host: str, out: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    return subprocess.Popen([MEDIANEST_LOAD, "run", str(scenario), "--host", host, "--out", str(out), "--quiet", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, **(env or {})})


def finish(process: subprocess.Popen, out: Path) -> tuple[Path, int, str]:
    """The run's results folder, exit code and everything it printed."""
    output, _ = process.communicate(timeout=RUN_TIMEOUT_S)
    folders = [path for path in out.iterdir() if path.is_dir()] if out.is_dir() else []
    assert len(folders) == 1, output
    return folders[0], process.returncode, output


def criteria(folder: Path) -> dict[str, dict]:
    return {criterion["name"]: criterion for criterion in json.loads((folder / "verdict.json").read_text())["criteria"]}


# --- a short soak against a leaky and a baseline target ----------------------------------------------------------

SOAK_STAGES = [{"name": "warm", "users": 10, "ramp": "2s", "hold": "8s"},
               {"name": "soak", "users": 10, "ramp": "1s", "hold": "40s"}]


@pytest.fixture(scope="module")
def soak_runs(tmp_path_factory):
    """The same 50-s soak (scraped every second) against `leaky` and against `baseline`, whose /metrics wants the
    bearer token that only the baseline run's environment holds. Both run at once."""
    root = tmp_path_factory.mktemp("soak")
    scenario = scenario_file(root, SOAK_STAGES)
    token = "mt-" + secrets.token_hex(12)
    leaky, baseline = start_target(["--profile", "leaky"]), start_target(["--profile", "baseline", "--metrics-token", token])
    try:
        runs = {"leaky": start_run(scenario, leaky.url, root / "leaky", "--scrape-interval", "1"),
                "baseline": start_run(scenario, baseline.url, root / "baseline", "--scrape-interval", "1",
                                      env={"METRICS_TOKEN": token})}
        results = {name: finish(process, root / name) for name, process in runs.items()}
    finally:
        leaky.stop()
        baseline.stop()
    return results, token


def test_a_leaky_soak_fails_memory_growth_with_the_slope_and_its_interval(soak_runs):
    folder, code, output = soak_runs[0]["leaky"]
    assert code == 1, output
    growth = criteria(folder)["Memory growth"]
    assert growth["status"] == FAIL and growth["confidence"] == 0.95
    soak = next(check for check in growth["checks"] if check["stage_name"] == "soak")
    assert soak["status"] == FAIL and 20 < soak["low"] <= soak["value"] <= soak["high"], soak
    assert "interval" in growth["measured"]
    warm = next(check for check in growth["checks"] if check["stage_name"] == "warm")
    assert warm["status"] == NO_DATA and "needs 30 s" in warm["note"]  # 8 s of hold is no basis for MB/h
    junit = (folder / "junit.xml").read_text()
    assert 'name="Memory growth"' in junit and "interval" in junit
    report = (folder / "report.md").read_text()
    assert "## Server" in report and "memory growth [95 % interval]" in report
    assert (folder / "plots" / "server.png").stat().st_size > 10_000


def test_a_baseline_soak_passes_memory_growth_with_its_interval_below_the_level(soak_runs):
    folder, code, output = soak_runs[0]["baseline"]
    growth = criteria(folder)["Memory growth"]
    soak = next(check for check in growth["checks"] if check["stage_name"] == "soak")
    assert soak["status"] == PASS and soak["low"] <= soak["value"] <= soak["high"] < 10, soak
    assert growth["status"] == PASS, growth
    verdict = json.loads((folder / "verdict.json").read_text())
    server = {(row["stage"], row["quantity"]): row for row in verdict["server"]["stages"]}
    assert server[(2, "scrape_success")]["value"] == 1.0 and not verdict["server"]["failures"]
    assert 10 < server[(2, "memory_mb")]["value"] < 2000  # a real resident size, in MB
    assert server[(2, "cache_hit_ratio")]["value"] > 0.5  # the dashboard cache serves repeat visits
    assert 0 < server[(2, "cpu_pct")]["value"] < 1.5
    assert server[(2, "connected_sockets")]["value"] >= 1
    assert code in (0, 1), output  # the loop-lag level may WARN or the machine may be slow; growth is the point here


def test_telemetry_csv_is_tidy_and_attributed_to_stages(soak_runs):
    folder = soak_runs[0]["baseline"][0]
    telemetry = pd.read_csv(folder / "telemetry.csv")
    assert tuple(telemetry.columns) == TELEMETRY_COLUMNS
    attempts = telemetry[telemetry["metric"] == SCRAPE_METRIC]
    assert len(attempts) >= 40 and set(attempts["labels"]) == {'outcome="ok"'}
    kept = set(telemetry["metric"])
    assert {"process_resident_memory_bytes", "process_cpu_seconds_total", "medianest_cache_hits_total",
            "database_connection_attempts_total"} <= kept
    assert "http_request_duration_seconds_bucket" not in kept  # not used by the analysis, so not kept
    steady = telemetry[telemetry["phase"] == "steady"]
    assert set(steady["stage"]) == {1, 2}
    sockets = telemetry[telemetry["metric"] == "medianest_websocket_connections_active"]["labels"]
    assert set(sockets) == {'namespace="/"', 'namespace="/media"'}
    info = json.loads((folder / "run.json").read_text())["telemetry"]
    assert info["successes"] == info["attempts"] == len(attempts) and info["interval_s"] == 1.0


def test_the_metrics_token_appears_in_no_file_and_no_output(soak_runs):
    (folder, _, output), token = soak_runs[0]["baseline"], soak_runs[1]
    assert json.loads((folder / "run.json").read_text())["telemetry"]["successes"] > 0  # so the token was sent
    assert token not in output
    files = [path for path in folder.rglob("*") if path.is_file()]
    assert len(files) > 8
    for path in files:
        assert token.encode() not in path.read_bytes(), path


# --- a /metrics that fails in every way ---------------------------------------------------------------------------


def faulty_metrics_server() -> WSGIServer:
    """/metrics answering 404, slowly (3 s), 401, 403 and garbage in turn; after 15 answers it stops listening, so
    later scrapes are refused."""
    answers = itertools.count()
    server: WSGIServer

    def app(environ, start_response):
        answer = next(answers)
        if answer == 14:
            gevent.spawn_later(0.2, server.stop, 1)
        kind = ("404", "slow", "401", "403", "garbage")[answer % 5]
        if kind == "slow":
            gevent.sleep(3)
        status = {"404": "404 Not Found", "401": "401 Unauthorized", "403": "403 Forbidden"}.get(kind, "200 OK")
        start_response(status, [("Content-Type", "text/plain")])
        return [b"<html><body>not metrics</body></html>\n" if kind == "garbage" else b"process_resident_memory_bytes 1\n"]

    server = WSGIServer(("127.0.0.1", 0), app, log=None, error_log=None)
    server.start()
    return server


@pytest.fixture(scope="module")
def broken_metrics_runs(tmp_path_factory):
    """A short run whose profile points scraping at the faulty server, and the same run with --no-scrape."""
    root = tmp_path_factory.mktemp("broken")
    server = faulty_metrics_server()
    profile = yaml.safe_load((TARGET_PROFILES_DIR / "reference.yaml").read_text())
    profile["metrics"]["url"] = f"http://127.0.0.1:{server.server_port}/metrics"
    (root / "profile.yaml").write_text(yaml.safe_dump(profile))
    stages = [{"name": "first", "users": 6, "ramp": "1s", "hold": "12s"}, {"name": "second", "users": 6, "ramp": "1s", "hold": "14s"}]
    scenario = scenario_file(root, stages, profile=str(root / "profile.yaml"), slo="staging-gate")
    target = start_target(["--profile", "baseline"])
    try:
        runs = {"broken": start_run(scenario, target.url, root / "broken", "--scrape-interval", "1"),
                "off": start_run(scenario, target.url, root / "off", "--no-scrape")}
        results = {name: finish(process, root / name) for name, process in runs.items()}
    finally:
        target.stop()
        server.stop(1)
    return results


def test_a_broken_metrics_endpoint_leaves_a_complete_run_and_no_data_with_the_reasons(broken_metrics_runs):
    folder, code, output = broken_metrics_runs["broken"]
    assert "Traceback" not in output and code in (0, 1), output
    assert json.loads((folder / "run.json").read_text())["status"] == "completed"
    verdict = json.loads((folder / "verdict.json").read_text())
    failures = verdict["server"]["failures"]
    assert {"not_found", "timeout", "unauthorized", "unparsable", "refused"} <= set(failures), failures
    assert "ok" not in failures
    judged = criteria(folder)
    for name in SERVER_CRITERIA:
        assert judged[name]["status"] == NO_DATA, judged[name]
    assert "no successful scrape" in judged["CPU"]["note"] and "timeout" in judged["CPU"]["note"]
    assert judged["API p95"]["status"] in (PASS, WARN)  # the load itself was measured as usual
    report = (folder / "report.md").read_text()
    assert "Failed scrapes by reason" in report and "never read as MediaNest's" in report
    assert not (folder / "plots" / "server.png").exists()


def test_load_numbers_do_not_depend_on_scraping(broken_metrics_runs):
    (broken, _, _), (off, code, output) = broken_metrics_runs["broken"], broken_metrics_runs["off"]
    assert not (off / "telemetry.csv").exists() and code in (0, 1), output
    assert json.loads((off / "run.json").read_text())["telemetry"] == {"enabled": False}
    assert criteria(off)["CPU"]["status"] == NO_DATA and "scraping was off" in criteria(off)["CPU"]["note"]
    requests = [pd.read_csv(folder / "summary.csv").query("stage > 0")["requests"].sum() for folder in (broken, off)]
    assert min(requests) > 50 and max(requests) / min(requests) < 2, requests  # same users, same think time
    for folder in (broken, off):
        summary = pd.read_csv(folder / "summary.csv")
        assert summary["failures"].sum() == 0, folder
        assert not summary["endpoint"].str.contains("metrics").any()  # scrapes are not load samples


# --- judging an interval, and bad input ------------------------------------------------------------------------


def test_an_interval_fails_only_when_all_of_it_is_beyond_the_critical_level():
    criterion = parse_criterion({"name": "g", "metric": "memory_growth_mb_per_h", "warn": "> 10 MB/h",
                                 "critical": "> 20 MB/h"}, "criteria[0]")
    assert criterion.confidence == 0.95
    cases = {(25, 21, 30): FAIL, (25, 15, 30): WARN, (12, 11, 13): WARN, (8, 5, 11): WARN, (5, 3, 9): PASS,
             (-2, -4, 1): PASS}
    for (value, low, high), expected in cases.items():
        assert _server_status(criterion, WindowValue(value, 30, "", low, high), None) == expected, (value, low, high)
    assert _server_status(criterion, WindowValue(None, 0, "no scrape"), None) == NO_DATA


def test_bad_telemetry_settings_are_one_line_errors(tmp_path):
    base = yaml.safe_load((TARGET_PROFILES_DIR / "reference.yaml").read_text())
    for change, expected in (({"names": {"memory": "x"}}, "metrics.names.memory"),
                             ({"scrape_interval_s": 0}, "metrics.scrape_interval_s"),
                             ({"container_limit_mb": "512Mi"}, "metrics.container_limit_mb")):
        profile = {**base, "metrics": {**base["metrics"], **change}}
        with pytest.raises(ProfileError, match=expected):
            parse_target_profile(profile, "p.yaml")
    scenario = {"name": "s", "host": "http://127.0.0.1:1", "stages": [{"users": 1, "hold": "1s"}], "mix": {"health": 1},
                "scrape_interval": "soon"}
    with pytest.raises(ScenarioError, match="scrape_interval"):
        parse_scenario(scenario, "s.yaml")
    with pytest.raises(ValueError, match="confidence"):
        parse_criterion({"name": "c", "metric": "cpu_pct", "warn": "> 70 %", "confidence": 0.9}, "criteria[0]")
    remote = {**base, "metrics": {**base["metrics"], "url": "http://metrics.example.com/metrics"}}
    (tmp_path / "remote.yaml").write_text(yaml.safe_dump(remote))
    out = tmp_path / "results"
    for args, expected in ((["--target-profile", str(tmp_path / "remote.yaml")], "metrics.url"),
                           (["--scrape-interval", "0"], "--scrape-interval")):
        result = CliRunner().invoke(main, ["run", "smoke", "--out", str(out), *args])
        lines = result.output.strip().splitlines()
        assert result.exit_code == 2 and len(lines) == 1 and expected in lines[0], result.output
    assert not out.exists() or list(out.iterdir()) == []
