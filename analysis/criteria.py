"""The criteria language's definitions: the metrics a criterion can judge, their units, the endpoint groups, and
the Criterion and SloSet types that analysis/slo.py builds from an SLO file and analysis/judging.py judges.

Levels are fail conditions, as in Taurus: `warn: "> 200 ms"` means WARN when the measured value is above
200 ms, `critical: "> 500 ms"` means FAIL above 500 ms. A scope (endpoint selector x stage selector) picks
the summary rows of the judged phase (steady by default); the metric is computed per stage ("each"), merged over
stages ("all"), and per endpoint when `split: endpoint`. `for: 30s` judges the 1-second series instead: a level
counts only when it is violated for that many consecutive seconds. Anything without data is NO_DATA, never PASS.
docs/analysis.md is the user's reference. Nothing here imports pandas: `scenarios validate` parses SLO sets too.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from analysis.values import format_value
from medianest_load.results_format import CORRECTED_COLUMNS, OK_PERCENTILE_COLUMNS, PERCENTILE_COLUMNS, RAMP, STEADY


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
GROUPS = {"all", "api", "http", "page", "sio", "txn", "browser", "ttfb"}
NOT_REQUEST_KINDS = ("txn", "browser", "ttfb")  # `all` leaves them out: they span or time requests counted already
GLOB_CHARACTERS = "*?["
# timing: corrected judges an open-model stage's latency from each iteration's intended start (docs/scenarios.md)
CORRECTED = {column.replace("_corrected", ""): column for column in CORRECTED_COLUMNS}
PHASES = {"steady": (STEADY,), "all": (RAMP, STEADY)}


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
    def higher_is_worse(self) -> bool:
        """Whether larger values are worse, as its levels say (analysis/slo.py requires at least one)."""
        level = self.critical or self.warn
        return level is not None and level.higher_is_worse

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


@dataclass(frozen=True, kw_only=True)
class SloSet:
    """A named list of criteria plus the reference values the plots draw (slo/*.yaml, loaded by analysis.slo)."""

    name: str
    criteria: tuple[Criterion, ...]
    description: str = ""
    source: str = ""
    baseline: Mapping[str, Mapping[str, float]] = field(default_factory=dict)  # route name -> {avg_ms, p95_ms}
    baseline_source: str = ""
