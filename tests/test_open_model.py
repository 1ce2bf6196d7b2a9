"""Open-model stages end to end: `medianest-load run` against the reference target, whose stall window pauses
every answer for 2 s every 10 s (a fifth of the time), so that coordinated omission shows. Figures are read from
the results folder and merged here with HdrHistogram itself. The machine is shared: timing bounds are roomy."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from hdrh.histogram import HdrHistogram
from verdicts import assert_exit_is_the_verdicts

from analysis.slo import SLO, SloError
from medianest_load.inputs import load_named
from medianest_load.open_model import DROP_AFTER_S, LATENESS, OPEN_STAGE, ArrivalSchedule
from medianest_load.scenario import SCENARIO, ScenarioError, parse_scenario
from reference_target.launcher import start_target

REPO_ROOT = Path(__file__).resolve().parents[1]
MEDIANEST_LOAD = str(Path(sys.executable).with_name("medianest-load"))
# 10-s holds: one full stall period in every steady phase, whatever its phase. The closed stage has more users
# than the open pool: each stall costs every closed user a whole cycle, so 50 of them make only about 60-70 of
# the 100 iterations/s, and 70 of them make about the open stages' rate. The large pool runs at the same time,
# against a target of its own: two runs of two stages and one, not one of three
STALL_SCENARIO = """
name: open-stall
description: open and closed stages at about 100 iterations/s under a 2-s stall every 10 s
host: http://127.0.0.1:8080
stages:
  - {name: open-small-pool, rate: 100/s, max_users: 50, ramp: 1s, hold: 10s}
  - {name: closed, users: 70, ramp: 1s, hold: 10s}
mix: {health: 1}
think_time: {min: 0.4s, max: 0.6s}
timeouts: {request: 10s, connect: 2s}
stop_on_failed_stage: false
"""
LARGE_POOL_SCENARIO = """
name: open-stall-large-pool
description: an open stage with a pool large enough for a 2-s stall every 10 s
host: http://127.0.0.1:8080
stages:
  - {name: open-large-pool, rate: 100/s, max_users: 400, ramp: 2s, hold: 10s, arrivals: poisson}
mix: {health: 1}
timeouts: {request: 10s, connect: 2s}
"""
STALL_EVERY_10_S = ("--stall-window-s", "2", "--stall-every-s", "10")
EASY_SCENARIO = """
name: open-easy
description: an arrival rate the target serves easily
host: http://127.0.0.1:8080
stages:
  - {name: easy, rate: 40/s, max_users: 40, ramp: 1s, hold: 10s}
