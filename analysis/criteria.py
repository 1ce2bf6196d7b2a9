"""The criteria language: parse one criterion, judge it on a run (or on one finished stage during a run).

Levels are fail conditions, as in Taurus: `warn: "> 200 ms"` means WARN when the measured value is above
200 ms, `critical: "> 500 ms"` means FAIL above 500 ms. A scope (endpoint selector x stage selector) picks
the summary rows of the judged phase (steady by default); the metric is computed per stage ("each"), merged
over stages ("all"), and per endpoint when `split: endpoint`. `for: 30s` judges the 1-second series instead:
a level counts only when it is violated for that many consecutive seconds. Anything without data is NO_DATA, never PASS.
docs/analysis.md is the user's reference.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pandas as pd

from analysis.load import (
    ALL_ENDPOINTS,
    CENSORED_COLUMNS,
    OK_PERCENTILE_COLUMNS,
    PERCENTILE_COLUMNS,
    RAMP,
    STEADY,
    Histograms,
    RunData,
    endpoint_kind,
    load_run,
)
from analysis.server import Telemetry, WindowValue, load_telemetry, server_summary, sustained_s, window_value
from medianest_load.bounds import DESCRIPTION_CHARS
from medianest_load.results_format import CORRECTED_COLUMNS, censored
from medianest_load.vocabulary import ExitCode, Status

PASS, WARN, FAIL, NO_DATA, INCONCLUSIVE = Status.PASS, Status.WARN, Status.FAIL, Status.NO_DATA, Status.INCONCLUSIVE
RANK: dict[str, int] = {NO_DATA: 0, PASS: 1, WARN: 2, INCONCLUSIVE: 3, FAIL: 4}
GENERATOR_BOUND = {"latency": "latencies", "rps": "rates"}  # metric families a saturated generator distorts
ALL_STAGES = 0  # the stage key of a value merged over every judged stage


class CriteriaError(ValueError):
    """A mistake in a criterion: `field` is its dotted path, the message says the value and what was expected."""

    def __init__(self, field_path: str, message: str):
        super().__init__(f"{field_path}: {message}")
        self.field_path, self.detail = field_path, message


@dataclass(frozen=True)
class Metric:
    name: str
    family: str              # latency | error_rate | success | rps | bundle | server (from telemetry.csv)
    column: str | None       # the summary column of a latency statistic
    unit: str                # ms | ratio | req/s | bytes
    default_endpoint: str
    in_series: bool          # whether the 1-second series carries it (for `for:` windows)


LATENCY_STATS = {"avg": "avg_ms", "min": "min_ms", **{key[:-3]: key for key in PERCENTILE_COLUMNS}, "max": "max_ms",
                 **{key[:-3]: key for key in OK_PERCENTILE_COLUMNS}}  # p95_ok: successful samples only
SERIES_LATENCY = {"avg_ms", "p95_ms", "max_ms"}
METRICS: dict[str, Metric] = {
    **{column: Metric(column, "latency", column, "ms", "all", column in SERIES_LATENCY) for column in LATENCY_STATS.values()},
    **{f"push_delay_{stat}_ms": Metric(f"push_delay_{stat}_ms", "latency", column, "ms", "SIO push *", column in SERIES_LATENCY)
       for stat, column in LATENCY_STATS.items()},
    "error_rate": Metric("error_rate", "error_rate", None, "ratio", "all", True),
    "connect_success": Metric("connect_success", "success", None, "ratio", "SIO connect *", True),
    "transaction_success": Metric("transaction_success", "success", None, "ratio", "TXN *", True),
    "rps": Metric("rps", "rps", None, "req/s", "http", True),
    "bundle_bytes": Metric("bundle_bytes", "bundle", None, "bytes", "PAGE * (first visit)", False),
    # server telemetry (analysis/server.py): judged on the scrapes of the judged phases, endpoint is ignored;
    # only cpu_pct takes `for` (consecutive scrape intervals over a level)
    **{name: Metric(name, "server", name, unit, "all", name == "cpu_pct") for name, unit in (
        ("memory_growth_mb_per_h", "MB/h"), ("memory_mb", "MB"), ("memory_pct_of_limit", "ratio"),
        ("event_loop_lag_p95_ms", "ms"), ("cpu_pct", "ratio"), ("cache_hit_ratio", "ratio"),
        ("db_connection_failures", "ratio"), ("scrape_success", "ratio"))},
}
INTERVAL_METRICS = {"memory_growth_mb_per_h"}  # judged by their confidence interval (key `confidence`)
UNITS: dict[str, dict[str, float]] = {
    "ms": {"": 1.0, "ms": 1.0, "s": 1000.0, "us": 0.001},
    "ratio": {"": 1.0, "%": 0.01},
    "req/s": {"": 1.0, "/s": 1.0, "rps": 1.0, "req/s": 1.0},
    "bytes": {"": 1.0, "b": 1.0, "kb": 1e3, "mb": 1e6, "gb": 1e9, "kib": 1024.0, "mib": 1024.0**2, "gib": 1024.0**3},
    "MB": {"": 1.0, "mb": 1.0, "gb": 1e3, "kb": 1e-3},
    "MB/h": {"": 1.0, "mb/h": 1.0, "mb/hour": 1.0},
}
GROUPS = {"all", "api", "http", "page", "sio", "txn", "browser"}
NOT_REQUEST_KINDS = ("txn", "browser")  # `all` leaves them out: they span or time requests counted already
GLOB_CHARACTERS = "*?["
STAGE_WORDS = {"each", "all", "peak"}
CRITERION_KEYS = {"name", "description", "metric", "endpoint", "stage", "split", "phase", "warn", "critical", "for", "abort",
                  "required", "min_requests", "timing", "confidence"}
# timing: corrected judges an open-model stage's latency from each iteration's intended start (docs/scenarios.md)
CORRECTED = {column.replace("_corrected", ""): column for column in CORRECTED_COLUMNS}
PHASES = {"steady": (STEADY,), "all": (RAMP, STEADY)}
_CONDITION = re.compile(r"^\s*(<=|>=|<|>)\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([A-Za-z%/]*)\s*$")
_DURATION = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*(ms|s|m|min|h)?\s*$")
USERS_PATTERN = re.compile(r"^\s*([0-9]+)\s*users?\s*$")


@dataclass(frozen=True)
class Condition:
    """One level: the measured value violates it when `value <op> limit` holds (limit in the metric's unit)."""

    op: str
    limit: float
    text: str

    @property
    def higher_is_worse(self) -> bool:
        return self.op in (">", ">=")

    def violated(self, values: Any) -> Any:
        values = np.asarray(values, dtype=float)
        with np.errstate(invalid="ignore"):
            result = {">": values > self.limit, ">=": values >= self.limit,
                      "<": values < self.limit, "<=": values <= self.limit}[self.op]
        return result & ~np.isnan(values)


@dataclass(frozen=True, kw_only=True)
class Criterion:
    name: str
    metric: Metric
    endpoint: tuple[str, ...]
    stage: str | int = "each"
    split_endpoint: bool = False
    warn: Condition | None = None
    critical: Condition | None = None
    window_s: float | None = None
    abort: bool = False
    required: bool = False
    description: str = ""
    min_requests: int = 1
    phases: tuple[str, ...] = (STEADY,)
    timing: str = "raw"  # corrected: from open-model iterations' intended starts
    confidence: float | None = None  # interval metrics: the confidence of the interval judged against the levels

    @property
    def endpoint_label(self) -> str:
        return ", ".join(self.endpoint)

    @property
    def stage_label(self) -> str:
        return f"stage {self.stage}" if isinstance(self.stage, int) else str(self.stage)

    @property
    def limits_text(self) -> str:
        parts = [f"warn {self.warn.text}" if self.warn else "", f"critical {self.critical.text}" if self.critical else ""]
        window = f" for {self.window_s:g} s" if self.window_s else ""
        return ", ".join(part for part in parts if part) + window

    def format_value(self, value: float | None) -> str:
        return format_value(value, self.metric.unit)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "metric": self.metric.name, "endpoint": list(self.endpoint), "stage": self.stage,
                "split": "endpoint" if self.split_endpoint else None, "warn": self.warn.text if self.warn else None,
                "critical": self.critical.text if self.critical else None, "for_s": self.window_s,
                "abort": self.abort, "required": self.required, "min_requests": self.min_requests,
                "phase": "steady" if self.phases == (STEADY,) else "all", "unit": self.metric.unit, "timing": self.timing,
                **({"confidence": self.confidence} if self.confidence is not None else {})}


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
        level = self.criterion.critical or self.criterion.warn
        if not judged or level is None:
            return None
        return max(judged, key=lambda judged_check: judged_check[0] if level.higher_is_worse else -judged_check[0])[1]

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


