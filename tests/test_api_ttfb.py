"""Opt-in time to first byte of API requests (`api_ttfb: true`): a real run against the reference target records a
`TTFB <METHOD> <route>` sample beside each API request, never above the whole answer's time, and left out of the
request totals; bad switches are one-line errors."""

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from medianest_load.inputs import InputError, load_named
from medianest_load.paths import SCENARIOS_DIR
from medianest_load.run import RunRequest, ScenarioRun
from medianest_load.scenario import SCENARIO
from medianest_load.settings import HarnessOptions, resolve_settings

MEDIANEST_LOAD = str(Path(sys.executable).with_name("medianest-load"))


def scenario_file(folder: Path, **changes) -> Path:
    scenario = yaml.safe_load((SCENARIOS_DIR / "smoke.yaml").read_text())
    scenario.update({"stages": [{"name": "only", "users": 4, "ramp": "1s", "hold": "3s"}],
                     "mix": {"health": 1, "dashboard": 1}, "think_time": {"min": "0.05s", "max": "0.1s"}, **changes})
    path = folder / "scenario.yaml"
    path.write_text(yaml.safe_dump(scenario))
    return path


def test_api_requests_record_their_time_to_first_byte_when_asked(reference_target, tmp_path):
    target = reference_target("--profile", "baseline", "--seed", "5")
    scenario = load_named(SCENARIO, str(scenario_file(tmp_path, api_ttfb=True)))
    outcome = ScenarioRun(RunRequest(scenario=scenario, host=target.url, out_root=tmp_path / "out", show_progress=False,
                                     gate_stages=False)).execute()
    summary = pd.read_csv(outcome.folder / "summary.csv")
    steady = summary[(summary.stage == 1) & (summary.phase == "steady")].set_index("endpoint")
    api = steady[steady.request_type.isin(["GET", "POST"]) & steady.index.str.contains(" /api/")]
    ttfb = steady[steady.request_type == "TTFB"]
    assert len(api) >= 3 and set(ttfb.index) == {f"TTFB {endpoint}" for endpoint in api.index}
    for endpoint, row in api.iterrows():
        first_byte = ttfb.loc[f"TTFB {endpoint}"]
        assert first_byte.requests == row.requests - row.unreached, endpoint  # every answer that came has one
        assert first_byte.p50_ms <= row.p50_ms and first_byte.max_ms <= row.max_ms + 0.01, endpoint
    # TTFB samples time requests counted already: the per-second ALL rows count requests only
    series = pd.read_csv(outcome.folder / "timeseries.csv")
    counted = summary[~summary.request_type.isin(["TXN", "BROWSER", "TTFB"])].requests.sum()
    assert series[series.endpoint == "ALL"].requests.sum() == counted


def test_api_ttfb_is_off_by_default_and_a_bad_switch_is_one_line():
    assert resolve_settings(HarnessOptions()).api_ttfb is False
    assert resolve_settings(HarnessOptions(api_ttfb="on")).api_ttfb is True
    with pytest.raises(InputError) as raised:
        resolve_settings(HarnessOptions(api_ttfb="sometimes"))
    assert str(raised.value) == "option --api-ttfb (env MEDIANEST_API_TTFB): got 'sometimes', expected on or off"


def test_a_scenario_api_ttfb_that_is_not_a_boolean_is_one_line(tmp_path):
    path = scenario_file(tmp_path, api_ttfb="yes please")
    done = subprocess.run([MEDIANEST_LOAD, "run", str(path), "--out", str(tmp_path / "out")], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [f"error: {path}: api_ttfb: got 'yes please', expected true or false"]
