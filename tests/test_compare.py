"""compare's three outcomes on synthetic runs: results folders written by the recorder's own on_request / write
with a simulated clock (as benchmarks/bench_analysis.py does), so that many clean pairs can be judged in seconds.
Latencies are lognormal and every second carries a shared, autocorrelated load factor: the kind of series that
makes a test on raw samples flag clean pairs. The real-run comparisons are in test_analysis.py."""

import itertools
import json
from dataclasses import replace
from pathlib import Path

import numpy as np

from analysis.compare import INSUFFICIENT, REGRESSION, Thresholds, compare_runs
from analysis.load import load_run
from medianest_load.failures import HttpServerError
from medianest_load.recorder import Recorder
from medianest_load.vocabulary import CompareOutcome, ExitCode

# endpoint -> (request_type, name, median ms, lognormal spread, share of requests)
TRAFFIC = [("GET", "/api/v1/health", 8, 0.4, 0.2), ("GET", "/api/v1/dashboard/stats", 40, 0.6, 0.4),
           ("GET", "/api/v1/media/search", 30, 0.5, 0.3), ("POST", "/api/v1/media/upload", 90, 0.7, 0.1)]
STAGES = (("warm", 20), ("peak", 40))  # users; the request rate follows them


class Clock:
    def __init__(self, start: float) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now


def synthetic_run(folder: Path, seed: int, steady_s: int = 40, slower: float = 1.0, error_rate: float = 0.002) -> Path:
    """A two-stage results folder; `slower` multiplies every latency, `error_rate` is each request's chance to fail."""
    rng = np.random.default_rng(seed)
    clock = Clock(1_760_000_000.0)
    recorder = Recorder(clock=clock)
    shares = np.array([row[4] for row in TRAFFIC])
    stages, load = [], 1.0
    for index, (name, users) in enumerate(STAGES, start=1):
        stage = {"index": index, "name": name, "users": users, "spawn_rate": users / 2.0, "planned_hold_s": steady_s}
        for phase, seconds in (("ramp", 2), ("steady", steady_s)):
            recorder.enter(index, name, users, phase)
            stage[f"{phase}_start"] = clock.now
            for _ in range(seconds):
                load = 1 + 0.7 * (load - 1) + rng.normal(0, 0.08)  # autocorrelated from second to second
                for (request_type, route, median, spread, _), count in zip(TRAFFIC, rng.poisson(users * shares), strict=True):
                    times = rng.lognormal(np.log(median * slower * max(load, 0.5)), spread, count)
                    failed = rng.random(count) < error_rate
                    for value, failure in zip(times.tolist(), failed.tolist(), strict=True):
                        recorder.on_request(request_type, route, value, 500, HttpServerError("HTTP 500") if failure else None)
                clock.now += 1.0
                recorder.close_second(users)
        stage["steady_end"] = clock.now
        stages.append(stage)
    recorder.finish()
    recorder.write(folder)
    info = {"scenario_name": "synthetic", "target_profile": "reference", "time_scale": 1.0, "status": "completed",
            "stages": stages}
    (folder / "run.json").write_text(json.dumps(info))
    return folder


def test_clean_pairs_are_never_flagged_and_are_judged_in_full(tmp_path):
    """Every pair of 8 clean runs (28 pairs, fixed seeds: the test is deterministic): no regression in any, and
    every one NO REGRESSION, exit 0. By design the chance of any false flag in one pair is below alpha = 1 %
    (Holm per family); the practical thresholds make it smaller still."""
    runs = [load_run(synthetic_run(tmp_path / f"run{seed}", seed=100 + seed)) for seed in range(8)]
    outcomes, tested = set(), 0
    for base, candidate in itertools.combinations(runs, 2):
        comparison = compare_runs(base, candidate)
        assert comparison.regressions.empty, comparison.regressions
        outcomes.add((comparison.outcome, comparison.exit_code))
        tested += int(comparison.table["p_worse"].notna().sum())
    assert outcomes == {(CompareOutcome.NO_REGRESSION, ExitCode.OK)}
    assert tested > 28 * 20  # the stage-level rows and most endpoint rows were tested, not skipped


def test_the_same_generator_made_slower_and_failing_is_flagged(tmp_path):
    """The check above can fail: twice as slow with 3 % errors is a regression in p95 and in the error rate."""
    base = load_run(synthetic_run(tmp_path / "base", seed=1))
    candidate = load_run(synthetic_run(tmp_path / "candidate", seed=2, slower=2.0, error_rate=0.03))
    comparison = compare_runs(base, candidate)
    assert comparison.outcome == CompareOutcome.REGRESSION and comparison.exit_code == ExitCode.FAILED
    flagged = comparison.regressions
    stage_level = flagged[flagged["endpoint"] == "ALL"]
    assert set(zip(stage_level["stage"], stage_level["metric"], strict=True)) >= {
        (1, "p95_ms"), (2, "p95_ms"), (1, "error_rate"), (2, "error_rate")}


def test_a_pair_too_short_is_inconclusive_and_says_what_it_needs(tmp_path):
    base = load_run(synthetic_run(tmp_path / "base", seed=3, steady_s=5))
    candidate = load_run(synthetic_run(tmp_path / "candidate", seed=4, steady_s=5))
    comparison = compare_runs(base, candidate)
    assert comparison.outcome == CompareOutcome.INCONCLUSIVE and comparison.exit_code == ExitCode.INCONCLUSIVE
    undecided = comparison.undecided
    # every stage-level latency and throughput row: 5 one-second windows where 8 are needed
    stage_level = undecided[undecided["endpoint"] == "ALL"]
    assert set(zip(stage_level["stage"], stage_level["metric"], strict=True)) == {
        (s, m) for s in (1, 2) for m in ("p95_ms", "p99_ms", "rps")}
    assert (stage_level["needs"].str.contains("5 of 8 windows of 1 s")).all()
    assert (stage_level["needs"].str.contains(r"at least 8 s in both runs \(now 5 s\)")).all()
    # the error rate is judged on the totals all the same (Fisher's exact test): never "too few windows"
    assert not (undecided["metric"] == "error_rate").any()
    assert comparison.table.loc[comparison.table["metric"] == "error_rate", "p_worse"].notna().all()

    assert replace(comparison, allow_inconclusive=True).exit_code == ExitCode.OK


def test_auto_window_is_the_largest_that_gives_enough_windows(tmp_path):
    base = load_run(synthetic_run(tmp_path / "base", seed=5, steady_s=40))
    candidate = load_run(synthetic_run(tmp_path / "candidate", seed=6, steady_s=33))
    table = compare_runs(base, candidate).table
    # 33 steady seconds in the shorter run: 4-s windows give 8 (the last one 1 s short, still over half a window)
    assert set(table["window_s"]) == {4}
    fixed = compare_runs(base, candidate, Thresholds(window_s=10)).table
    assert set(fixed["window_s"]) == {10} and (fixed.loc[fixed["endpoint"] == "ALL", "verdict"] == INSUFFICIENT).any()
    assert not (fixed["verdict"] == REGRESSION).any()