@dataclass(frozen=True)
class Evidence:
    """What criteria are judged on: summary rows of real stages, the stages, optionally the series and histograms."""

    summary: pd.DataFrame
    stages: pd.DataFrame              # indexed by stage: name, users, reached_steady
    timeseries: pd.DataFrame | None = None  # the series in memory: all of it, or its ALL rows when chunks are given
    histograms: Histograms | None = None
    # the whole series chunk by chunk (a results folder): `for:` windows aggregate it chunk by chunk, so a
    # week-long run is judged exactly without its millions of rows in memory
    series_chunks: Callable[[], Iterable[pd.DataFrame]] | None = None
    corrected: Histograms | None = None  # open-model stages' corrected histograms
    generator_limited: Mapping[int, str] = field(default_factory=dict)  # stage -> why (run.json stages)
    server: Telemetry | None = None  # telemetry.csv; None during a run (server criteria are judged at its end)

    def chunks(self) -> Iterable[pd.DataFrame]:
        return self.series_chunks() if self.series_chunks is not None else [self.timeseries]

    @classmethod
    def from_run(cls, run: RunData) -> Evidence:
        summary = run.summary[run.summary["stage"] > 0]
        stages = run.stages[["name", "users"]].assign(reached_steady=run.stages["steady_start"].notna())
        extra = summary.groupby("stage").agg(name=("stage_name", "first"), users=("users", "first"))
        extra["reached_steady"] = extra.index.isin(run.steady["stage"].unique())
        stages = pd.concat([stages, extra[~extra.index.isin(stages.index)]]).sort_index()
        return cls(summary, stages, run.overview, run.histograms, run.series_chunks, run.corrected,
                   generator_limited_stages(run.stages), load_telemetry(run))


def generator_limited_stages(stages: pd.DataFrame) -> dict[int, str]:
    """{stage: reason} of the stages run.json flags as generator-limited (docs/design.md)."""
    if "generator_limited" not in stages:
        return {}
    flagged = stages[stages["generator_limited"].fillna(False).astype(bool)]
    return {int(stage): str(reason) for stage, reason in flagged["generator_reason"].fillna("see generator.csv").items()}


def generator_note(stage: int, reason: str, family: str) -> str:
    return (f"the load generator was the bottleneck at stage {stage} ({reason}): these {GENERATOR_BOUND[family]} "
            "measure the generator; add workers or machines")


