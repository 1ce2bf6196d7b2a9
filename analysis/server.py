"""Server telemetry (telemetry.csv, written by medianest_load.scraper) turned into the audit's server-side
quantities: resident memory and heap (MB = 10^6 bytes), CPU (share of one core, from the rate of
process_cpu_seconds_total), event-loop lag, GC time share, connected sockets, DB connections, the cache hit ratio
and the DB connection failure ratio (rates of their counters), memory growth in MB/h (a Theil-Sen slope of resident
memory against time, with its confidence interval) and memory per connected socket (the slope of resident
memory against sockets: the audit's suspected socket-listener leak).

Which prom-client names carry each concept comes from the target profile's `metrics.names` as the run recorded it
in run.json (first name present wins), so a staging build with other names needs a profile edit only. Pure
functions over tidy frames; nothing here reads the network.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
import pandas as pd

from analysis.load import STEADY, RunData
from medianest_load.results_format import SCRAPE_METRIC, SCRAPE_OK
from medianest_load.target_profile import DEFAULT_METRIC_NAMES

MB = 1e6
MIN_SCRAPES = 3  # fewer successful scrapes in a judged phase: no value (a rate needs two, a spread three)
MIN_SLOPE_SCRAPES = 5  # a slope and its interval from fewer points says nothing
# nor from a short window: the first seconds of load (warming pools, caches, allocator arenas) would read as MB/h
MIN_SLOPE_WINDOW_S = 30.0
GAUGES = {"memory_mb": "resident_memory_bytes", "heap_mb": "heap_used_bytes", "loop_lag_ms": "loop_lag_seconds",
          "loop_lag_p50_ms": "loop_lag_p50_seconds", "loop_lag_p90_ms": "loop_lag_p90_seconds",
          "loop_lag_p99_ms": "loop_lag_p99_seconds", "sockets": "connected_sockets",
          "db_connections_active": "db_connections_active"}
SCALE = {"memory_mb": 1 / MB, "heap_mb": 1 / MB, "loop_lag_ms": 1000.0, "loop_lag_p50_ms": 1000.0,
         "loop_lag_p90_ms": 1000.0, "loop_lag_p99_ms": 1000.0, "sockets": 1.0, "db_connections_active": 1.0}
COUNTERS = ("cpu_seconds", "gc_seconds", "cache_hits", "cache_misses", "db_connection_attempts", "db_connection_failures")
# the judged quantities (criteria metric names) and what each needs
QUANTITY_CONCEPTS = {
    "memory_mb": ("resident_memory_bytes",), "memory_pct_of_limit": ("resident_memory_bytes",),
    "memory_growth_mb_per_h": ("resident_memory_bytes",), "heap_mb": ("heap_used_bytes",),
    "event_loop_lag_p95_ms": ("loop_lag_seconds",), "cpu_pct": ("cpu_seconds",), "gc_share": ("gc_seconds",),
    "cache_hit_ratio": ("cache_hits", "cache_misses"),
    "db_connection_failures": ("db_connection_attempts", "db_connection_failures"),
    "loop_lag_p50_ms": ("loop_lag_p50_seconds",), "loop_lag_p90_ms": ("loop_lag_p90_seconds",),
    "loop_lag_p99_ms": ("loop_lag_p99_seconds",),
    "connected_sockets": ("connected_sockets",), "db_connections_active": ("db_connections_active",),
    "scrape_success": (),
}


@dataclass(frozen=True)
class Telemetry:
    """One run's scrapes: `scrapes` has one row per successful scrape (time-ordered) with stage, phase, elapsed_s
    and one column per concept (summed over label sets); `outcomes` one row per attempt (stage, phase, outcome)."""

    scrapes: pd.DataFrame
    outcomes: pd.DataFrame
    names: dict[str, tuple[str, ...]]
    url: str = ""
    limit_mb: float | None = None
    why_none: str = ""  # when there is no telemetry at all: why

    def missing(self, concepts: Sequence[str]) -> str:
        """Why a quantity cannot be had ('' when it can): no scrape succeeded, or a concept was not exposed."""
        if self.why_none:
            return self.why_none
        if self.scrapes.empty:
            return f"no successful scrape of {self.url} ({failure_text(self.outcomes)}); nothing is known of the server"
        absent = [c for c in concepts if c not in self.scrapes or self.scrapes[c].isna().all()]
        return "; ".join(f"{concept} not in the scraped metrics (looked for {', '.join(self.names.get(concept, ()))}; "
                         "set metrics.names in the target profile)" for concept in absent)

    @cached_property
    def per_scrape(self) -> pd.DataFrame:
        """Derived quantities at every successful scrape: the gauges in their units, and the counters' rates over the
        interval that ended at the scrape (cpu_pct, gc_share as shares; a counter reset counts from zero). Derived
        once: judging reads it for every quantity of every stage."""
        scrapes = self.scrapes
        out = scrapes[["time", "elapsed_s", "stage", "phase"]].copy()
        for quantity, concept in GAUGES.items():
            if concept in scrapes:
                out[quantity] = scrapes[concept] * SCALE[quantity]
        seconds = scrapes["time"].diff()
        for concept in COUNTERS:
            if concept in scrapes:
                step = scrapes[concept].diff()
                out[f"{concept}_increase"] = step.where(step >= 0, scrapes[concept])
        out["seconds"] = seconds
        if "cpu_seconds_increase" in out:
            out["cpu_pct"] = out["cpu_seconds_increase"] / seconds
        if "gc_seconds_increase" in out:
            out["gc_share"] = out["gc_seconds_increase"] / seconds
        return out


def failure_text(outcomes: pd.DataFrame) -> str:
    """'12 attempts: 12 timeout' — the reasons, most frequent first."""
    if outcomes.empty:
        return "no scrape attempted"
    counts = outcomes["outcome"].value_counts()
    return f"{len(outcomes)} attempts: " + ", ".join(f"{count} {outcome}" for outcome, count in counts.items())


def load_telemetry(run: RunData) -> Telemetry:
    """The run's telemetry; without any (scraping off, an older results folder) `why_none` says so."""
    info = run.info.get("telemetry") or {}
    names = {**DEFAULT_METRIC_NAMES, **{k: tuple(v) for k, v in (info.get("names") or {}).items()}}
    empty = pd.DataFrame(columns=["time", "stage", "phase", "outcome"])
    if info.get("enabled") is False:
        return Telemetry(pd.DataFrame(), empty, names, why_none="no server telemetry: scraping was off (--no-scrape)")
    if run.telemetry is None:
        return Telemetry(pd.DataFrame(), empty, names, why_none="no server telemetry: the results folder has no telemetry.csv")
    frame = run.telemetry
    attempts = frame[frame["metric"] == SCRAPE_METRIC]
    outcomes = attempts.assign(outcome=attempts["labels"].str.extract(r'outcome="([^"]*)"', expand=False))[
        ["time", "stage", "phase", "outcome"]]
    ok_times = outcomes.loc[outcomes["outcome"] == SCRAPE_OK, "time"]
    samples = frame[frame["time"].isin(ok_times) & (frame["metric"] != SCRAPE_METRIC)]
    by_name = samples.groupby(["time", "metric"])["value"].sum().unstack("metric")
    # each concept from the first of its names that the scrapes carry
    concepts = pd.DataFrame({concept: by_name[next(name for name in candidates if name in by_name)]
                             for concept, candidates in names.items() if any(name in by_name for name in candidates)},
                            index=by_name.index)
    where = outcomes[outcomes["outcome"] == SCRAPE_OK].drop_duplicates("time").set_index("time")[["stage", "phase"]]
    elapsed = frame.drop_duplicates("time").set_index("time")["elapsed_s"]
    scrapes = where.join(elapsed).join(concepts).sort_index().reset_index()
    return Telemetry(scrapes, outcomes, names, str(info.get("url", "")), info.get("container_limit_mb"))


