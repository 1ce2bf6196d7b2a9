"""The metric a criterion judges, measured on the rows selection chose: per (stage, endpoint) group from the summary
rows (exact merged percentiles from the histograms), or per second from the 1-second series for `for:` windows."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from analysis.criteria import CORRECTED, Condition, Criterion, Metric
from analysis.load import ALL_ENDPOINTS, CENSORED_COLUMNS, OK_PERCENTILE_COLUMNS, PERCENTILE_COLUMNS, Histograms
from analysis.selection import endpoint_mask
from medianest_load.results_format import CORRECTED_COLUMNS, censored

if TYPE_CHECKING:
    from analysis.judging import Evidence

ALL_STAGES = 0  # the stage key of a value merged over every judged stage


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
        assert metric.column is not None  # every latency metric names its summary column (analysis/criteria.py)
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


def series_per_second(evidence: Evidence, criterion: Criterion, stage_ids: pd.Index, merge_stages: bool) -> pd.DataFrame:
    """The metric per (stage_key, endpoint_key, second) over the judged seconds of the chosen stages."""
    series = evidence.timeseries  # its ALL rows say which seconds were judged and how long each was
    assert series is not None  # judging asks for windows only with the series at hand
    steady = series[series["phase"].isin(criterion.phases) & series["stage"].isin(stage_ids)]
    seconds = steady.loc[steady["endpoint"] == ALL_ENDPOINTS, ["stage", "time", "interval_s"]].drop_duplicates(["stage", "time"])
    seconds = seconds.assign(stage_key=ALL_STAGES if merge_stages else seconds["stage"])
    sums = [_per_second_sums(chunk, criterion, stage_ids, merge_stages) for chunk in evidence.chunks()]
    per_second = pd.concat(sums).groupby(level=[0, 1, 2]).agg(PER_SECOND_SUMS).reset_index()
    if criterion.metric.family == "rps":  # a second without requests is a second at 0 req/s
        pairs = per_second[["stage_key", "endpoint_key"]].drop_duplicates()
        grid = seconds[["stage_key", "time", "interval_s"]].merge(pairs, on="stage_key")
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
    groups = [*(per_second[key][violated] for key in keys), run_id[violated]]
    runs = per_second[violated].groupby(groups)["time"].agg(["min", "max"])
    return (runs["max"] - runs["min"] + 1).groupby(level=[0, 1]).max().rename_axis(keys)