def inconclusive_on_limited_stages(result: CriterionResult, limited: Mapping[int, str]) -> CriterionResult:
    """A latency or throughput check on a generator-limited stage (or merged over one) is INCONCLUSIVE: neither
    PASS nor FAIL can be said of MediaNest. Checks without data stay NO_DATA."""
    family = result.criterion.metric.family
    if family not in GENERATOR_BOUND or not limited:
        return result
    first = min(limited)
    checks = tuple(
        replace(check, status=INCONCLUSIVE, note=generator_note(stage, limited[stage], family))
        if check.status != NO_DATA and (stage := first if check.stage is None else check.stage) in limited else check
        for check in result.checks)
    if checks == result.checks:
        return result
    judged = [check.status for check in checks if check.status != NO_DATA]
    status = max(judged, key=RANK.__getitem__)
    note = next(check.note for check in checks if check.status == INCONCLUSIVE) if status == INCONCLUSIVE else result.note
    return replace(result, status=status, checks=checks, note=note)


# --- parsing ------------------------------------------------------------------------------------------


def parse_condition(text: Any, metric: Metric, field_path: str) -> Condition:
    match = _CONDITION.match(str(text)) if isinstance(text, (str, int, float)) else None
    units = UNITS[metric.unit]
    unit = match.group(3).lower() if match else ""
    if not match or unit not in units:
        shown = ", ".join(repr(u) for u in units if u) or "none"
        example = {"ms": "> 200 ms", "ratio": "> 1 %", "req/s": "< 500", "bytes": "> 15 MB", "MB": "> 400 MB",
                   "MB/h": "> 20 MB/h"}[metric.unit]
        raise CriteriaError(field_path, f"bad value {text!r}; expected a condition like \"{example}\" "
                                        f"(>, >=, <, <= then a number; units for {metric.name}: {shown})")
    return Condition(match.group(1), float(match.group(2)) * units[unit], str(text).strip())


def parse_duration(text: Any, field_path: str) -> float:
    match = _DURATION.match(str(text)) if isinstance(text, (str, int, float)) and not isinstance(text, bool) else None
    if not match or float(match.group(1)) <= 0:
        raise CriteriaError(field_path, f"bad value {text!r}; expected a positive duration like \"30s\" or \"2m\"")
    return float(match.group(1)) * {"ms": 0.001, "s": 1, None: 1, "m": 60, "min": 60, "h": 3600}[match.group(2)]


def parse_criterion(raw: Any, field_path: str) -> Criterion:
    """One criterion mapping from an SLO file; every mistake is a CriteriaError naming the field."""
    if not isinstance(raw, Mapping):
        raise CriteriaError(field_path, f"bad value {raw!r}; expected a mapping with name, metric, warn and/or critical")
    unknown = sorted(set(raw) - CRITERION_KEYS)
    if unknown:
        raise CriteriaError(f"{field_path}.{unknown[0]}", f"unknown key; expected one of {', '.join(sorted(CRITERION_KEYS))}")
    name = raw.get("name")
    if not isinstance(name, str) or not name.strip():
        raise CriteriaError(f"{field_path}.name", f"bad value {name!r}; expected a non-empty text")
    metric_name = raw.get("metric")
    metric = METRICS.get(metric_name) if isinstance(metric_name, str) else None  # a list is a bad value, not a crash
    if metric is None:
        raise CriteriaError(f"{field_path}.metric", f"bad value {raw.get('metric')!r}; expected one of {', '.join(METRICS)}")
    endpoint = raw.get("endpoint", metric.default_endpoint)
    endpoints = (endpoint,) if isinstance(endpoint, str) else tuple(endpoint) if isinstance(endpoint, list) else ()
    if not endpoints or not all(isinstance(e, str) and e.strip() for e in endpoints):
        raise CriteriaError(f"{field_path}.endpoint",
                            f"bad value {endpoint!r}; expected an endpoint key, a glob "
                            f"(\"GET /api/*\"), a group ({', '.join(sorted(GROUPS))}) or a list of them")
    for selector in endpoints:
        if not is_selector(selector.strip()):
            raise CriteriaError(f"{field_path}.endpoint", f"criterion {name.strip()!r}: endpoint {selector!r} is not a group "
                                                          "(api, http, page, sio, all) nor a pattern (an endpoint key "
                                                          "\"METHOD path\" holds a space, a glob holds * ? or [)")
    stage = raw.get("stage", "each")
    if isinstance(stage, bool) or not (isinstance(stage, int) and stage >= 1 or isinstance(stage, str) and stage.strip()):
        raise CriteriaError(f"{field_path}.stage", f"bad value {stage!r}; expected each, all, peak, a stage index "
                                                   "(1, 2, ...), a stage name or \"<N> users\"")
    split = raw.get("split")
    if split not in (None, "endpoint"):
        raise CriteriaError(f"{field_path}.split", f"bad value {split!r}; expected endpoint (or leave it out to merge)")
    warn = parse_condition(raw["warn"], metric, f"{field_path}.warn") if raw.get("warn") is not None else None
    critical = parse_condition(raw["critical"], metric, f"{field_path}.critical") if raw.get("critical") is not None else None
    if warn is None and critical is None:
        raise CriteriaError(field_path, "has neither warn nor critical; expected at least one level")
    if warn and critical:
        if warn.higher_is_worse != critical.higher_is_worse:
            raise CriteriaError(f"{field_path}.critical", f"bad value {critical.text!r}: points the other way than "
                                                          f"warn {warn.text!r}; expected both > or both <")
        if (critical.limit < warn.limit) if warn.higher_is_worse else (critical.limit > warn.limit):
            raise CriteriaError(f"{field_path}.critical", f"bad value {critical.text!r}: less severe than warn "
                                                          f"{warn.text!r}; expected a limit at least as far")
    window = parse_duration(raw["for"], f"{field_path}.for") if raw.get("for") is not None else None
    if window is not None and not metric.in_series:
        series = ", ".join(m for m, spec in METRICS.items() if spec.in_series)
        raise CriteriaError(f"{field_path}.for", f"not available for metric {metric.name} (the 1-second series has "
                                                 f"no such value); expected one of {series}")
    if window is not None and metric.column == "p95_ms" and split is None and endpoints != ("all",) and (
            len(endpoints) > 1 or endpoints[0] in GROUPS or any(char in endpoints[0] for char in "*?[")):
        raise CriteriaError(f"{field_path}.for", "a per-second p95 exists per endpoint and for all endpoints only; "
                                                 "expected split: endpoint, endpoint: all or one exact endpoint key")
    flags = {}
    for key in ("abort", "required"):
        flags[key] = raw.get(key, False)
        if not isinstance(flags[key], bool):
            raise CriteriaError(f"{field_path}.{key}", f"bad value {flags[key]!r}; expected true or false")
    if flags["abort"] and critical is None:
        raise CriteriaError(f"{field_path}.abort", "true without a critical level; expected a critical level to abort on")
    phase = raw.get("phase", "steady")
    if phase not in PHASES:
        raise CriteriaError(f"{field_path}.phase", f"bad value {phase!r}; expected steady (the default) or all (ramps too)")
    confidence = raw.get("confidence")
    if confidence is not None and (metric.name not in INTERVAL_METRICS or isinstance(confidence, bool)
                                   or not isinstance(confidence, (int, float)) or not 0.5 <= confidence < 1):
        raise CriteriaError(f"{field_path}.confidence", f"bad value {confidence!r}; expected a number from 0.5 to 0.999 "
                                                        f"on one of {', '.join(sorted(INTERVAL_METRICS))}")
    if metric.name in INTERVAL_METRICS and confidence is None:
        confidence = 0.95
    timing = raw.get("timing", "raw")
    if timing not in ("raw", "corrected"):
        raise CriteriaError(f"{field_path}.timing", f"bad value {timing!r}; expected raw (the default) or corrected")
    if timing == "corrected" and (metric.name not in CORRECTED or window is not None):
        raise CriteriaError(f"{field_path}.timing", f"corrected with metric {metric.name}"
                                                    f"{' and for' if window is not None else ''}; expected one of "
                                                    f"{', '.join(CORRECTED)} without for (open-model stages keep "
                                                    "corrected percentiles, not a corrected series)")
    min_requests = raw.get("min_requests", default_min_requests(metric))
    if isinstance(min_requests, bool) or not isinstance(min_requests, int) or min_requests < 1:
        raise CriteriaError(f"{field_path}.min_requests", f"bad value {min_requests!r}; expected a whole number >= 1")
    if len(str(raw.get("description", ""))) > DESCRIPTION_CHARS:
        raise CriteriaError(f"{field_path}.description", f"bad value of {len(str(raw['description']))} characters; "
                                                         f"expected at most {DESCRIPTION_CHARS}")
    return Criterion(name=name.strip(), metric=metric, endpoint=tuple(e.strip() for e in endpoints),
                     stage=stage.strip() if isinstance(stage, str) else stage, split_endpoint=split == "endpoint",
                     warn=warn, critical=critical, window_s=window, abort=flags["abort"], required=flags["required"],
                     description=str(raw.get("description", "")), min_requests=min_requests, phases=PHASES[phase],
                     timing=timing, confidence=None if confidence is None else float(confidence))