# --- values over a judged window --------------------------------------------------------------------------------


@dataclass(frozen=True)
class WindowValue:
    value: float | None
    scrapes: int
    note: str = ""
    low: float | None = None
    high: float | None = None


def window_value(telemetry: Telemetry, quantity: str, stages: Sequence[int], phases: Sequence[str] = (STEADY,),
                 confidence: float = 0.95) -> WindowValue:
    """One judged value of `quantity` over the scrapes of the given stages and phases."""
    return Window(telemetry, stages, phases).value(quantity, confidence)


class Window:
    """The scrapes of some stages and phases, selected once for every quantity judged over them: selected again
    for each of the server table's 14 quantities, they took 0.20 s of a smoke run's table, now 0.04 s."""

    def __init__(self, telemetry: Telemetry, stages: Sequence[int], phases: Sequence[str] = (STEADY,)) -> None:
        self.telemetry, self.stages, self.phases = telemetry, stages, phases

    @cached_property
    def rows(self) -> pd.DataFrame:
        series = self.telemetry.per_scrape
        return series[series["stage"].isin(self.stages) & series["phase"].isin(self.phases)]

    @cached_property
    def later(self) -> pd.DataFrame:
        """A rate's first row in the window covers the interval before it: only later rows count."""
        rows = self.rows
        return rows[rows.groupby(["stage", "phase"]).cumcount() > 0]

    def value(self, quantity: str, confidence: float = 0.95) -> WindowValue:
        if quantity == "scrape_success":
            return self.scrape_success()
        telemetry = self.telemetry
        missing = telemetry.missing(QUANTITY_CONCEPTS[quantity])
        if missing:
            return WindowValue(None, 0, missing)
        if quantity == "memory_pct_of_limit" and not telemetry.limit_mb:
            return WindowValue(None, 0, "the target profile sets no metrics.container_limit_mb")
        rows, later = self.rows, self.later
        needed = MIN_SLOPE_SCRAPES if quantity == "memory_growth_mb_per_h" else MIN_SCRAPES
        if len(rows) < needed:
            return WindowValue(None, len(rows), f"{len(rows)} successful scrapes in the judged phase; {quantity} needs "
                                                f"{needed} (a longer hold or a shorter --scrape-interval)")
        count = len(rows)
        if quantity == "memory_mb":
            return WindowValue(float(rows["memory_mb"].max()), count)
        if quantity == "heap_mb":
            return WindowValue(float(rows["heap_mb"].max()), count)
        if quantity == "memory_pct_of_limit":
            return WindowValue(float(rows["memory_mb"].max() / telemetry.limit_mb), count)
        if quantity == "event_loop_lag_p95_ms":
            return WindowValue(float(rows["loop_lag_ms"].quantile(0.95)), count)
        if quantity.startswith("loop_lag_p"):  # the server's own percentile gauges: their typical (median) reading
            return WindowValue(float(rows[quantity].median()), count)
        if quantity in ("connected_sockets", "db_connections_active"):
            return WindowValue(float(rows["sockets" if quantity == "connected_sockets" else quantity].max()), count)
        if quantity in ("cpu_pct", "gc_share"):
            counter = "cpu_seconds_increase" if quantity == "cpu_pct" else "gc_seconds_increase"
            return WindowValue(float(later[counter].sum() / later["seconds"].sum()), count)
        if quantity == "cache_hit_ratio":
            lookups = later["cache_hits_increase"].sum() + later["cache_misses_increase"].sum()
            if lookups == 0:
                return WindowValue(None, count, "no cache lookups in the judged phase")
            return WindowValue(float(later["cache_hits_increase"].sum() / lookups), count)
        if quantity == "db_connection_failures":
            attempts = later["db_connection_attempts_increase"].sum()
            if attempts == 0:
                return WindowValue(None, count, "no database connection requested in the judged phase")
            return WindowValue(float(later["db_connection_failures_increase"].sum() / attempts), count)
        span = rows["time"].max() - rows["time"].min()
        if span < MIN_SLOPE_WINDOW_S:
            return WindowValue(None, count, f"the judged phase's scrapes span {span:.0f} s; memory growth needs "
                                            f"{MIN_SLOPE_WINDOW_S:g} s (a longer hold)")
        slope = memory_growth(rows, confidence)
        return WindowValue(slope[0], count, "", slope[1], slope[2])

    def scrape_success(self) -> WindowValue:
        telemetry = self.telemetry
        outcomes = telemetry.outcomes
        attempts = outcomes[outcomes["stage"].isin(self.stages) & outcomes["phase"].isin(self.phases)]
        if telemetry.why_none or attempts.empty:
            return WindowValue(None, 0, telemetry.why_none or "no scrape attempted in the judged phase")
        return WindowValue(float((attempts["outcome"] == SCRAPE_OK).mean()), len(attempts),
                           "" if (attempts["outcome"] == SCRAPE_OK).all() else failure_text(attempts))


