"""Browser users end to end: real headless Chromium (Debian's package) against the reference target on loopback.
One staged run with `browsers: 1` is checked for several things; a bundle comparison drives the browser child
directly; a run without Chromium must complete, say so in one line and leave the UX criteria NO_DATA."""

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import gevent
import locust  # noqa: F401  (gevent patching first, as in conftest)
import pandas as pd
import psutil
import pytest
import yaml
from click.testing import CliRunner
from verdicts import assert_exit_is_the_verdicts

from locustfiles.browser import BrowserSettings, browser_cores
from medianest_load.browsers import EXECUTABLE_ENV, BrowserFleet, chromium_executable
from medianest_load.cli import main

MEDIANEST_LOAD = str(Path(sys.executable).with_name("medianest-load"))
REPO_ROOT = Path(__file__).resolve().parents[1]
OFF_HOST = "192.0.2.10"  # TEST-NET-1: not loopback, and unroutable should anything get past the guard
UX_CRITERIA = ("Time to first byte", "First contentful paint", "Bundle load time", "Interactive response")

needs_chromium = pytest.mark.skipif(chromium_executable()[0] is None,
                                    reason="no Chromium on PATH (Debian's chromium package; .ci/run installs it)")


def scenario(tmp_path: Path, browsers: int, stages: int = 2) -> Path:
    path = tmp_path / "browsers.yaml"
    path.write_text(yaml.safe_dump({
        "name": "browsers", "host": "http://127.0.0.1:8080",
        "stages": [{"name": "warm", "users": 3, "ramp": "1s", "hold": "4s", "browsers": browsers},
                   {"name": "peak", "users": 6, "ramp": "1s", "hold": "4s", "browsers": browsers}][:stages],
        "mix": {"health": 1, "dashboard": 1, "frontend": 1}, "think_time": {"min": "0.2s", "max": "0.5s"},
        "target_profile": "reference", "slo": "staging-gate", "stop_on_failed_stage": False}))
    return path


MARK = "MEDIANEST_TEST_MARK"  # an environment variable every process a test starts inherits, Chromium included


