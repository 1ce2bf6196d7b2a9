"""The harness's status words and exit codes, in one place: the CLI, the runner, junit, the report and compare
all speak them. StrEnum members compare equal to their plain strings, so files written earlier still read."""

from __future__ import annotations

from enum import IntEnum, StrEnum


class Status(StrEnum):
    """A criterion's (and a verdict's) outcome. NO_DATA: nothing to measure. INCONCLUSIVE: something was measured,
    but under conditions that say nothing about MediaNest (a saturated generator, censored timeouts)."""

    PASS = "PASS"
    WARN = "WARN"
    FAIL = "FAIL"
    NO_DATA = "NO_DATA"
    INCONCLUSIVE = "INCONCLUSIVE"


class RunStatus(StrEnum):
    RUNNING = "running"
    COMPLETED = "completed"
    INTERRUPTED = "interrupted"  # Ctrl-C or SIGTERM
    ABORTED = "aborted"  # a gate, the deadline or an internal error stopped it before its plan ended
    DEGRADED = "degraded"  # completed, but part of the generator (a worker) was lost on the way


class CompareOutcome(StrEnum):
    REGRESSION = "REGRESSION"
    NO_REGRESSION = "NO REGRESSION"
    INCONCLUSIVE = "INCONCLUSIVE"


class ExitCode(IntEnum):
    OK = 0  # nothing fails / no regression
    FAILED = 1  # a criterion fails / a regression / nothing could be judged at all
    USAGE = 2  # a user mistake, reported in one line
    INCONCLUSIVE = 3  # nothing failed, but something judged could not be decided (see Status.INCONCLUSIVE)
    INTERRUPTED = 130  # the shell's convention for a run ended by Ctrl-C: never mistaken for a pass