def memory_growth(rows: pd.DataFrame, confidence: float = 0.95) -> tuple[float, float, float]:
    """Resident memory growth in MB/h over the rows: Theil-Sen slope (robust to a GC's dip or a spike) and its
    `confidence` interval. The interval assumes independent residuals; memory readings are autocorrelated, so
    read it as a lower bound on the uncertainty."""
    from scipy.stats import theilslopes  # here: scipy.stats takes a second to import, and most reports fit no slope

    result = theilslopes(rows["memory_mb"].to_numpy(), rows["time"].to_numpy() / 3600.0, alpha=confidence)
    return float(result.slope), float(result.low_slope), float(result.high_slope)


def memory_per_socket(telemetry: Telemetry, confidence: float = 0.95) -> WindowValue:
    """MB of resident memory per connected socket over the whole run (Theil-Sen of memory against sockets):
    a leak in socket listeners shows as memory that follows the socket count and does not come back."""
    missing = telemetry.missing(("resident_memory_bytes", "connected_sockets"))
    if missing:
        return WindowValue(None, 0, missing)
    series = telemetry.per_scrape.dropna(subset=["memory_mb", "sockets"])
    if series["sockets"].nunique() < 3:
        return WindowValue(None, len(series), "the socket count took fewer than 3 distinct values")
    from scipy.stats import theilslopes  # here: scipy.stats takes a second to import, and most reports fit no slope

    result = theilslopes(series["memory_mb"].to_numpy(), series["sockets"].to_numpy(), alpha=confidence)
    return WindowValue(float(result.slope), len(series), "", float(result.low_slope), float(result.high_slope))