def is_selector(selector: str) -> bool:
    """A group, or a pattern that could match a recorded key ("<request type> <name>"): a word without a space
    and without glob characters is neither, so a typo like `apix` never disarms a gate as NO_DATA."""
    return selector in GROUPS or " " in selector or any(char in selector for char in GLOB_CHARACTERS)


def default_min_requests(metric: Metric) -> int:
    """A percentile p from fewer than 1 / (1 - p) samples is only the maximum: p95 needs 20, p99 100, p99.9 1000."""
    percentile = {**PERCENTILE_COLUMNS, **OK_PERCENTILE_COLUMNS}.get(metric.column or "")
    return int(np.ceil(1 / (1 - percentile / 100) - 1e-9)) if percentile else 1


# --- selection ----------------------------------------------------------------------------------------


def endpoint_mask(frame: pd.DataFrame, selectors: Sequence[str]) -> pd.Series:
    """Rows whose endpoint one of the selectors matches (groups, globs and exact keys; vectorised per endpoint)."""
    endpoints = pd.Series(frame["endpoint"].unique())
    endpoints = endpoints[endpoints != ALL_ENDPOINTS]
    request_type = endpoints.str.split(" ", n=1).str[0]
    kind = endpoint_kind(request_type)
    chosen = pd.Series(False, index=endpoints.index)
    for selector in selectors:
        if selector == "all":
            chosen |= ~kind.isin(NOT_REQUEST_KINDS)
        elif selector == "api":
            chosen |= (kind == "http") & endpoints.str.split(" ", n=1).str[1].str.startswith("/api/")
        elif selector in GROUPS:
            chosen |= kind == selector
        else:
            chosen |= endpoints.map(lambda endpoint, pattern=selector: fnmatch.fnmatchcase(endpoint, pattern)).astype(bool)
    return frame["endpoint"].isin(set(endpoints[chosen]))


def select_stages(stage: str | int, stages: pd.DataFrame) -> tuple[pd.DataFrame, str]:
    """The stages a criterion concerns, and why none when none (each/all: every stage)."""
    if stage in ("each", "all"):
        chosen = stages
    elif stage == "peak":
        chosen = stages[stages["users"] == stages["users"].max()].tail(1)
    elif isinstance(stage, int):
        chosen = stages[stages.index == stage]
    elif (users := USERS_PATTERN.match(stage)) is not None:
        chosen = stages[stages["users"] == int(users.group(1))]
    else:
        chosen = stages[stages["name"] == stage]
    return chosen, "" if len(chosen) else f"no stage matches {stage!r} in this run"


# --- measuring ----------------------------------------------------------------------------------------


