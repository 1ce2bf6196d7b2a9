"""The results folder's vocabulary, shared by the recorder that writes it and the analysis that reads it."""

import math

from medianest_load.failures import FAILURE_KINDS

STEADY, RAMP = "steady", "ramp"
ALL_ENDPOINTS = "ALL"  # the timeseries' every-second row over all endpoints
# samples that are no request of their own: a transaction spans requests already counted, a browser figure is a
# page's timing; the ALL row and the `all` selector leave them out, so nothing is counted twice
NOT_REQUESTS = ("TXN", "BROWSER", "TTFB")  # samples that time requests counted already, or span them
PERCENTILE_COLUMNS = {"p50_ms": 50.0, "p75_ms": 75.0, "p90_ms": 90.0, "p95_ms": 95.0, "p99_ms": 99.0, "p999_ms": 99.9}
# Latency counts the samples that reached a server only; `unreached` counts the others (refused, no such host,
# no token to send). A percentile whose rank falls among timed-out samples is censored: its value is a lower
# bound (>= the timeout). The *_ok_ms percentiles are those of successful samples alone.
CENSORED_COLUMNS = {column: column.replace("_ms", "_censored") for column in PERCENTILE_COLUMNS}
OK_PERCENTILE_COLUMNS = {column.replace("_ms", "_ok_ms"): p for column, p in PERCENTILE_COLUMNS.items()}
# open-model stages: latency from each iteration's intended start (empty for closed stages)
CORRECTED_COLUMNS = {"p50_corrected_ms": 50.0, "p90_corrected_ms": 90.0, "p95_corrected_ms": 95.0, "p99_corrected_ms": 99.0}
SUMMARY_COLUMNS = (
    "stage", "stage_name", "users", "phase", "endpoint", "request_type", "name", "requests", "failures",
    "error_rate", "rps", "duration_s", "avg_ms", "min_ms", *PERCENTILE_COLUMNS, "max_ms", "bytes", "ok_bytes", "avg_bytes",
    *(f"fail_{kind}" for kind in FAILURE_KINDS),
    "unreached", *CENSORED_COLUMNS.values(), *OK_PERCENTILE_COLUMNS, "backoffs", "backoff_s",
    *CORRECTED_COLUMNS,
)
TIMESERIES_COLUMNS = (
    "time", "elapsed_s", "interval_s", "stage", "phase", "users", "endpoint", "requests", "failures",
    "avg_ms", "p95_ms", "max_ms",
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


def censored(percentile: float, reached: int, timeouts: int) -> bool:
    """Whether the sample at this percentile's rank is a timed-out one: timed-out samples are the slowest (they
    waited the whole timeout), so the top `timeouts` ranks are theirs, and a percentile there is only a lower
    bound of what the server would have taken."""
    return timeouts > 0 and math.ceil(percentile / 100 * reached) > reached - timeouts