# --- the run's server table -------------------------------------------------------------------------------------

TABLE_QUANTITIES = ("memory_mb", "memory_growth_mb_per_h", "heap_mb", "cpu_pct", "event_loop_lag_p95_ms", "loop_lag_p50_ms",
                    "loop_lag_p90_ms", "loop_lag_p99_ms", "gc_share",
                    "connected_sockets", "db_connections_active", "cache_hit_ratio", "db_connection_failures",
                    "scrape_success")


def server_table(telemetry: Telemetry, stages: pd.DataFrame) -> pd.DataFrame:
    """Per stage (steady phase) and for all steady phases together (stage 0): every server quantity, long format
    (stage, quantity, value, low, high, scrapes, note)."""
    keys = [(int(stage), [int(stage)]) for stage in stages.index] + [(0, [int(stage) for stage in stages.index])]
    windows = {key: Window(telemetry, ids) for key, ids in keys}
    rows = [{"stage": key, "quantity": quantity, **windows[key].value(quantity).__dict__}
            for key, _ in keys for quantity in TABLE_QUANTITIES]
    return pd.DataFrame(rows, columns=["stage", "quantity", "value", "scrapes", "note", "low", "high"])


def server_summary(telemetry: Telemetry, stages: pd.DataFrame) -> dict[str, Any]:
    """What verdict.json says of the server: the scrapes, the per-stage table and the memory per socket."""
    table = server_table(telemetry, stages)
    per_socket = memory_per_socket(telemetry)
    return {"url": telemetry.url, "why_none": telemetry.why_none or None,
            "scrapes": failure_text(telemetry.outcomes),
            "failures": telemetry.outcomes.loc[telemetry.outcomes["outcome"] != SCRAPE_OK, "outcome"].value_counts().to_dict(),
            "container_limit_mb": telemetry.limit_mb,
            "memory_mb_per_socket": per_socket.__dict__,
            "stages": [{key: (None if isinstance(value, float) and np.isnan(value) else value) for key, value in row.items()}
                       for row in table.to_dict(orient="records")]}


