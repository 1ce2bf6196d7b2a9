"""What judging produces: a Check per judged value, a CriterionResult per criterion, a Verdict per run. The status
words are medianest_load/vocabulary.py's; RANK orders them from no data to failure."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from analysis.criteria import Criterion, SloSet
from medianest_load.vocabulary import ExitCode, Status

PASS, WARN, FAIL, NO_DATA, INCONCLUSIVE = Status.PASS, Status.WARN, Status.FAIL, Status.NO_DATA, Status.INCONCLUSIVE
RANK: dict[str, int] = {NO_DATA: 0, PASS: 1, WARN: 2, INCONCLUSIVE: 3, FAIL: 4}


@dataclass(frozen=True)
class Check:
    """One judged value: one stage (or all stages merged) x one endpoint (or the merged selection)."""

    stage: int | None
    stage_name: str | None
    users: int | None
    endpoint: str
    status: str
    value: float | None
    requests: int
    sustained_s: float | None = None
    note: str = ""
    low: float | None = None  # interval metrics: the confidence interval of value
    high: float | None = None
    censored: bool = False  # the value is a lower bound: the percentile falls among timed-out samples

    @property
    def where(self) -> str:
        stage = "all stages" if self.stage is None else f"stage {self.stage} {self.stage_name} ({self.users} users)"
        return f"{stage}, {self.endpoint}"


@dataclass(frozen=True)
class CriterionResult:
    criterion: Criterion
    status: str
    checks: tuple[Check, ...]
    note: str = ""

    @property
    def worst(self) -> Check | None:
        """The check that decided the status (the most extreme value among the worst status)."""
        judged = [(check.value, check) for check in self.checks if check.status == self.status and check.value is not None]
        if not judged:
            return None
        sign = 1.0 if self.criterion.higher_is_worse else -1.0
        return max(judged, key=lambda judged_check: sign * judged_check[0])[1]

    @property
    def value(self) -> float | None:
        worst = self.worst
        return worst.value if worst else None

    @property
    def measured_text(self) -> str:
        worst = self.worst
        if worst is None:
            return "no data"
        text = self.criterion.format_value(worst.value)
        if worst.low is not None and worst.high is not None:
            text += (f" ({(self.criterion.confidence or 0):.0%} interval {self.criterion.format_value(worst.low)} to "
                     f"{self.criterion.format_value(worst.high)})")
        if worst.censored:
            text = f"≥ {text} (requests timed out)"
        if self.criterion.window_s and worst.sustained_s:
            text += f"; {worst.sustained_s:g} s in a row over a level"
        return text

    def to_dict(self) -> dict[str, Any]:
        worst = self.worst
        return {**self.criterion.to_dict(), "status": self.status, "value": self.value,
                "measured": self.measured_text, "where": worst.where if worst else None, "note": self.note,
                "checks": [check.__dict__ for check in self.checks]}


def worst_status(statuses: Sequence[str]) -> str:
    judged = [status for status in statuses if status != NO_DATA]
    return max(judged, key=RANK.__getitem__) if judged else NO_DATA


@dataclass(frozen=True)
class Verdict:
    slo: SloSet
    results: tuple[CriterionResult, ...]
    run_name: str = ""
    run_info: Mapping[str, Any] = field(default_factory=dict)
    server: Mapping[str, Any] = field(default_factory=dict)  # analysis.server.server_summary of the run

    @property
    def status(self) -> str:
        return worst_status([result.status for result in self.results])

    @property
    def exit_code(self) -> int:
        """0 when no criterion fails, 1 when one does or when nothing could be judged at all (a gate that
        measured nothing must not read as a pass), 3 when nothing fails but a judged stage was inconclusive."""
        if self.status in (FAIL, NO_DATA):
            return ExitCode.FAILED
        return ExitCode.INCONCLUSIVE if self.status == INCONCLUSIVE else ExitCode.OK

    @property
    def generator_notes(self) -> list[str]:
        """Why criteria are INCONCLUSIVE because of the generator, once each (banner, console)."""
        return list(dict.fromkeys(result.note for result in self.results
                                  if result.status == INCONCLUSIVE and "load generator" in result.note))

    def counts(self) -> dict[str, int]:
        return {status: sum(result.status == status for result in self.results) for status in RANK}

    @property
    def headline(self) -> str:
        counts = self.counts()
        parts = ", ".join(f"{counts[status]} {status}" for status in (FAIL, INCONCLUSIVE, WARN, PASS, NO_DATA)
                          if counts[status])
        return f"{self.status}: {self.slo.name} on {self.run_name or 'this run'} ({parts or 'no criteria'})"

    def to_dict(self) -> dict[str, Any]:
        return {"verdict": self.status, "exit_code": self.exit_code, "slo": self.slo.name, "slo_source": self.slo.source,
                "run": self.run_name, "scenario": self.run_info.get("scenario_name"),
                "run_status": self.run_info.get("status"), "stop_reason": self.run_info.get("stop_reason"),
                "counts": self.counts(), "criteria": [result.to_dict() for result in self.results],
                **({"server": dict(self.server)} if self.server else {})}