def measure(rows: pd.DataFrame, metric: Metric, stage_durations: pd.Series,
            histograms: Histograms | None, corrected: bool = False) -> pd.DataFrame:
    """The metric per (stage_key, endpoint_key) group of summary rows: value, requests, note. `corrected`: the
    open-model percentile from intended starts (its column, and the corrected `histograms`)."""
    keys = ["stage_key", "endpoint_key"]
    reached_rows = rows["requests"] - rows["unreached"]
    rows = rows.assign(weighted_ms=rows["avg_ms"].fillna(0) * reached_rows)
    grouped = rows.groupby(keys, sort=True)
    sums = grouped.agg(requests=("requests", "sum"), failures=("failures", "sum"), ok_bytes=("ok_bytes", "sum"),
                       weighted_ms=("weighted_ms", "sum"), rows=("requests", "size"),
                       min_ms=("min_ms", "min"), max_ms=("max_ms", "max"), unreached=("unreached", "sum"),
                       timeouts=("fail_timeout", "sum"))
    out = pd.DataFrame({"requests": sums["requests"], "note": "", "censored": False}, index=sums.index)
    requests = sums["requests"].where(sums["requests"] > 0)
    if metric.family == "latency":
        assert metric.column is not None  # every latency metric names its summary column
        column = CORRECTED[metric.column] if corrected else metric.column
        if column not in rows.columns:  # a summary without open-model stages has no corrected columns
            rows, grouped = rows.assign(**{column: np.nan}), rows.assign(**{column: np.nan}).groupby(keys, sort=True)
        _measure_latency(rows, grouped, sums, column, histograms, out)
    elif metric.family == "error_rate":
        out["value"] = sums["failures"] / requests
    elif metric.family == "success":
        out["value"] = 1 - sums["failures"] / requests
    elif metric.family == "bundle":  # the average successful page visit: failed visits fetched a part
        successes = sums["requests"] - sums["failures"]
        out["value"] = sums["ok_bytes"] / successes.where(successes > 0)
    else:  # rps: every request of the group over the judged time of its stages
        stage_keys = out.index.get_level_values("stage_key")
        durations = np.where(stage_keys == ALL_STAGES, stage_durations.sum(), stage_durations.reindex(stage_keys).to_numpy())
        out["value"] = sums["requests"].to_numpy() / np.where(durations > 0, durations, np.nan)
    return out


def _measure_latency(rows: pd.DataFrame, grouped: Any, sums: pd.DataFrame, column: str,
                     histograms: Histograms | None, out: pd.DataFrame) -> None:
    """Latency from the samples that reached a server (of the successful ones for *_ok_ms). A percentile that
    falls among timed-out samples is flagged `censored`: its value is only a lower bound."""
    keys = ["stage_key", "endpoint_key"]
    ok_only = column in OK_PERCENTILE_COLUMNS
    reached = sums["requests"] - sums["unreached"]
    counted = sums["requests"] - sums["failures"] if ok_only else reached
    out["requests"] = counted
    if column == "avg_ms":
        out["value"] = sums["weighted_ms"] / reached.where(reached > 0)
    elif column in ("min_ms", "max_ms"):
        out["value"] = sums[column]
    else:
        out["value"] = grouped[column].first().where(sums["rows"] == 1)
        merged = sums["rows"] > 1
        source = histograms.ok if ok_only and histograms is not None else histograms
        if merged.any() and source is not None:
            percentile = {**PERCENTILE_COLUMNS, **OK_PERCENTILE_COLUMNS, **CORRECTED_COLUMNS}[column]
            exact = source.group_percentiles(rows[rows.set_index(keys).index.isin(sums.index[merged])], keys,
                                             {column: percentile})
            out.loc[exact.index, "value"] = exact[column]
        elif merged.any():
            out.loc[merged, "note"] = "merged percentiles need the histograms"
        if column in CENSORED_COLUMNS:
            out["censored"] = [censored(PERCENTILE_COLUMNS[column], int(n), int(t))
                               for n, t in zip(reached, sums["timeouts"], strict=True)]
    out.loc[(counted == 0) & ok_only, "note"] = "no successful samples to take a latency from"
    out.loc[(reached == 0) & (sums["requests"] > 0), "note"] = (
        "no sample reached a server (refused, no such host or no token): no latency to judge")
    out.loc[out["note"] != "", "value"] = np.nan


PER_SECOND_SUMS = {"requests": "sum", "failures": "sum", "weighted_ms": "sum", "max_ms": "max", "p95_ms": "first"}


def _per_second_sums(series: pd.DataFrame, criterion: Criterion, stage_ids: pd.Index, merge_stages: bool) -> pd.DataFrame:
    """Per (stage_key, endpoint_key, time), the sums of the selected rows of one chunk of the series (they add up
    across chunks: a second split by a chunk boundary is summed again)."""
    steady = series[series["phase"].isin(criterion.phases) & series["stage"].isin(stage_ids)]
    if criterion.endpoint == ("all",) and not criterion.split_endpoint:
        rows = steady[steady["endpoint"] == ALL_ENDPOINTS].assign(endpoint_key="all")
    else:
        rows = steady[endpoint_mask(steady, criterion.endpoint)]
        rows = rows.assign(endpoint_key=rows["endpoint"] if criterion.split_endpoint else criterion.endpoint_label)
    rows = rows.assign(stage_key=ALL_STAGES if merge_stages else rows["stage"],
                       weighted_ms=rows["avg_ms"] * rows["requests"])
    return rows.groupby(["stage_key", "endpoint_key", "time"])[list(PER_SECOND_SUMS)].agg(PER_SECOND_SUMS)