def steady_memory_mb(run: RunData) -> pd.DataFrame:
    """Resident memory per stage's steady phase (stage, users, memory_mb mean, scrapes): what a capacity projection
    needs for MB per user. Empty when the run has no memory telemetry."""
    telemetry = load_telemetry(run)
    if telemetry.missing(("resident_memory_bytes",)):
        return pd.DataFrame(columns=["stage", "users", "memory_mb", "scrapes"])
    series = telemetry.per_scrape
    steady = series[(series["phase"] == STEADY) & (series["stage"] > 0)]
    per_stage = steady.groupby("stage").agg(memory_mb=("memory_mb", "mean"), scrapes=("memory_mb", "size"))
    return per_stage.join(run.stages["users"]).reset_index()[["stage", "users", "memory_mb", "scrapes"]]



def sustained_s(telemetry: Telemetry, quantity: str, stages: Sequence[int], phases: Sequence[str],
                violated: Callable[[Any], np.ndarray]) -> float:
    """`for` windows on a rate (cpu_pct): the longest run of consecutive scrape intervals that all violate a level,
    in seconds."""
    series = telemetry.per_scrape
    rows = series[series["stage"].isin(stages) & series["phase"].isin(phases)]
    rows = rows[rows.groupby(["stage", "phase"]).cumcount() > 0]
    bad = pd.Series(violated(rows[quantity]), index=rows.index, dtype=bool)
    if not bad.any():
        return 0.0
    run_id = (~bad).cumsum()
    return float(rows.loc[bad, "seconds"].groupby(run_id[bad]).sum().max())


COMPARED = ("memory_growth_mb_per_h", "event_loop_lag_p95_ms")


def compare_server(base: RunData, candidate: RunData) -> pd.DataFrame:
    """Memory growth and event-loop lag p95 per stage of both runs (steady phases; stage 0: all of them). Growth is
    called higher or lower only when the two intervals do not overlap; the lag has no interval and is shown only.
    Reported beside compare's table; not part of its exit code."""
    tables = [server_table(load_telemetry(run), run.stages).query("quantity in @COMPARED").set_index(["stage", "quantity"])
              for run in (base, candidate)]
    both = tables[0][["value", "low", "high"]].merge(tables[1][["value", "low", "high"]], left_index=True, right_index=True,
                                                     suffixes=("_base", "_candidate")).reset_index()
    both["change"] = both["value_candidate"] - both["value_base"]
    higher, lower = both["low_candidate"] > both["high_base"], both["high_candidate"] < both["low_base"]
    both["verdict"] = np.select(
        [both[["value_base", "value_candidate"]].isna().any(axis=1), both["quantity"] != "memory_growth_mb_per_h",
         higher, lower], ["no data", "shown only", "higher (intervals apart)", "lower (intervals apart)"],
        "no clear change (intervals overlap)")
    return both
