"""The staged shape: each stage ramps to its users, then holds them for its full steady time.

Locust does not call tick() while a ramp is still spawning, so a stage's clock would otherwise start during
its ramp and a slow ramp could swallow a short stage. Here a stage's steady phase starts only when the
runner reports its user count reached (spawning_complete, or the next tick), and lasts its whole hold.
"""

from __future__ import annotations

import time
from typing import Callable

from locust import LoadTestShape

from medianest_load.recorder import Recorder
from medianest_load.scenario import Stage

# Called when a stage's steady hold ends; returns why the run must stop (None to go on).
StageGate = Callable[[int], str | None]


class StagedShape(LoadTestShape):
    def __init__(self, stages: tuple[Stage, ...], recorder: Recorder, stage_gate: StageGate | None = None):
        super().__init__()
        self.stages = stages
        self.recorder = recorder
        self.stage_gate = stage_gate
        self.spawn_rates = [stage.spawn_rate_from(previous.users if previous else 0)
                            for previous, stage in zip((None, *stages[:-1]), stages)]
        self.index = -1
        self.steady_since: float | None = None
        self.stop_reason: str | None = None

    @property
    def stage(self) -> Stage:
        return self.stages[self.index]

    def tick(self) -> tuple[int, float] | None:
        if self.stop_reason:
            return None
        if self.index < 0:
            self._begin(0)
        elif self.steady_since is None:
            self.mark_steady_if_reached()
        elif time.monotonic() - self.steady_since >= self.stage.hold_s:
            if not self._advance():
                return None
        return self.stage.users, self.spawn_rates[self.index]

    def mark_steady_if_reached(self, **_: object) -> None:
        """Also a spawning_complete listener: the steady phase starts the moment the ramp is done."""
        if self.index >= 0 and self.steady_since is None and self.runner.user_count == self.stage.users:
            self.steady_since = time.monotonic()
            self.recorder.enter(self.index + 1, self.stage.name, self.stage.users, "steady")

    def stop(self, reason: str) -> None:
        self.stop_reason = reason

    def _begin(self, index: int) -> None:
        self.index, self.steady_since = index, None
        self.recorder.enter(index + 1, self.stage.name, self.stage.users, "ramp")

    def _advance(self) -> bool:
        """The current stage's hold is over: gate it, then start the next one (False when the run ends)."""
        reason = self.stage_gate(self.index + 1) if self.stage_gate else None
        if reason:
            self.stop_reason = reason
        elif self.index + 1 == len(self.stages):
            self.stop_reason = "completed"
        else:
            self._begin(self.index + 1)
            return True
        return False
