"""A busy generator below the flags: each stage records its event-loop lag, and a latency that fails by less than
the generator may have added is INCONCLUSIVE, while one that fails by more stays a FAIL (a real run, then the real
`analyze` on its folder with SLO levels placed around what the run itself recorded)."""

import json
import subprocess
import sys
from pathlib import Path

import gevent
import pandas as pd
import pytest
import yaml
from busy_loop import busy_spells

from analysis.judging import LAG_ALLOWANCE, judge_run
from analysis.slo import parse_slo
from medianest_load.inputs import load_named
from medianest_load.paths import SCENARIOS_DIR
from medianest_load.run import RunRequest, ScenarioRun
from medianest_load.scenario import SCENARIO
from reference_target.launcher import start_target

MEDIANEST_LOAD = str(Path(sys.executable).with_name("medianest-load"))
ENDPOINT = "GET /api/v1/dashboard/stats"


@pytest.fixture(scope="module")
def busy_run(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("lag")
    scenario = yaml.safe_load((SCENARIOS_DIR / "smoke.yaml").read_text())
    scenario.update({"stages": [{"name": "busy", "users": 8, "ramp": "1s", "hold": "5s"}], "mix": {"dashboard": 1},
                     "think_time": {"min": "0.05s", "max": "0.1s"}})
    (folder / "scenario.yaml").write_text(yaml.safe_dump(scenario))
    target = start_target(["--profile", "baseline", "--seed", "3", "--latency-scale", "4"])  # p95 well above the lag
    busy = gevent.spawn(busy_spells, 0.01, 0.08)  # lag well below the generator-limited flags
    try:
        outcome = ScenarioRun(RunRequest(scenario=load_named(SCENARIO, str(folder / "scenario.yaml")), host=target.url,
                                         out_root=folder / "out", show_progress=False, gate_stages=False)).execute()
    finally:
        busy.kill()
        target.stop()
    return outcome.folder


def slo_with_level(level_ms: float) -> dict:
    return {"name": "lag", "criteria": [{"name": "dashboard p95", "metric": "p95_ms", "endpoint": ENDPOINT,
                                         "stage": "each", "critical": f"> {level_ms:.3f} ms"}]}


def analyze_with_level(folder: Path, level_ms: float, out: Path) -> tuple[int, dict]:
    """The real `analyze` command, as a user would run it."""
    path = out / "slo.yaml"
    out.mkdir()
    path.write_text(yaml.safe_dump(slo_with_level(level_ms)))
    done = subprocess.run([MEDIANEST_LOAD, "analyze", str(folder), "--slo", str(path), "--out", str(out)],
                          capture_output=True, text=True, timeout=120)
    return done.returncode, json.loads((out / "verdict.json").read_text())


def verdict_with_level(folder: Path, level_ms: float) -> tuple[int, str, str]:
    """The same judging in this process, without the reports: (exit code, verdict, the criterion's status)."""
    verdict = judge_run(folder, parse_slo(slo_with_level(level_ms), "lag.yaml"))
    return verdict.exit_code, verdict.status, verdict.results[0].status


def test_each_stage_records_the_generators_loop_lag(busy_run):
    (stage,) = json.loads((busy_run / "run.json").read_text())["stages"]
    assert stage["generator_limited"] is False, stage["generator_reason"]
    lag = stage["generator_lag_p95_ms"]
    assert lag == stage["generator"]["local"]["loop_lag_p95_ms"]
    assert 3 <= lag <= 40, "busy spells of 10 ms every 80 ms make the probe oversleep by up to 10 ms"


def test_a_latency_failing_within_the_generators_lag_is_inconclusive_and_beyond_it_fails(busy_run, tmp_path):
    lag = json.loads((busy_run / "run.json").read_text())["stages"][0]["generator_lag_p95_ms"]
    summary = pd.read_csv(busy_run / "summary.csv")
    p95 = summary[(summary.endpoint == ENDPOINT) & (summary.phase == "steady")].p95_ms.iloc[0]
    allowance = LAG_ALLOWANCE * lag
    assert p95 > 2 * allowance, (p95, allowance)

    code, verdict = analyze_with_level(busy_run, p95 - allowance / 2, tmp_path / "within")
    (criterion,) = verdict["criteria"]
    assert (code, verdict["verdict"], criterion["status"]) == (3, "INCONCLUSIVE", "INCONCLUSIVE")
    assert "fails by less than the load generator may have added at stage 1" in criterion["note"]
    assert f"= {allowance:,.1f} ms" in criterion["note"]
    report = (tmp_path / "within" / "report.md").read_text()
    assert "## Load generator" in report and "| 1 | 8 | local |" in report and f"| {allowance:.1f} |" in report

    assert verdict_with_level(busy_run, (p95 - allowance) / 2) == (1, "FAIL", "FAIL")
    passed = verdict_with_level(busy_run, p95 * 1.5)
    assert passed == (0, "PASS", "PASS"), "the generator's lag never turns a pass into anything else"