@pytest.fixture
def mark(monkeypatch) -> str:
    value = uuid.uuid4().hex
    monkeypatch.setenv(MARK, value)
    return value


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([MEDIANEST_LOAD, *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=240)


def browser_processes(mark: str) -> list[psutil.Process]:
    """Browser children and Chromium processes this test started that still live, orphans included: found
    machine-wide by the mark in their environment (the reference target, also marked, is no browser)."""
    found = []
    for process in psutil.process_iter(["name", "cmdline"]):
        try:
            command = " ".join(process.info["cmdline"] or [])
            if process.environ().get(MARK) == mark and process.status() != psutil.STATUS_ZOMBIE and (
                    "locustfiles.browser" in command or "chrom" in (process.info["name"] or "").lower()):
                found.append(process)
        except psutil.Error:
            continue
    return found


@needs_chromium
def test_one_browser_records_ux_samples_in_every_stage_and_never_leaves_loopback(reference_target, tmp_path, mark):
    # the page references a script on another host: the browsers must block it, count it, and not wait for it
    target = reference_target("--profile", "baseline", "--seed", "4", "--latency-scale", "0.3", "--bundle-kb", "600",
                              "--third-party-script", f"http://{OFF_HOST}/analytics.js")
    done = run_cli("run", str(scenario(tmp_path, 1)), "--host", target.url, "--out", str(tmp_path / "out"), "--quiet")
    (folder,) = (tmp_path / "out").iterdir()
    assert_exit_is_the_verdicts(done.returncode, folder, done.stderr)
    info = json.loads((folder / "run.json").read_text())
    assert info["status"] == "completed"

    summary = pd.read_csv(folder / "summary.csv")
    browser = summary[(summary.request_type == "BROWSER") & (summary.stage > 0)]
    per_stage = browser.groupby(["stage", "name"])[["requests", "failures"]].sum()
    for stage in (1, 2):
        for figure in ("ttfb /", "fcp /", "lcp /", "dcl /", "load /", "interactive /api/v1/dashboard/stats"):
            assert per_stage.loc[(stage, figure), "requests"] >= 1, (stage, figure)
    assert browser.failures.sum() == 0, "every visit and interaction (with the token the runner set up) succeeded"
    least = browser.groupby("name")["min_ms"].min()
    # per visit ttfb <= dcl <= load and ttfb <= fcp <= lcp, so the minima keep that order
    assert least["ttfb /"] <= least["fcp /"] <= least["lcp /"] and least["ttfb /"] <= least["dcl /"] <= least["load /"]
    loads = browser[browser.name == "load /"]
    assert (loads.avg_bytes >= 600 * 1024).all(), "a cold load transfers at least the whole bundle"
    assert (browser[browser.name == "requests /"].avg_bytes >= 7).all(), "HTML, 5 scripts, 1 stylesheet at least"
    # the blocked script never held the load event: nothing waited on the network off the machine
    assert loads.max_ms.max() < 10_000
    assert info["browsers"]["blocked_requests"].get(OFF_HOST, 0) >= 2 and not info["browsers"]["crashed"]
    assert f"blocked a request to {OFF_HOST}" in done.stderr
    assert not browser_processes(mark), "every browser process ended with the run"

    ttfb = summary[(summary.endpoint == "PAGE ttfb /") & (summary.stage > 0)]
    assert ttfb.requests.sum() >= 5 and (ttfb.p50_ms > 0).all()
    verdict = json.loads((folder / "verdict.json").read_text())
    criteria = {criterion["name"]: criterion for criterion in verdict["criteria"]}
    for name in UX_CRITERIA:  # a few visits per stage: measured, but too few for a p95 to be judged
        assert criteria[name]["status"] == "NO_DATA" and "fewer than 20 requests" in criteria[name]["note"], name
    report = (folder / "report.md").read_text()
    assert "## User experience" in report and "plots/user_experience.png" in report and "BROWSER fcp /" in report
    assert f"{OFF_HOST} x" in report and (folder / "plots" / "user_experience.png").stat().st_size > 0


def affinity(process: psutil.Process) -> frozenset[int] | None:
    try:
        return frozenset(process.cpu_affinity())
    except psutil.Error:  # a Chromium helper that ended meanwhile
        return None


def visits(url: str, count: int, mark: str) -> pd.DataFrame:
    """`count` cold visits by one browser child (no login: the interaction is left out of this comparison)."""
    samples: list[dict] = []
    fleet = BrowserFleet(BrowserSettings(page_url=url + "/", api_url=url + "/api/v1/health", page_name="/",
                                         api_name="/api/v1/health", executable=chromium_executable()[0],
                                         think_min=0.05, think_max=0.1),
                         lambda **sample: samples.append(sample))
    try:
        fleet.warm_up(1)
        running = browser_processes(mark)
        assert running, "the leftover check finds running browsers"
        # the child and every Chromium process keep to the browsers' cores, off the protocol users' ones
        assert set(filter(None, map(affinity, running))) == {
            frozenset(browser_cores(os.cpu_count() or 1) or range(os.cpu_count() or 1))}
        deadline = time.monotonic() + 90
        while sum(s["name"] == "load /" for s in samples) < count and time.monotonic() < deadline:
            gevent.sleep(0.1)
    finally:
        fleet.close()
    return pd.DataFrame(samples)


@needs_chromium
def test_a_larger_bundle_raises_fcp_and_load(reference_target, mark):
    small = reference_target("--profile", "optimized", "--seed", "6", "--latency-scale", "0.2")  # 500 KB
    large = reference_target("--profile", "bloated-bundle", "--seed", "6", "--latency-scale", "0.2")  # 24 MB
    medians = {}
    for name, target in (("small", small), ("large", large)):
        frame = visits(target.url, 3, mark)
        assert frame.exception.isna().all(), frame[frame.exception.notna()]
        medians[name] = frame.groupby("name")["response_time"].median()
        loads = frame[frame.name == "load /"]
        medians[name]["bytes"] = loads.response_length.median()
    assert medians["large"]["bytes"] > 40 * medians["small"]["bytes"]
    # parsing and running 48 times the script is work the browser cannot hide: both paint and load move
    for figure in ("fcp /", "load /"):
        assert medians["large"][figure] > 2 * medians["small"][figure], (figure, medians)
    assert not browser_processes(mark)


def test_without_chromium_the_run_completes_says_so_in_one_line_and_ux_is_no_data(reference_target, tmp_path,
                                                                                   monkeypatch):
    target = reference_target("--profile", "baseline", "--seed", "7", "--latency-scale", "0.3", "--bundle-kb", "200")
    # no browser ever starts: one short stage of protocol users is all there is to run
    monkeypatch.setenv(EXECUTABLE_ENV, str(tmp_path / "no-such-chromium"))
    done = CliRunner().invoke(main, ["run", str(scenario(tmp_path, 1, stages=1)), "--host", target.url,
                                     "--out", str(tmp_path / "out"), "--quiet"])
    assert_exit_is_the_verdicts(done.exit_code, next((tmp_path / "out").iterdir()), done.output)
    skipped = [line for line in done.stderr.splitlines() if "browsers skipped" in line]
    assert len(skipped) == 1 and "no-such-chromium" in skipped[0] and "chromium package" in skipped[0]
    (folder,) = (tmp_path / "out").iterdir()
    info = json.loads((folder / "run.json").read_text())
    assert info["status"] == "completed" and "browsers skipped" in info["browsers"]["skipped"]
    summary = pd.read_csv(folder / "summary.csv")
    assert not (summary.request_type == "BROWSER").any() and (summary.endpoint == "PAGE / (first visit)").any()
    criteria = {criterion["name"]: criterion for criterion in json.loads((folder / "verdict.json").read_text())["criteria"]}
    for name in UX_CRITERIA:  # no data, and not blamed on MediaNest
        assert criteria[name]["status"] == "NO_DATA" and "matches no endpoint of this run" in criteria[name]["note"], name
    assert "browsers skipped" in (folder / "report.md").read_text()
