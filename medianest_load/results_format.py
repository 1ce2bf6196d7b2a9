"""The results folder's vocabulary, shared by the recorder that writes it and the analysis that reads it."""

from medianest_load.failures import FAILURE_KINDS

STEADY, RAMP = "steady", "ramp"
ALL_ENDPOINTS = "ALL"  # the timeseries' every-second row over all endpoints
# samples that are no request of their own: a transaction spans requests already counted, a browser figure is a
# page's timing; the ALL row and the `all` selector leave them out, so nothing is counted twice
NOT_REQUESTS = ("TXN", "BROWSER")
PERCENTILE_COLUMNS = {"p50_ms": 50.0, "p75_ms": 75.0, "p90_ms": 90.0, "p95_ms": 95.0, "p99_ms": 99.0, "p999_ms": 99.9}
# open-model stages: latency from each iteration's intended start (empty for closed stages)
CORRECTED_COLUMNS = {"p50_corrected_ms": 50.0, "p90_corrected_ms": 90.0, "p95_corrected_ms": 95.0, "p99_corrected_ms": 99.0}
SUMMARY_COLUMNS = (
    "stage", "stage_name", "users", "phase", "endpoint", "request_type", "name", "requests", "failures",
    "error_rate", "rps", "duration_s", "avg_ms", "min_ms", *PERCENTILE_COLUMNS, "max_ms", "bytes", "ok_bytes", "avg_bytes",
    *(f"fail_{kind}" for kind in FAILURE_KINDS),
    *CORRECTED_COLUMNS,
)
TIMESERIES_COLUMNS = (
    "time", "elapsed_s", "interval_s", "stage", "phase", "users", "endpoint", "requests", "failures", "avg_ms", "p95_ms", "max_ms",
)
FAILURE_COLUMNS = ("stage", "phase", "endpoint", "kind", "message", "count", "first_seen", "last_seen")
STAGE_COLUMNS = ("index", "name", "users", "spawn_rate", "ramp_start", "steady_start", "steady_end", "planned_hold_s")
HISTOGRAM_UNIT = "us"
SIGNIFICANT_FIGURES = 3
GENERATOR_COLUMNS = ("time", "process", "stage", "phase", "users", "cpu_pct", "loop_lag_p50_ms", "loop_lag_p99_ms")
