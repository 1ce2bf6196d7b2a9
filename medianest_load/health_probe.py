"""Generator health: can this process still measure MediaNest, or is it measuring itself?

A response that arrives while the event loop is busy is timed only when its greenlet runs again, so a
generator's own loop lag is added to every latency it reports. Each process (the single process, the master,
every worker) runs a probe greenlet that sleeps a fixed interval and records how much it overslept in an
HdrHistogram (corrected for the probe's own coordinated omission), and reads its own CPU %. One row a second
per process goes to results/generator.csv.

A stage is *generator-limited* when, in its steady phase, any process stays past a threshold for SUSTAINED_S
seconds in a row; the stage's latency and throughput criteria are then INCONCLUSIVE (docs/design.md). Below
that, each stage keeps every process's whole loop-lag histogram: its p95 bounds what the generator may have added
to the stage's latencies, and a latency that fails by less than that is INCONCLUSIVE too (analysis/judging.py).
"""

from __future__ import annotations

import csv
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gevent
import psutil
from hdrh.histogram import HdrHistogram

from medianest_load.results_format import GENERATOR_COLUMNS, STEADY

PROBE_INTERVAL_S = 0.01
PROBE_INTERVAL_US = int(PROBE_INTERVAL_S * 1e6)
# Thresholds (docs/design.md "Generator health"): a process that uses a whole core has no time left to take
# answers off the wire; a loop that wakes up 50 ms late adds up to 50 ms to the latencies it reports at that
# moment. A few hot seconds happen (a spawn burst, a neighbour on the machine); SUSTAINED_S of them in a row do not.
CPU_LIMIT_PCT = 90.0
LAG_P99_LIMIT_MS = 50.0
SUSTAINED_S = 5
MAX_LAG_US = 60_000_000
MASTER = "master"


def generator_thresholds() -> dict[str, float]:
    """The rule run.json records beside the per-stage flags, so that a saved folder says how it was judged."""
    return {"cpu_pct": CPU_LIMIT_PCT, "loop_lag_p99_ms": LAG_P99_LIMIT_MS, "sustained_s": SUSTAINED_S,
            "probe_interval_ms": PROBE_INTERVAL_S * 1000}


def lag_histogram() -> HdrHistogram:
    return HdrHistogram(1, MAX_LAG_US, 3)


@dataclass(frozen=True, kw_only=True)
class ProbeSample:
    """One second of one process: its CPU % and every oversleep of its probe (microseconds)."""

    cpu_pct: float
    lag: HdrHistogram

    @property
    def lag_p50_ms(self) -> float:
        return round(self.lag.get_value_at_percentile(50) / 1000, 3)

    @property
    def lag_p99_ms(self) -> float:
        return round(self.lag.get_value_at_percentile(99) / 1000, 3)


class LoopProbe:
    """The oversleep of a fixed gevent.sleep, and this process's CPU %, since the last sample."""

    def __init__(self) -> None:
        self.histogram = lag_histogram()
        self.process = psutil.Process()
        self.process.cpu_percent(None)  # the first call only starts psutil's interval
        self.asleep_since = time.perf_counter()
        self.greenlet = gevent.spawn(self._run)

    def _run(self) -> None:
        while True:
            self.asleep_since = time.perf_counter()
            gevent.sleep(PROBE_INTERVAL_S)
            overslept_us = (time.perf_counter() - self.asleep_since - PROBE_INTERVAL_S) * 1e6
            # corrected for the probe's own coordinated omission: a probe that overslept 200 ms woke once, but a
            # response arriving at any moment of those 200 ms waited too, for 200, 190, 180 ... ms
            self.histogram.record_corrected_value(min(max(int(overslept_us), 1), MAX_LAG_US), PROBE_INTERVAL_US)

    def sample(self) -> ProbeSample:
        """This process's CPU % and loop lag since the previous sample, and start a new interval. A probe that has
        not woken up since counts as late by as long as it has overslept so far."""
        cpu = self.process.cpu_percent(None)
        lag, self.histogram = self.histogram, lag_histogram()  # no yield in between: no oversleep is lost
        if not lag.get_total_count():
            lag.record_value(min(max(int((time.perf_counter() - self.asleep_since - PROBE_INTERVAL_S) * 1e6), 1), MAX_LAG_US))
        return ProbeSample(cpu_pct=round(cpu, 1), lag=lag)

    def stop(self) -> None:
        self.greenlet.kill(block=False)


