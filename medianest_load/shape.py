"""The staged shape: each stage ramps to its users, then holds them for its full steady time.

A clock-based shape lets a slow ramp swallow a short stage (and the master's tick() waits for its ramp).
Here a stage's steady phase starts when its ramp is done (spawning_complete with the stage's user count,
or at the latest the first tick that finds the spawning greenlet finished, even if some users have died
since), and lasts its whole hold from then. An open-model stage's users are its pool: they fill during the
ramp, and its arrivals (medianest_load/open_model.py) run during its steady phase.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import gevent
from locust import LoadTestShape
from locust.runners import STATE_INIT, STATE_RUNNING, STATE_SPAWNING, Runner

from medianest_load.open_model import ArrivalSchedule
from medianest_load.recorder import Recorder
from medianest_load.results_format import RAMP, STEADY
from medianest_load.scenario import Stage

log = logging.getLogger(__name__)

# Locust polls a shape once a second, so each stage overran its hold by up to a second (a 2-s hold lasted 3.1 s);
# polled every 0.1 s, a hold ends within 0.1 s of its time
SHAPE_POLL_S = 0.1

# Called when a stage's steady hold ends (every stage but the last, which the final analysis judges);
# returns why the run must stop, or None to go on.
StageGate = Callable[[int], str | None]


class StagedShape(LoadTestShape):
    def __init__(self, stages: tuple[Stage, ...], recorder: Recorder, stage_gate: StageGate | None = None,
                 arrivals: ArrivalSchedule | None = None):
        super().__init__()
        self.stages = stages
        self.recorder = recorder
        self.stage_gate = stage_gate
        self.arrivals = arrivals  # open-model stages: their users take their pace from it
        self.spawn_rates = [stage.spawn_rate_from(previous.users if previous else 0)
                            for previous, stage in zip((None, *stages[:-1]), stages, strict=True)]
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
            if self._ramp_done():
                self._enter_steady()
        elif time.monotonic() - self.steady_since >= self.stage.hold_s and not self._advance():
            return None
        return self.stage.users, self.spawn_rates[self.index]

    def mark_steady_if_reached(self, user_count: int = -1, **_: object) -> None:
        """spawning_complete listener: the steady phase starts the moment the ramp reaches the stage's users."""
        if self.index >= 0 and self.steady_since is None and user_count == self.stage.users:
            self._enter_steady()

    def _ramp_done(self) -> bool:
        """The stage's spawning (started after the previous tick) has finished, even if users died since."""
        spawning = getattr(self.runner, "spawning_greenlet", None)
        return spawning is None or spawning.dead

    def stop(self, reason: str) -> None:
        self.stop_reason = reason

    def _enter_steady(self) -> None:
        self.steady_since = time.monotonic()
        self.recorder.enter(self.index + 1, self.stage.name, self.stage.users, STEADY)
        if self.arrivals is not None and self.stage.rate is not None:  # an open stage
            self.arrivals.start(self.index + 1, self.stage.rate, self.stage.arrivals, self.stage.users)

    def _begin(self, index: int) -> None:
        self.index, self.steady_since = index, None
        self.recorder.enter(index + 1, self.stage.name, self.stage.users, RAMP)
        if self.arrivals is not None:
            # an open stage's pool fills during its ramp and waits; arrivals start with its steady phase
            if self.stage.is_open:
                self.arrivals.hold()
            else:
                self.arrivals.release()

    def _advance(self) -> bool:
        """The current stage's hold is over: gate it, then start the next one (False when the run ends)."""
        if self.index + 1 == len(self.stages):
            self.stop_reason = "completed"
            return False
        try:
            reason = self.stage_gate(self.index + 1) if self.stage_gate else None
        except Exception as error:  # noqa: BLE001 - a broken judgement must end the run, not kill the shape
            log.exception("stage gate failed")
            reason = f"the stage gate failed: {error}"
        if reason:
            self.stop_reason = reason
            return False
        self._begin(self.index + 1)
        return True


def poll_the_shape_finely(runner: Runner) -> None:
    """Install before `runner.start_shape()`: Locust's shape worker (locust/runners.py, 2.47), polling the shape
    every SHAPE_POLL_S instead of every second."""

    def shape_worker() -> None:
        shape = runner.environment.shape_class
        while runner.state in (STATE_INIT, STATE_SPAWNING, STATE_RUNNING):
            started = time.monotonic()
            current = shape.tick() if shape is not None else None
            if current is None:  # the shape's end: a headless run quits, one driven from the web UI stops
                options = runner.environment.parsed_options
                if options and options.headless:
                    runner.quit()
                else:
                    runner.stop()
                runner.shape_greenlet, runner.shape_last_tick = None, None
                return
            if current != runner.shape_last_tick:
                user_count, spawn_rate = current[:2]
                runner.start(user_count=user_count, spawn_rate=spawn_rate)
                runner.shape_last_tick = current
            gevent.sleep(max(SHAPE_POLL_S - (time.monotonic() - started), 0))

    vars(runner)["shape_worker"] = shape_worker  # this runner's, read by start_shape()
