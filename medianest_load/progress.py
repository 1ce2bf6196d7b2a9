"""One status line a second while a run goes: stage i of n, users, req/s, p95, errors, time left."""

from __future__ import annotations

import sys
import time
from typing import TextIO

from medianest_load.open_model import ArrivalSchedule
from medianest_load.recorder import Recorder
from medianest_load.results_format import TIMESERIES_COLUMNS
from medianest_load.scenario import Scenario
from medianest_load.shape import StagedShape

WINDOW_S = 5  # rates and p95 over the last few seconds: steadier than one second, still live
INTERVAL, REQUESTS, FAILURES, P95 = (TIMESERIES_COLUMNS.index(c) for c in ("interval_s", "requests", "failures", "p95_ms"))


class Progress:
    def __init__(self, scenario: Scenario, enabled: bool = True, stream: TextIO = sys.stderr):
        self.scenario = scenario
        self.enabled = enabled
        self.stream = stream
        self.interactive = stream.isatty()
        self.started = time.monotonic()
        self.last_printed = 0.0

    def update(self, recorder: Recorder, shape: StagedShape, users: int, arrivals: ArrivalSchedule | None = None) -> None:
        if not self.enabled or shape.index < 0:
            return
        now = time.monotonic()
        if not self.interactive and now - self.last_printed < 10:
            return
        self.last_printed = now
        line = self.describe(recorder, shape, users) + self.open_model(shape, arrivals)
        if self.interactive:
            self.stream.write("\r\033[K" + line)
        else:
            self.stream.write(line + "\n")
        self.stream.flush()

    def describe(self, recorder: Recorder, shape: StagedShape, users: int) -> str:
        recent = list(recorder.recent_totals)[-WINDOW_S:]
        requests = sum(row[REQUESTS] for row in recent)
        failures = sum(row[FAILURES] for row in recent)
        p95s = [row[P95] for row in recent if row[P95] is not None]
        rate = requests / max(sum(row[INTERVAL] for row in recent), 1e-3)
        error_rate = 100 * failures / requests if requests else 0.0
        stage = shape.stage
        phase = "steady" if shape.steady_since is not None else "ramp"
        left = max(self.scenario.planned_duration_s() - (time.monotonic() - self.started), 0)
        p95 = f"{max(p95s):.0f} ms" if p95s else "-"
        return (f"stage {shape.index + 1}/{len(self.scenario.stages)} {stage.name} [{phase}] "
                f"users {users}/{stage.users} | {rate:.1f} req/s | p95 {p95} | errors {error_rate:.2f}% | "
                f"~{int(left // 60)}:{int(left % 60):02d} left")

    @staticmethod
    def open_model(shape: StagedShape, arrivals: ArrivalSchedule | None) -> str:
        """An open stage's generator limits so far: iterations started late, and dropped (pool exhausted)."""
        counts = arrivals.counts.get(shape.index + 1) if arrivals is not None and shape.stage.is_open else None
        if counts is None:
            return ""
        return (f" | open {counts.rate:g}/s: {counts.iterations} started, {counts.late} late, "
                f"{counts.dropped} dropped (pool {counts.max_users})")

    def close(self) -> None:
        if self.enabled and self.interactive:
            self.stream.write("\n")
            self.stream.flush()
