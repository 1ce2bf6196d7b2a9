"""The stage gate's interface (analysis/gate.py): a finished stage judged from the recorder's plain snapshot,
on samples fed through the Recorder with a fake clock."""

from pathlib import Path

import yaml

from analysis.gate import LiveGate
from medianest_load.failures import HttpServerError
from medianest_load.recorder import Recorder

ENDPOINTS = (("GET", "/api/v1/health"), ("GET", "/api/v1/dashboard/stats"))


class Clock:
    def __init__(self) -> None:
        self.now = 1_760_000_000.0

    def __call__(self) -> float:
        return self.now


def record_stage(recorder: Recorder, clock: Clock, stage: int, latency_ms: tuple[float, float], failing: float,
                 seconds: int = 5, per_second: int = 40) -> None:
    """One stage: a 1-second ramp, then `seconds` of steady traffic on both endpoints; `latency_ms` per endpoint,
    `failing` the share of the dashboard's samples that fail with HTTP 503."""
    for phase, length in (("ramp", 1), ("steady", seconds)):
        recorder.enter(stage, f"stage-{stage}", 10 * stage, phase)
        for _ in range(length):
            for (request_type, name), latency in zip(ENDPOINTS, latency_ms, strict=True):
                failures = round(per_second * failing) if name.endswith("stats") else 0
                for sample in range(per_second):
                    error = HttpServerError("HTTP 503") if sample < failures else None
                    recorder.on_request(request_type, name, latency, 100, error)
            clock.now += 1.0
            recorder.close_second(10 * stage)


def slo_file(folder: Path, *criteria: dict) -> Path:
    path = folder / "gate.yaml"
    path.write_text(yaml.safe_dump({"name": "gate", "criteria": list(criteria)}))
    return path


ERROR_RATE = {"name": "API error rate", "metric": "error_rate", "endpoint": "api", "critical": "> 2 %", "abort": True}
P95 = {"name": "API p95", "metric": "p95_ms", "endpoint": "api", "critical": "> 100 ms", "abort": True}


def test_a_stage_that_fails_an_abort_criterion_stops_the_run_and_a_passing_one_goes_on(tmp_path):
    clock = Clock()
    recorder = Recorder(clock=clock)
    record_stage(recorder, clock, 1, (10, 20), failing=0.0)
    record_stage(recorder, clock, 2, (10, 20), failing=0.25)
    gate = LiveGate.load(slo_file(tmp_path, ERROR_RATE))

    assert gate.decide(1, recorder.live_snapshot(1)) is None
    reason = gate.decide(2, recorder.live_snapshot(2))
    assert reason is not None and reason.startswith("aborted by API error rate 12.50 % (> 2 %) at stage 2"), reason


def test_the_snapshot_carries_the_judged_stages_histograms_for_exact_merged_percentiles(tmp_path):
    clock = Clock()
    recorder = Recorder(clock=clock)
    record_stage(recorder, clock, 1, (10, 20), failing=0.0)
    record_stage(recorder, clock, 2, (10, 400), failing=0.0)  # half of the API samples are slow: p95 is 400 ms
    snapshot = recorder.live_snapshot(2)
    assert {stage for stage, _, _ in snapshot.histograms} == {2} and snapshot.histograms.keys() == snapshot.ok_histograms.keys()
    assert {row["stage"] for row in snapshot.summary_rows} == {1, 2}

    gate = LiveGate.load(slo_file(tmp_path, P95))
    assert gate.decide(1, recorder.live_snapshot(1)) is None
    reason = gate.decide(2, snapshot)
    assert reason is not None and reason.startswith("aborted by API p95 40"), "merged exactly from both endpoints"
    # a stage the load generator limited says nothing of MediaNest's latency: inconclusive, never a stop
    assert gate.decide(2, snapshot, generator_limited="local: CPU 99 %") is None


def test_stop_on_failed_stage_stops_on_any_failed_criterion(tmp_path):
    clock = Clock()
    recorder = Recorder(clock=clock)
    record_stage(recorder, clock, 1, (10, 400), failing=0.0)
    slo = slo_file(tmp_path, {**P95, "abort": False})
    assert LiveGate.load(slo).decide(1, recorder.live_snapshot(1)) is None, "no criterion carries abort"
    assert LiveGate.load(slo, stop_on_failed_stage=True).decide(1, recorder.live_snapshot(1)) == \
        "stage 1 failed API p95 (stop_on_failed_stage)"


def test_sustained_windows_are_judged_from_the_flushed_series(tmp_path):
    clock = Clock()
    recorder = Recorder(clock=clock)
    record_stage(recorder, clock, 1, (10, 20), failing=0.25, seconds=6)
    gate = LiveGate.load(slo_file(tmp_path, {**ERROR_RATE, "for": "4s"}))
    assert gate.needs_series and not LiveGate.load(slo_file(tmp_path, ERROR_RATE)).needs_series

    assert gate.decide(1, recorder.live_snapshot(1)) is None, "without the series a window cannot be judged"
    recorder.write(tmp_path)
    reason = gate.decide(1, recorder.live_snapshot(1), timeseries=tmp_path / "timeseries.csv")
    assert reason is not None and reason.startswith("aborted by API error rate"), reason