def _series_per_second(evidence: Evidence, criterion: Criterion, stage_ids: pd.Index, merge_stages: bool) -> pd.DataFrame:
    """The metric per (stage_key, endpoint_key, second) over the judged seconds of the chosen stages."""
    series = evidence.timeseries  # its ALL rows say which seconds were judged and how long each was
    assert series is not None  # _judge_windows judges nothing without it
    steady = series[series["phase"].isin(criterion.phases) & series["stage"].isin(stage_ids)]
    seconds = steady.loc[steady["endpoint"] == ALL_ENDPOINTS, ["stage", "time", "interval_s"]].drop_duplicates(["stage", "time"])
    seconds = seconds.assign(stage_key=ALL_STAGES if merge_stages else seconds["stage"])
    sums = [_per_second_sums(chunk, criterion, stage_ids, merge_stages) for chunk in evidence.chunks()]
    per_second = pd.concat(sums).groupby(level=[0, 1, 2]).agg(PER_SECOND_SUMS).reset_index()
    if criterion.metric.family == "rps":  # a second without requests is a second at 0 req/s
        grid = seconds[["stage_key", "time", "interval_s"]].merge(
            per_second[["stage_key", "endpoint_key"]].drop_duplicates(), on="stage_key")
        per_second = grid.merge(per_second, on=["stage_key", "endpoint_key", "time"], how="left").fillna({"requests": 0})
    requests = per_second["requests"].where(per_second["requests"] > 0)
    family, column = criterion.metric.family, criterion.metric.column
    per_second["value"] = {
        "error_rate": lambda: per_second["failures"] / requests,
        "success": lambda: 1 - per_second["failures"] / requests,
        "rps": lambda: per_second["requests"] / per_second["interval_s"].where(per_second["interval_s"] > 0),
        "latency": lambda: per_second["weighted_ms"] / requests if column == "avg_ms" else per_second[column],
    }[family]()
    return per_second.dropna(subset=["value"]).sort_values(["stage_key", "endpoint_key", "time"])


def longest_violation_s(per_second: pd.DataFrame, condition: Condition | None) -> pd.Series:
    """Per group, the longest run of consecutive data seconds that all violate the condition (wall seconds)."""
    keys = ["stage_key", "endpoint_key"]
    if condition is None or per_second.empty:
        return pd.Series(dtype=float)
    violated = pd.Series(condition.violated(per_second["value"]), index=per_second.index)
    run_id = (~violated).groupby([per_second[key] for key in keys]).cumsum()
    runs = (per_second[violated].groupby([*(per_second[key][violated] for key in keys), run_id[violated]])["time"]
            .agg(["min", "max"]))
    return (runs["max"] - runs["min"] + 1).groupby(level=[0, 1]).max().rename_axis(keys)


# --- judging ------------------------------------------------------------------------------------------


def judge_criterion(criterion: Criterion, evidence: Evidence, only_stage: int | None = None) -> CriterionResult:
    chosen, why_none = select_stages(criterion.stage, evidence.stages)
    if only_stage is not None:
        chosen = chosen[chosen.index == only_stage]
    if criterion.metric.family == "server":
        return _judge_server(criterion, evidence, chosen, why_none)
    merge_stages = criterion.stage == "all"
    steady_only = criterion.phases == (STEADY,)
    reached = chosen[chosen["reached_steady"]] if steady_only else chosen
    phased = evidence.summary[evidence.summary["phase"].isin(criterion.phases)]
    rows = phased[phased["stage"].isin(reached.index) & endpoint_mask(phased, criterion.endpoint)]
    rows = rows.assign(stage_key=ALL_STAGES if merge_stages else rows["stage"],
                       endpoint_key=rows["endpoint"] if criterion.split_endpoint else criterion.endpoint_label)
    stage_durations = (phased[phased["stage"].isin(reached.index)].groupby(["stage", "phase"])["duration_s"].max()
                       .groupby(level="stage").sum())
    corrected = criterion.timing == "corrected"
    measured = measure(rows, criterion.metric, stage_durations, evidence.corrected if corrected else evidence.histograms,
                       corrected)
    if corrected:  # closed-model stages have no intended starts: nothing to judge there, never a pass
        closed = measured["value"].isna() & (measured["note"] == "")
        measured.loc[closed, "note"] = "no corrected timing here (a closed-model stage)"

    # every (stage, endpoint) the criterion concerns gets a check, measured or not
    endpoint_keys = sorted(rows["endpoint_key"].unique()) if criterion.split_endpoint else [criterion.endpoint_label]
    stage_keys = [ALL_STAGES] if merge_stages else list(chosen.index)
    if merge_stages and reached.empty:
        stage_keys = []
    checks = measured.reindex(pd.MultiIndex.from_product([stage_keys, endpoint_keys or [criterion.endpoint_label]],
                                                         names=["stage_key", "endpoint_key"]))
    checks["requests"] = checks["requests"].fillna(0).astype(int)
    checks["note"] = checks["note"].fillna("no matching requests in the judged phase" if endpoint_mask(
        evidence.summary, criterion.endpoint).any() else f"{criterion.endpoint_label} matches no endpoint of this run")
    checks["censored"] = checks["censored"].eq(True)  # False where nothing was measured
    stage_of_check = checks.index.get_level_values("stage_key")
    if not merge_stages and steady_only:
        not_steady = ~chosen["reached_steady"].reindex(stage_of_check).to_numpy(dtype=bool)
        checks.loc[not_steady, "note"] = "the stage never reached its steady phase"
    statuses = np.full(len(checks), PASS, dtype=object)
    checks["sustained_s"] = np.nan
    if criterion.window_s is None:
        for condition, status in ((criterion.warn, WARN), (criterion.critical, FAIL)):
            if condition is not None:
                statuses[condition.violated(checks["value"])] = status
    else:
        _judge_windows(criterion, evidence, reached.index, merge_stages, checks, statuses)
    # a censored value is a lower bound: beyond a level it is decided, below every level it is not
    undecided = checks["censored"].to_numpy() & (statuses == PASS) & (checks["note"] == "").to_numpy()
    checks.loc[undecided, "note"] = "requests timed out: the value is a lower bound, below the levels"
    too_few = (checks["requests"] < criterion.min_requests).to_numpy() & (checks["note"] == "").to_numpy()
    checks.loc[too_few, "note"] = f"fewer than {criterion.min_requests} requests, too few for {criterion.metric.name}"
    statuses[checks["value"].isna().to_numpy() | (checks["note"] != "").to_numpy()] = NO_DATA
    checks["status"] = statuses
    return _result(criterion, checks, evidence.stages, why_none if not len(chosen) else "")


