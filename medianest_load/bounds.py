"""The one place where the harness's numeric and text limits live (docs/scenarios.md lists them).

A number outside these bounds is a typo or a unit mistake, never a plan: `hold: .inf` or `users: 1e9`
would pass a plain type check and then hang or starve the run. Scenario parsing, `--time-scale`, the
scaled scenario and the target profile all check against the same Bound objects.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

DAY_S = 86_400.0


@dataclass(frozen=True)
class Bound:
    """A closed (or, with low_open, half-open) range of finite numbers, and how to say it in an error."""

    low: float
    high: float = math.inf  # inf: no upper bound
    unit: str = ""
    low_open: bool = False

    def holds(self, value: Any) -> bool:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            return False
        above = value > self.low if self.low_open else value >= self.low
        return above and value <= self.high

    @property
    def text(self) -> str:
        low = f"greater than {_number(self.low)}" if self.low_open else f"at least {_number(self.low)}"
        if math.isinf(self.high):
            return f"{low}{self.unit}"
        return f"{low} and at most {_number(self.high)}{self.unit}"


def _number(value: float) -> str:
    return f"{value:,.0f}" if float(value).is_integer() else f"{value:g}"


HOLD_S = Bound(0, 7 * DAY_S, " s (7 days)", low_open=True)
RAMP_S = Bound(0, 7 * DAY_S, " s (7 days)")
USERS = Bound(1, 1_000_000)
SPAWN_RATE = Bound(0, 10_000, " users/s", low_open=True)
ARRIVAL_RATE = Bound(0, 100_000, " iterations/s", low_open=True)  # an open-model stage's rate
TIME_SCALE = Bound(0.001, 1000)
THINK_S = Bound(0, 3600, " s (1 hour)")
TIMEOUT_S = Bound(0, 3600, " s (1 hour)", low_open=True)
SOCKET_SESSION_S = Bound(0, DAY_S, " s (1 day)", low_open=True)
MIX_WEIGHT = Bound(0, 1_000_000)
STAGES = Bound(1, 1000, " stages")
BROWSERS = Bound(0, 8, " (each browser user is a real Chromium: a few, never a crowd)")
HOLDOUT = Bound(0, 999, " stages")  # capacity projection: stages held out of the fit to check it
# The whole planned run, after --time-scale: a ramp plus a hold per stage may not add up to months.
PLANNED_S = Bound(0, 31 * DAY_S, " s (31 days)")
SCRAPE_INTERVAL_S = Bound(0.2, 3600, " s (1 hour)")  # faster would load /metrics more than the users do
CONTAINER_LIMIT_MB = Bound(0, 10_000_000, " MB (10 TB)", low_open=True)

DESCRIPTION_CHARS = 2000
TEXT_CHARS = 1000  # any other text field: a host URL, a file path, a stage name
NAME_CHARS = 100  # the scenario's name, which names the results folder (file names stop at 255 bytes)