mix: {health: 1}
timeouts: {request: 10s, connect: 2s}
"""


def run_scenarios(runs: dict[str, tuple[Path, str, tuple[str, ...]]]) -> dict[str, Path]:
    """Run each scenario against its own reference target, all at once (each is light: a few hundred requests a
    second on cheap routes); each one's results folder (its progress lines in progress.txt beside it)."""
    targets, started = {}, {}
    try:
        for name, (folder, text, target_args) in runs.items():
            (folder / "scenario.yaml").write_text(text)
            targets[name] = start_target(["--profile", "baseline", *target_args])
        for name, (folder, _, _) in runs.items():
            started[name] = subprocess.Popen([MEDIANEST_LOAD, "run", str(folder / "scenario.yaml"), "--host",
                                              targets[name].url, "--out", str(folder / "out"), "--no-gate",
                                              "--no-report"],
                                             cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        outputs = {name: process.communicate(timeout=300) for name, process in started.items()}
    finally:
        for process in started.values():
            process.kill()
        for target in targets.values():
            target.stop()
    folders = {}
    for name, (folder, _, _) in runs.items():
        (folders[name],) = (folder / "out").iterdir()
        assert_exit_is_the_verdicts(started[name].returncode, folders[name], outputs[name][1])
        (folder / "progress.txt").write_text(outputs[name][1])
    return folders


def merged_ms(folder: Path, timing: str, stage: int, percentiles: tuple[float, ...]) -> list[float]:
    """Percentiles of every endpoint of a steady stage together: `histograms` (raw) or `corrected`."""
    merged = HdrHistogram(1, 3_600_000_000, 3)
    for entry in json.loads((folder / "histograms.json").read_text())[timing]:
        if entry["stage"] == stage and entry["phase"] == "steady":
            merged.add(HdrHistogram.decode(entry["encoded"]))
    assert merged.get_total_count() > 0, (timing, stage)
    return [merged.get_value_at_percentile(p) / 1000 for p in percentiles]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """The stalled runs (small pool then closed; large pool), and the easy rate against service times of 100-200 ms
    (the few ms a busy machine adds to waking a greenlet stay a small fraction of them)."""
    return run_scenarios({
        "stalled": (tmp_path_factory.mktemp("stalled"), STALL_SCENARIO, STALL_EVERY_10_S),
        "large": (tmp_path_factory.mktemp("large"), LARGE_POOL_SCENARIO, STALL_EVERY_10_S),
        "easy": (tmp_path_factory.mktemp("easy"), EASY_SCENARIO, ("--latency-scale", "25"))})


@pytest.fixture(scope="module")
def stalled(runs) -> Path:
    return runs["stalled"]


def test_a_pool_too_small_for_the_stall_hides_it_from_raw_latency_only(stalled):
    (raw_p90,), (corrected_p90,) = (merged_ms(stalled, timing, 1, (90,)) for timing in ("histograms", "corrected"))
    # a fifth of all arrivals fall into a stall: from their intended start they wait up to 2 s
    assert corrected_p90 >= 500, corrected_p90
    # 50 users hold 50 of the ~200 stalled arrivals; the others are sent after the stall, and wait no more than
    # the backlog's drain (service times of 8 ms, a busy shared machine: roomy)
    assert raw_p90 < 300 and corrected_p90 > 3 * raw_p90, (raw_p90, corrected_p90)
    counts = stage_info(stalled, 1)["open_model"]
    assert counts["rate"] == 100 and counts["max_users"] == 50 and counts["arrivals"] == "constant"
    # the ~150 arrivals of the stall that found no free user started late
    assert counts["late"] >= 100 and counts["max_lateness_ms"] >= 1000 and counts["dropped"] == 0
    # the progress line (every 10 s when not on a terminal) says so while the stage runs
    lines = [line for line in (stalled.parent.parent / "progress.txt").read_text().splitlines()
             if line.startswith("stage 1/2 open-small-pool [steady]")]
    shown = [re.search(r"\| open 100/s: (\d+) started, (\d+) late, (\d+) dropped \(pool 50\)$", line) for line in lines]
    assert lines and all(shown), lines
    assert max(int(match.group(2)) for match in shown) <= counts["late"]


def test_a_pool_large_enough_shows_the_stall_in_raw_and_corrected_alike(runs):
    raw, corrected = (merged_ms(runs["large"], timing, 1, (50, 90)) for timing in ("histograms", "corrected"))
    assert raw[1] >= 500 and corrected[1] >= 500, (raw, corrected)
    assert corrected[1] == pytest.approx(raw[1], rel=0.25)
    assert stage_info(runs["large"], 1)["open_model"]["arrivals"] == "poisson"


def test_a_closed_stage_at_the_same_throughput_sees_less_of_the_stall(stalled):
    summary = pd.read_csv(stalled / "summary.csv")
    steady = summary[summary.phase == "steady"]
    throughput = steady.groupby("stage").rps.sum()
    assert 0.6 * throughput[1] <= throughput[2] <= 1.5 * throughput[1], throughput  # about the same load...
    (closed_p90,) = merged_ms(stalled, "histograms", 2, (90,))
    (open_p90,) = merged_ms(stalled, "corrected", 1, (90,))
    assert closed_p90 < 300 and open_p90 > 3 * closed_p90, (closed_p90, open_p90)  # ...far less of the stall
    # a closed stage has no corrected figures, and no schedule in run.json
    assert steady[steady.stage == 2][["p95_corrected_ms", "p99_corrected_ms"]].isna().all().all()
    assert steady[steady.stage == 1][["p95_corrected_ms", "p99_corrected_ms"]].notna().all().all()
    assert "open_model" not in stage_info(stalled, 2)


def test_criteria_judge_corrected_timing_and_the_report_shows_both(stalled, tmp_path):
    slo = tmp_path / "open.yaml"
    slo.write_text("""
name: open
criteria:
  - {name: corrected p90, metric: p90_ms, endpoint: all, timing: corrected, critical: "> 500 ms"}
  - {name: raw p90, metric: p90_ms, endpoint: all, stage: 1, critical: "> 500 ms"}
""")
    done = subprocess.run([MEDIANEST_LOAD, "analyze", str(stalled), "--slo", str(slo), "--out", str(tmp_path / "out")],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=240)
    assert done.returncode == 1, done.stdout + done.stderr
    criteria = {c["name"]: c for c in json.loads((tmp_path / "out" / "verdict.json").read_text())["criteria"]}
    checks = {check["stage"]: check for check in criteria["corrected p90"]["checks"]}
    # the exact merged corrected p90 of the open stage
    assert checks[1]["value"] == pytest.approx(merged_ms(stalled, "corrected", 1, (90,))[0])
    assert checks[1]["status"] == "FAIL"
    assert checks[2]["status"] == "NO_DATA" and "closed-model stage" in checks[2]["note"]
    assert criteria["raw p90"]["status"] == "PASS"
    assert criteria["raw p90"]["value"] == pytest.approx(merged_ms(stalled, "histograms", 1, (90,))[0])
    report = (tmp_path / "out" / "report.md").read_text()
    section = report.split("## Open-model stages: raw and corrected latency")[1].split("## ")[0]
    late = stage_info(stalled, 1)["open_model"]["late"]
    row = next(line for line in section.splitlines() if line.startswith("| 1 open-small-pool"))
    assert f"| {late} |" in row and "constant" in row and "p95 corrected" in section


def test_at_an_easy_rate_corrected_and_raw_agree_and_the_rate_is_met(runs):
    folder = runs["easy"]
    raw, corrected = (merged_ms(folder, timing, 1, (50, 90, 95)) for timing in ("histograms", "corrected"))
    assert corrected == pytest.approx(raw, rel=0.05), (raw, corrected)
    info = stage_info(folder, 1)
    seconds = info["steady_end"] - info["steady_start"]
    achieved = info["open_model"]["iterations"] / seconds  # iterations started in the steady phase
    assert achieved == pytest.approx(40, rel=0.02), achieved
    assert info["open_model"]["dropped"] == 0
    # and answered: all but those in flight at the end of the phase (about 0.2 s x 40/s)
    summary = pd.read_csv(folder / "summary.csv")
    answered = summary[(summary.stage == 1) & (summary.phase == "steady")].requests.sum()
    assert 0.95 * 40 * seconds <= answered <= info["open_model"]["iterations"]


def stage_info(folder: Path, stage: int) -> dict:
    return next(s for s in json.loads((folder / "run.json").read_text())["stages"] if s["index"] == stage)


@pytest.mark.parametrize("stage, field, expected", [
    ("{rate: 800/s, hold: 10s}", "stages[0].max_users", "required"),
    ("{rate: fast, max_users: 10, hold: 10s}", "stages[0].rate", "'800/s'"),
    ("{rate: 0/s, max_users: 10, hold: 10s}", "stages[0].rate", "greater than 0 and at most 100,000 iterations/s"),
    ("{rate: 2000000/s, max_users: 10, hold: 10s}", "stages[0].rate", "at most 100,000 iterations/s"),
    ("{rate: 5/s, max_users: 10, users: 10, hold: 10s}", "stages[0].users", "max_users is its pool"),
    ("{rate: 5/s, max_users: 10, hold: 10s, arrivals: bursty}", "stages[0].arrivals", "constant, poisson"),
    ("{users: 10, max_users: 10, hold: 10s}", "stages[0].max_users", "a rate beside it"),
])
def test_open_stage_mistakes_are_one_line(stage, field, expected):
    data = {"name": "x", "host": "http://127.0.0.1:8080", "mix": {"health": 1}, "stages": [yaml.safe_load(stage)]}
    with pytest.raises(ScenarioError) as error:
        parse_scenario(data, "x.yaml")
    message = str(error.value)
    assert len(message.splitlines()) == 1 and message.startswith(f"x.yaml: {field}:") and expected in message, message


def test_rates_are_read_per_second():
    data = {"name": "x", "host": "http://127.0.0.1:8080", "mix": {"health": 1},
            "stages": [{"rate": "600/m", "max_users": 20, "hold": "10s"}, {"rate": 12.5, "max_users": 20, "hold": 5},
                       {"users": 3, "hold": 5}]}
    stages = parse_scenario(data, "x.yaml").stages
    assert [(s.rate, s.users, s.is_open) for s in stages] == [(10.0, 20, True), (12.5, 20, True), (None, 3, False)]


def test_the_open_scenarios_carry_the_audit_rate():
    """stress-1000-open: stress-1000's stages and holds, with the audit's 847 req/s (at 1,000 users) as the top
    arrival rate and the user counts as pools; spike-open: the spike's shape at the same rates."""
    closed, open_ = load_named(SCENARIO, "stress-1000"), load_named(SCENARIO, "stress-1000-open")
    assert [(s.hold_s, s.ramp_s) for s in open_.stages] == [(s.hold_s, s.ramp_s) for s in closed.stages]
    assert [s.users for s in open_.stages] == [s.users for s in closed.stages] and open_.mix == closed.mix
    assert [s.rate for s in open_.stages] == [212, 424, 847] and all(s.is_open for s in open_.stages)
    spike = load_named(SCENARIO, "spike-open")
    assert [s.rate for s in spike.stages] == [85, 847, 85] and spike.stages[1].arrivals == "poisson"
    assert [s.hold_s for s in spike.stages] == [s.hold_s for s in load_named(SCENARIO, "spike").stages]


@pytest.mark.parametrize("criterion, expected", [
    ("{name: a, metric: avg_ms, timing: corrected, critical: '> 1 s'}", "expected one of p50_ms, p90_ms, p95_ms, p99_ms"),
    ("{name: a, metric: p95_ms, timing: corrected, for: 10s, critical: '> 1 s'}", "without for"),
    ("{name: a, metric: p95_ms, timing: intended, critical: '> 1 s'}", "expected raw (the default) or corrected"),
])
def test_timing_mistakes_are_one_line(tmp_path, criterion, expected):
    slo = tmp_path / "bad.yaml"
    slo.write_text(f"name: x\ncriteria:\n  - {criterion}\n")
    with pytest.raises(SloError) as error:
        load_named(SLO, str(slo))
    message = str(error.value)
    assert len(message.splitlines()) == 1 and "criteria[0].timing" in message and expected in message, message


def test_a_pool_exhausted_for_long_drops_what_it_cannot_start_and_counts_it():
    """The schedule on its own, with a clock that jumps: what a pool busy for 15 s (at 10 arrivals/s) leaves."""
    now = [100.0]
    schedule = ArrivalSchedule(clock=lambda: now[0])
    schedule.start(stage=2, rate=10, arrivals="constant", max_users=5)
    assert schedule.next_iteration() == {LATENESS: 0.0, OPEN_STAGE: 2}  # due now: on time
    now[0] += 15  # every user busy for 15 s: 150 arrivals came due meanwhile
    context = schedule.next_iteration()
    counts = schedule.counts[2]
    # those due more than DROP_AFTER_S (10 s) ago are dropped (100.1 s ... 104.9 s: 49); the first one kept (105 s)
    # starts 10 s late, and counts as late
    assert counts.dropped == 49 and context[LATENESS] == pytest.approx(DROP_AFTER_S * 1000)
    assert (counts.iterations, counts.late) == (2, 1) and counts.max_lateness_ms == pytest.approx(DROP_AFTER_S * 1000)
    schedule.release()  # a closed stage next: users go back to thinking
    assert not schedule.paces_users and schedule.next_iteration() is None