def _judge_windows(criterion: Criterion, evidence: Evidence, stage_ids: pd.Index, merge_stages: bool,
                   checks: pd.DataFrame, statuses: np.ndarray) -> None:
    """`for:` criteria: a level counts when violated for window_s consecutive seconds of the 1-second series."""
    if evidence.timeseries is None:
        checks["note"] = "sustained windows need the 1-second series"
        return
    per_second = _series_per_second(evidence, criterion, stage_ids, merge_stages)
    series = evidence.timeseries
    steady = series[series["phase"].isin(criterion.phases) & (series["endpoint"] == ALL_ENDPOINTS)
                    & series["stage"].isin(stage_ids)]
    span = steady.groupby("stage")["time"].nunique()
    spans = np.where(checks.index.get_level_values("stage_key") == ALL_STAGES, span.sum(),
                     span.reindex(checks.index.get_level_values("stage_key")).fillna(0).to_numpy())
    longest = {}
    for condition, status in ((criterion.warn, WARN), (criterion.critical, FAIL)):
        if condition is not None:
            longest[status] = longest_violation_s(per_second, condition).reindex(checks.index).fillna(0).to_numpy()
            statuses[longest[status] >= criterion.window_s] = status
    worst = longest.get(FAIL, np.zeros(len(checks)))
    if WARN in longest:
        worst = np.where(worst >= criterion.window_s, worst, np.maximum(worst, longest[WARN]))
    checks["sustained_s"] = worst
    short = (spans < criterion.window_s) & checks["note"].eq("").to_numpy()
    checks.loc[short, "note"] = f"judged phase shorter than the {criterion.window_s:g} s window"


def _result(criterion: Criterion, checks: pd.DataFrame, stages: pd.DataFrame, note: str) -> CriterionResult:
    stage_keys = checks.index.get_level_values("stage_key")
    names = stages["name"].reindex(stage_keys).to_numpy()
    users = stages["users"].reindex(stage_keys).to_numpy()
    built = tuple(
        Check(stage=None if stage == ALL_STAGES else int(stage), stage_name=None if stage == ALL_STAGES else str(name),
              users=None if stage == ALL_STAGES else int(user), endpoint=str(endpoint), status=status,
              value=None if pd.isna(value) else float(value), requests=int(requests),
              sustained_s=None if pd.isna(sustained) else float(sustained), note=str(check_note),
              censored=bool(is_censored))
        for (stage, endpoint), name, user, status, value, requests, sustained, check_note, is_censored in zip(
            checks.index, names, users, checks["status"], checks["value"], checks["requests"], checks["sustained_s"],
            checks["note"], checks["censored"], strict=True))
    return _aggregate(criterion, built, note)


def _aggregate(criterion: Criterion, built: tuple[Check, ...], note: str) -> CriterionResult:
    """The criterion's status from its checks: the worst judged one; NO_DATA (FAIL when required) without any."""
    judged = [check.status for check in built if check.status != NO_DATA]
    status = max(judged, key=RANK.__getitem__) if judged else NO_DATA
    missing = sum(check.status == NO_DATA for check in built)
    if not built:
        note = note or "nothing to judge"
    elif missing and judged:
        note = note or f"{missing} of {len(built)} checks had no data"
    elif missing:
        note = note or built[0].note
    if status == NO_DATA and criterion.required:
        status, note = FAIL, f"required, but {note or 'no data'}"
    return CriterionResult(criterion, status, built, note)


def _judge_server(criterion: Criterion, evidence: Evidence, chosen: pd.DataFrame, why_none: str) -> CriterionResult:
    """A telemetry criterion: one check per chosen stage (or one for all), on the scrapes of its judged phases."""
    groups = [(ALL_STAGES, list(chosen.index))] if criterion.stage == "all" else [(stage, [stage]) for stage in chosen.index]
    checks = []
    for key, stage_ids in groups:
        if evidence.server is None:
            measured = WindowValue(None, 0, "server telemetry is judged at the end of the run, from telemetry.csv")
        else:
            measured = window_value(evidence.server, criterion.metric.name, stage_ids, criterion.phases,
                                    criterion.confidence or 0.95)
        sustained: dict[str, float] | None = None
        if criterion.window_s and measured.value is not None and evidence.server is not None:
            sustained = {status: sustained_s(evidence.server, criterion.metric.name, stage_ids, criterion.phases,
                                             level.violated) for level, status in
                         ((criterion.warn, WARN), (criterion.critical, FAIL)) if level is not None}
        stage = None if key == ALL_STAGES else evidence.stages.loc[key]
        checks.append(Check(stage=None if stage is None else int(key),
                            stage_name=None if stage is None else str(stage["name"]),
                            users=None if stage is None else int(stage["users"]), endpoint="server",
                            status=_server_status(criterion, measured, sustained), value=measured.value,
                            requests=measured.scrapes, sustained_s=max(sustained.values()) if sustained else None,
                            note=measured.note, low=measured.low, high=measured.high))
    return _aggregate(criterion, tuple(checks), why_none if not len(chosen) else "")


