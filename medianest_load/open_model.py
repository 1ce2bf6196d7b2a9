"""Open-model stages: iterations start at a fixed arrival rate, whatever the server does, from a pool of users.

A closed-loop user waits for its answer before it sends again, so a server that stalls is sampled less while it
stalls (coordinated omission, docs/scenarios.md). In an open stage every iteration (one task of a user, across
the mix) has an intended start time from a schedule (`constant`: every 1/rate s; `poisson`: exponential gaps of
mean 1/rate). A free pool user claims the next intended time, sleeps until it, and runs one task. When every
user is busy, the times pile up behind the clock and the next free user starts them late, in order: the
iteration's latency is then recorded twice, from the intended start ("corrected", what an arriving user would
see) and from the actual send ("raw"). Late starts (more than LATE_AFTER_S) and dropped iterations (still
unstarted DROP_AFTER_S after their time: the pool is exhausted) are counted per stage: they are a generator or
pool limit, never MediaNest's doing.

The schedule holds two numbers (the next intended time and the rate), never a queue: memory stays constant.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import gevent
from gevent.event import Event

LATE_AFTER_S = 0.05   # an iteration that starts more than this after its intended time is late
DROP_AFTER_S = 10.0   # ... and one not started this long after it is dropped (the pool is exhausted)
# the request context of an open-model iteration: its lateness, and the stage whose schedule it belongs to (an
# iteration still running when the next stage begins is not corrected there: a closed stage has no schedule)
LATENESS, OPEN_STAGE = "lateness_ms", "open_stage"


@dataclass
class ArrivalCounts:
    """What the schedule did in one stage."""

    rate: float
    arrivals: str
    max_users: int
    iterations: int = 0   # started, late or not
    late: int = 0         # started more than LATE_AFTER_S after their intended time
    dropped: int = 0      # never started: DROP_AFTER_S behind the schedule
    max_lateness_ms: float = 0.0


class ArrivalSchedule:
    """The intended start times of the current open stage, claimed one by one by free pool users."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.counts: dict[int, ArrivalCounts] = {}
        self._stage: int | None = None   # the open stage whose arrivals run (None: closed, or an open ramp)
        self._paces = False              # whether users take their pace from the schedule (open stage, ramp too)
        self._next = 0.0
        self._rng = random.Random()
        self._running = Event()

    @property
    def paces_users(self) -> bool:
        return self._paces

    def hold(self) -> None:
        """An open stage's ramp: users wait for the schedule instead of thinking; nothing arrives yet."""
        self._paces, self._stage = True, None
        self._running.clear()

    def release(self) -> None:
        """A closed stage: users think again; any user waiting for an arrival goes back to its think time."""
        self._paces, self._stage = False, None
        self._running.set()

    def start(self, stage: int, rate: float, arrivals: str, max_users: int) -> None:
        """The open stage's steady phase: arrivals from now on, `rate` iterations per second."""
        self.counts[stage] = ArrivalCounts(rate, arrivals, max_users)
        self._paces, self._stage, self._next = True, stage, self.clock()
        self._running.set()

    def stage_counts(self, stage: int) -> dict[str, Any]:
        return asdict(self.counts[stage]) if stage in self.counts else {}

    def next_iteration(self) -> dict[str, float] | None:
        """Block until this user's next arrival (None when the run has moved to a closed stage); the request
        context of the iteration: its lateness, which the recorder adds to every sample of it."""
        while self._paces:
            if self._stage is None:
                self._running.wait(1.0)
                continue
            stage = self._stage
            intended = self._claim(stage)
            delay = intended - self.clock()
            if delay > 0:
                gevent.sleep(delay)  # the user can be stopped here: it is in its wait state
            if self._stage != stage:
                continue  # the stage ended meanwhile: this arrival was past its end, it never happens
            lateness = max(self.clock() - intended, 0.0)
            counts = self.counts[stage]
            counts.iterations += 1
            if lateness > LATE_AFTER_S:
                counts.late += 1
                counts.max_lateness_ms = max(counts.max_lateness_ms, lateness * 1000)
            return {LATENESS: lateness * 1000, OPEN_STAGE: stage}
        return None

    def _claim(self, stage: int) -> float:
        """The next intended start; times further behind than DROP_AFTER_S are skipped and counted as dropped."""
        counts = self.counts[stage]
        behind = self.clock() - DROP_AFTER_S - self._next
        if behind > 0:
            skipped = math.ceil(behind * counts.rate - 1e-9)  # the arrivals due before now - DROP_AFTER_S
            counts.dropped += skipped
            self._next += skipped / counts.rate
        intended = self._next
        gap = 1 / counts.rate if counts.arrivals == "constant" else self._rng.expovariate(counts.rate)
        self._next += gap
        return intended