@dataclass
class ProcessHealth:
    """One process during one stage's steady phase."""

    seconds: int = 0
    hot_run: int = 0
    longest_hot_run: int = 0
    peak_cpu_pct: float = 0.0
    peak_lag_p99_ms: float = 0.0
    hot_cpu_pct: float = 0.0  # the worst values among its hot seconds: what the reason quotes
    hot_lag_p99_ms: float = 0.0
    lag: HdrHistogram = field(default_factory=lag_histogram)  # every oversleep of the steady phase

    def add(self, cpu_pct: float, lag_p99_ms: float, lag: HdrHistogram | None = None) -> None:
        self.seconds += 1
        if lag is not None:
            self.lag.add(lag)
        self.peak_cpu_pct, self.peak_lag_p99_ms = max(self.peak_cpu_pct, cpu_pct), max(self.peak_lag_p99_ms, lag_p99_ms)
        if cpu_pct >= CPU_LIMIT_PCT or lag_p99_ms >= LAG_P99_LIMIT_MS:
            self.hot_run += 1
            self.longest_hot_run = max(self.longest_hot_run, self.hot_run)
            self.hot_cpu_pct, self.hot_lag_p99_ms = max(self.hot_cpu_pct, cpu_pct), max(self.hot_lag_p99_ms, lag_p99_ms)
        else:
            self.hot_run = 0

    @property
    def limited(self) -> bool:
        return self.longest_hot_run >= SUSTAINED_S

    @property
    def lag_p95_ms(self) -> float | None:
        return round(self.lag.get_value_at_percentile(95) / 1000, 3) if self.lag.get_total_count() else None

    def to_dict(self) -> dict[str, Any]:
        return {"seconds": self.seconds, "peak_cpu_pct": self.peak_cpu_pct, "peak_loop_lag_p99_ms": self.peak_lag_p99_ms,
                "loop_lag_p95_ms": self.lag_p95_ms, "longest_hot_s": self.longest_hot_run, "limited": self.limited}


@dataclass
class GeneratorLog:
    """Rows for generator.csv (appended, then forgotten: memory stays bounded) and per-stage aggregates."""

    rows: list[list[Any]] = field(default_factory=list)
    stages: dict[int, dict[str, ProcessHealth]] = field(default_factory=dict)
    _header_written: bool = False

    def add(self, process: str, stage: int, phase: str, users: int, sample: ProbeSample, at: float | None = None) -> None:
        self.rows.append([round(at or time.time(), 3), process, stage, phase, users, sample.cpu_pct, sample.lag_p50_ms,
                          sample.lag_p99_ms])
        if stage > 0 and phase == STEADY:
            self.stages.setdefault(stage, {}).setdefault(process, ProcessHealth()).add(sample.cpu_pct, sample.lag_p99_ms,
                                                                                        sample.lag)

    def write(self, folder: Path) -> None:
        path = folder / "generator.csv"
        with path.open("a" if self._header_written and path.exists() else "w", newline="") as handle:
            writer = csv.writer(handle)
            if not (self._header_written and path.exists()):
                writer.writerow(GENERATOR_COLUMNS)
                self._header_written = True
            writer.writerows(self.rows)
        self.rows = []

    def limited_reason(self, stage: int) -> str | None:
        """'worker 2: CPU 98 %, loop lag p99 250 ms' for each process that limited the stage, or None. A master
        times no request (its workers do), so its own health is recorded but never limits a stage."""
        processes = self.stages.get(stage, {})
        hot = [f"{name}: CPU {health.hot_cpu_pct:.0f} %, loop lag p99 {health.hot_lag_p99_ms:.0f} ms "
               f"({health.longest_hot_run} s in a row)" for name, health in sorted(processes.items())
               if health.limited and name != MASTER]
        return "; ".join(hot) or None

    def lag_p95_ms(self, stage: int) -> float | None:
        """The worst loop-lag p95 over the steady phase of the processes that timed requests (not a master's):
        about what the generator may have added to the stage's latencies (docs/design.md "Generator health")."""
        lags = [health.lag_p95_ms for name, health in self.stages.get(stage, {}).items() if name != MASTER]
        return max((lag for lag in lags if lag is not None), default=None)

    def stage_summary(self, stage: int) -> dict[str, Any]:
        """What run.json says of one stage's generator (capacity projection leaves flagged stages out)."""
        reason = self.limited_reason(stage)
        return {"generator_limited": reason is not None, "generator_reason": reason,
                "generator_lag_p95_ms": self.lag_p95_ms(stage),
                "generator": {name: health.to_dict() for name, health in sorted(self.stages.get(stage, {}).items())}}