def _server_status(criterion: Criterion, measured: WindowValue, sustained: dict[str, float] | None) -> str:
    """A point value against the levels; an interval is beyond a level only when all of it is (FAIL at critical),
    and an interval that reaches over a level is a WARN; with `for`, a level counts when violated that long."""
    if measured.value is None:
        return NO_DATA
    if sustained is not None and criterion.window_s is not None:  # sustained is measured only with `for`
        reached = [status for status in (FAIL, WARN) if sustained.get(status, 0) >= criterion.window_s]
        return reached[0] if reached else PASS
    ends = [measured.value] if measured.low is None or measured.high is None else [measured.low, measured.high]
    if criterion.critical and criterion.critical.violated(ends).all():
        return FAIL
    if any(level.violated(ends).any() for level in (criterion.critical, criterion.warn) if level is not None):
        return WARN
    return PASS


def format_value(value: float | None, unit: str) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "no data"
    if unit == "MB":
        return f"{value:.1f} MB"
    if unit == "MB/h":
        return f"{value:.1f} MB/h"
    if unit == "ms":
        return f"{value:.1f} ms" if abs(value) < 1000 else f"{value / 1000:.2f} s"
    if unit == "ratio":
        return f"{value * 100:.2f} %"
    if unit == "req/s":
        return f"{value:.1f} req/s"
    for size, suffix in ((1e9, "GB"), (1e6, "MB"), (1e3, "KB")):
        if abs(value) >= size:
            return f"{value / size:.2f} {suffix}"
    return f"{value:.0f} B"


def worst_status(statuses: Sequence[str]) -> str:
    judged = [status for status in statuses if status != NO_DATA]
    return max(judged, key=RANK.__getitem__) if judged else NO_DATA


# --- SLO sets and verdicts -----------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class SloSet:
    """A named list of criteria plus the reference values the plots draw (slo/*.yaml, loaded by analysis.slo)."""

    name: str
    criteria: tuple[Criterion, ...]
    description: str = ""
    source: str = ""
    baseline: Mapping[str, Mapping[str, float]] = field(default_factory=dict)  # route name -> {avg_ms, p95_ms}
    baseline_source: str = ""


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


def judge(evidence: Evidence, slo: SloSet, run_name: str = "", run_info: Mapping[str, Any] | None = None) -> Verdict:
    return Verdict(slo, tuple(inconclusive_on_limited_stages(judge_criterion(criterion, evidence), evidence.generator_limited)
                              for criterion in slo.criteria), run_name, run_info or {})


def judge_run(run_dir: Any, slo: SloSet) -> Verdict:
    """Judge a whole results folder; `verdict.exit_code` is what the CLI exits with."""
    run = run_dir if isinstance(run_dir, RunData) else load_run(run_dir)
    evidence = Evidence.from_run(run)
    assert evidence.server is not None  # from_run always loads telemetry.csv
    verdict = judge(evidence, slo, run.name, run.info)
    return replace(verdict, server=server_summary(evidence.server, evidence.stages))


def judge_stage(summary: pd.DataFrame, slo: SloSet, stage: int,
                histograms: Mapping[tuple[int, str, str], Any] | None = None,
                timeseries: pd.DataFrame | None = None,
                series_chunks: Callable[[], Iterable[pd.DataFrame]] | None = None,
                corrected: Mapping[tuple[int, str, str], Any] | None = None,
                generator_limited: Mapping[int, str] | None = None,
                ok_histograms: Mapping[tuple[int, str, str], Any] | None = None) -> list[CriterionResult]:
    """Judge one finished stage during a run, for the abort decision.

    `summary`: summary.csv rows so far (e.g. `pd.DataFrame(recorder.summary_rows())`); `histograms`: optional
    {(stage, phase, endpoint): HdrHistogram or encoded string} for exact merged percentiles; `timeseries`:
    optional 1-second rows for `for:` criteria (at least the ALL rows when `series_chunks` reads the whole series
    chunk by chunk, as the runner does); `corrected`: the open-model stages' corrected histograms;
    `generator_limited`: {stage: reason} (INCONCLUSIVE); `ok_histograms`: as `histograms`, of the successful
    samples (for *_ok_ms). Criteria scoped to `all` or `peak` stages cannot be decided before the run ends and are
    left out, as are criteria whose stage selector does not select `stage` and server criteria (telemetry.csv is
    judged after the run).
    """
    summary = summary[summary["stage"] > 0]
    stages = summary.groupby("stage").agg(name=("stage_name", "first"), users=("users", "first"))
    stages["reached_steady"] = stages.index.isin(summary.loc[summary["phase"] == STEADY, "stage"].unique())
    ok = Histograms(ok_histograms) if ok_histograms is not None else None
    evidence = Evidence(summary, stages, timeseries, Histograms(histograms, ok) if histograms is not None else None,
                        series_chunks, Histograms(corrected) if corrected is not None else None)
    results = []
    for criterion in slo.criteria:
        if (criterion.stage in ("all", "peak") or criterion.metric.family == "server"
                or stage not in select_stages(criterion.stage, stages)[0].index):
            continue
        results.append(inconclusive_on_limited_stages(judge_criterion(criterion, evidence, only_stage=stage),
                                                      generator_limited or {}))
    return results


def abort_reason(results: Sequence[CriterionResult]) -> str | None:
    """Why the remaining stages must not run: the failed criteria that carry `abort: true` (None: go on)."""
    failed = [result for result in results if result.criterion.abort and result.status == FAIL]
    if not failed:
        return None
    return "aborted by " + "; ".join(_abort_cause(result) for result in failed)


def _abort_cause(result: CriterionResult) -> str:
    """A failed criterion as the abort names it: its measured value against the critical level and where, or
    its note (a required criterion without data fails without a value)."""
    critical, worst = result.criterion.critical, result.worst
    if critical is None or worst is None:
        return f"{result.criterion.name}: {result.note}"
    return f"{result.criterion.name} {result.measured_text} ({critical.text}) at {worst.where}"
