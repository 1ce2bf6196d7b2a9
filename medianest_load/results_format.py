"""The results folder's vocabulary, shared by the recorder that writes it and the analysis that reads it."""

from medianest_load.failures import FAILURE_KINDS

STEADY, RAMP = "steady", "ramp"
ALL_ENDPOINTS = "ALL"  # the timeseries' every-second row over all endpoints
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
# telemetry.csv (medianest_load.scraper): one row per kept sample of every scrape, plus one SCRAPE_METRIC row per
# attempt whose `outcome` label is SCRAPE_OK or a failure reason and whose value is the attempt's seconds
TELEMETRY_COLUMNS = ("time", "elapsed_s", "stage", "phase", "metric", "labels", "value")
SCRAPE_METRIC = "medianest_load_scrape"
SCRAPE_OK = "ok"
SCRAPE_REASONS = ("refused", "timeout", "unauthorized", "not_found", "http_error", "unparsable", "error")
GENERATOR_COLUMNS = ("time", "process", "stage", "phase", "users", "cpu_pct", "loop_lag_p50_ms", "loop_lag_p99_ms")
