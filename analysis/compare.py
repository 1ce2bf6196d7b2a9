"""Compare two runs: per stage x endpoint (and ALL, every endpoint of the stage together), what moved (p95, p99, error rate, throughput) and whether the move
is real. A change is a regression only when it is both

- statistically clear: a one-sided Mann-Whitney U test on per-window values (windows of the 1-second series,
  10 s by default) rejects "no shift" after Holm's correction. A comparison runs a hundred tests or more
  (uncorrected, a clean pair would flag something), so alpha is split in two families, Holm within each:
  the stage-level ALL rows (few, many samples per window: the power) and the per-endpoint rows (where);
  the chance of any false flag stays below alpha. Adjacent seconds are autocorrelated, windows much less,
  so the test never sees raw samples; and
- practically large: the exact run-level values (HdrHistogram percentiles, totals) moved by at least the
  relative threshold (10 %) and, for latency, by at least 5 ms, for the error rate by 0.5 percentage points.

Throughput is judged per stage (ALL) only: a closed-loop user waits for its answer and thinks, so an
endpoint's own request rate follows how many users of its kind the generator ran (one Socket.IO user more or
less halves a push rate in a small run) more than the server; per-endpoint rates are reported as info.

Per-window values: p95 = median of the seconds' p95; p99 = the window's slowest sample (the series keeps no
per-second p99, and the maximum is the tail statistic it does keep); error rate = failures / requests;
throughput = requests / window length.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy.stats import mannwhitneyu

from analysis.load import ALL_ENDPOINTS, STEADY, RunData
from analysis.server import compare_server

METRICS = {"p95_ms": "higher", "p99_ms": "higher", "error_rate": "higher", "rps": "lower"}  # the worse direction
REGRESSION, IMPROVEMENT, UNCHANGED, NOISE, INSUFFICIENT = "regression", "improvement", "no change", "not clear", "too few windows"
INFO = "info only"  # per-endpoint throughput: in a closed loop it follows how many users of each kind ran


class CompareError(ValueError):
    """Two runs that cannot be compared: the message is one line."""


@dataclass(frozen=True)
class Thresholds:
    relative: float = 0.10        # practical: at least 10 % ...
    latency_ms: float = 5.0       # ... and at least 5 ms for p95 / p99
    error_points: float = 0.005   # ... and at least 0.5 percentage points for the error rate
    alpha: float = 0.01           # statistical: one-sided Mann-Whitney on per-window values, Holm-corrected
    window_s: int = 10
    min_windows: int = 5          # per run and stage x endpoint; fewer and nothing is claimed


@dataclass(frozen=True)
class Comparison:
    base: RunData
    candidate: RunData
    table: pd.DataFrame           # one row per stage x endpoint x metric
    thresholds: Thresholds = field(default_factory=Thresholds)
    notes: tuple[str, ...] = ()
    server: pd.DataFrame | None = None  # analysis.server.compare_server: memory growth and loop lag, shown only

    @property
    def regressions(self) -> pd.DataFrame:
        return self.table[self.table["verdict"] == REGRESSION]

    @property
    def exit_code(self) -> int:
        return 1 if len(self.regressions) else 0

    @property
    def headline(self) -> str:
        counts = self.table["verdict"].value_counts()
        parts = ", ".join(f"{counts.get(verdict, 0)} {verdict}" for verdict in (REGRESSION, IMPROVEMENT, NOISE, UNCHANGED, INSUFFICIENT))
        status = "REGRESSION" if self.exit_code else "NO REGRESSION"
        return f"{status}: {self.candidate.name} against {self.base.name} ({parts})"


def exact_values(run: RunData) -> pd.DataFrame:
    """Run-level values per steady stage x endpoint, plus ALL (every endpoint of the stage, histograms merged),
    long format: stage, endpoint, metric, value."""
    steady = run.steady
    per_stage = steady.groupby("stage").agg(requests=("requests", "sum"), failures=("failures", "sum"),
                                            duration_s=("duration_s", "max"))
    merged = run.histograms.group_percentiles(steady, ["stage"], {"p95_ms": 95.0, "p99_ms": 99.0})
    everything = per_stage.join(merged).assign(endpoint=ALL_ENDPOINTS).set_index("endpoint", append=True)
    rows = pd.concat([steady.set_index(["stage", "endpoint"]), everything])
    values = rows[["p95_ms", "p99_ms"]].assign(error_rate=rows["failures"] / rows["requests"],
                                               rps=rows["requests"] / rows["duration_s"].where(rows["duration_s"] > 0))
    return values.rename_axis(columns="metric").stack().rename("value").reset_index()


def window_values(run: RunData, window_s: int) -> pd.DataFrame:
    """Per-window values of the steady 1-second series, long format: stage, endpoint, metric, window, value."""
    series = run.timeseries[(run.timeseries["phase"] == STEADY) & (run.timeseries["stage"] > 0)]
    first = series.groupby("stage")["time"].transform("min")
    series = series.assign(window=(series["time"] - first) // window_s)
    # the wall seconds each window covers (a late tick makes a row longer than one second)
    seconds = series[series["endpoint"] == ALL_ENDPOINTS].groupby(["stage", "window"])["interval_s"].sum().rename("seconds")
    per_endpoint = series.groupby(["stage", "endpoint", "window"]).agg(
        requests=("requests", "sum"), failures=("failures", "sum"), p95_ms=("p95_ms", "median"), p99_ms=("max_ms", "max"))
    # throughput counts every second of the window, also those in which the endpoint sent nothing
    endpoints = per_endpoint.reset_index()[["stage", "endpoint"]].drop_duplicates()
    grid = endpoints.merge(seconds.reset_index(), on="stage").set_index(["stage", "endpoint", "window"])
    windows = grid.join(per_endpoint).fillna({"requests": 0, "failures": 0})
    windows = windows[windows["seconds"] >= max(window_s // 2, 1)]
    windows["error_rate"] = windows["failures"] / windows["requests"].where(windows["requests"] > 0)
    windows["rps"] = windows["requests"] / windows["seconds"]
    return windows[list(METRICS)].rename_axis(columns="metric").stack().rename("value").reset_index()


def _tests(base: pd.DataFrame, candidate: pd.DataFrame, keys: list[str], alternative: str, min_windows: int) -> pd.Series:
    """One-sided Mann-Whitney p-value per group, all groups in one vectorised call (NaN-padded)."""
    def padded(frame: pd.DataFrame) -> pd.DataFrame:
        frame = frame.dropna(subset=["value"])
        frame = frame.assign(rank=frame.groupby(keys).cumcount())
        return frame.pivot_table(index=keys, columns="rank", values="value", aggfunc="first")
    left, right = padded(candidate), padded(base)
    index = left.index.intersection(right.index)
    left, right = left.reindex(index), right.reindex(index)
    enough = (left.notna().sum(axis=1) >= min_windows) & (right.notna().sum(axis=1) >= min_windows)
    if not enough.any():
        return pd.Series(np.nan, index=index, dtype=float)
    width = max(left.shape[1], right.shape[1])
    a = left[enough].reindex(columns=range(width)).to_numpy(dtype=float)
    b = right[enough].reindex(columns=range(width)).to_numpy(dtype=float)
    result = mannwhitneyu(a, b, alternative=alternative, axis=1, nan_policy="omit")
    return pd.Series(np.asarray(result.pvalue, dtype=float), index=index[enough.to_numpy()]).reindex(index)


def compare_runs(base: RunData, candidate: RunData, thresholds: Thresholds = Thresholds()) -> Comparison:
    keys = ["stage", "endpoint", "metric"]
    exact = exact_values(base).merge(exact_values(candidate), on=keys, suffixes=("_base", "_candidate"))
    if exact.empty:
        raise CompareError(f"{base.path} and {candidate.path}: no steady stage x endpoint in common; "
                           "expected two runs of the same scenario")
    windows_base, windows_candidate = (window_values(run, thresholds.window_s) for run in (base, candidate))
    windows_base, windows_candidate = windows_base[~_info_only(windows_base)], windows_candidate[~_info_only(windows_candidate)]

    def one_sided(towards_worse: bool) -> pd.Series:
        """Adjusted p-values of "the candidate moved towards worse" (or towards better) for every row."""
        return _adjusted(pd.concat([
            _tests(windows_base[windows_base["metric"] == metric], windows_candidate[windows_candidate["metric"] == metric],
                   keys, "greater" if (worse == "higher") == towards_worse else "less", thresholds.min_windows)
            for metric, worse in METRICS.items()]))

    p_worse, p_better = one_sided(True), one_sided(False)
    counts = [frame.dropna(subset=["value"]).groupby(keys).size().rename(name)
              for frame, name in ((windows_base, "windows_base"), (windows_candidate, "windows_candidate"))]
    table = (exact.set_index(keys).join(p_worse.rename("p_worse")).join(p_better.rename("p_better")).join(counts)
             .fillna({"windows_base": 0, "windows_candidate": 0}).reset_index())
    table = table.astype({"windows_base": int, "windows_candidate": int})
    table["change"] = table["value_candidate"] - table["value_base"]
    table["change_pct"] = table["change"] / table["value_base"].where(table["value_base"] != 0) * 100
    table["verdict"] = np.where(_info_only(table), INFO, _verdicts(table, thresholds))
    stages = candidate.steady.groupby("stage").agg(stage_name=("stage_name", "first"), users=("users", "first"))
    table = table.join(stages, on="stage")
    notes = _stage_notes(base, candidate)
    columns = ["stage", "stage_name", "users", "endpoint", "metric", "value_base", "value_candidate", "change", "change_pct",
               "windows_base", "windows_candidate", "p_worse", "p_better", "verdict"]
    return Comparison(base, candidate, table[columns].sort_values(keys).reset_index(drop=True), thresholds, notes,
                      compare_server(base, candidate))


def _info_only(frame: pd.DataFrame) -> np.ndarray:
    """The per-endpoint throughput rows: reported, never tested."""
    return ((frame["metric"] == "rps") & (frame["endpoint"] != ALL_ENDPOINTS)).to_numpy()


def _adjusted(p_values: pd.Series) -> pd.Series:
    """Holm within the stage-level (ALL) family and within the per-endpoint family, each at alpha / 2:
    p-values are doubled here so that the reader compares them with alpha itself."""
    stage_level = p_values.index.get_level_values("endpoint") == ALL_ENDPOINTS
    return pd.concat([holm(p_values[stage_level]), holm(p_values[~stage_level])]).mul(2).clip(upper=1.0).reindex(p_values.index)


def holm(p_values: pd.Series) -> pd.Series:
    """Holm-Bonferroni adjusted p-values (NaN stays NaN): family-wise error at most alpha over all tests."""
    tested = p_values.dropna().sort_values()
    m = len(tested)
    adjusted = np.minimum(np.maximum.accumulate((m - np.arange(m)) * tested.to_numpy()), 1.0)
    return pd.Series(adjusted, index=tested.index).reindex(p_values.index)


def _verdicts(table: pd.DataFrame, t: Thresholds) -> np.ndarray:
    """regression / improvement (clear and large), not clear (large only), no change, too few windows."""
    worse_higher = table["metric"].map(METRICS).eq("higher").to_numpy()
    change = table["change"].to_numpy()
    relative = np.abs(change) / np.where(table["value_base"].to_numpy() > 0, table["value_base"].to_numpy(), np.nan)
    relative_ok = np.nan_to_num(relative, nan=np.inf) >= t.relative   # from zero, any change is relative enough
    floor = np.select([table["metric"].isin(["p95_ms", "p99_ms"]), table["metric"].eq("error_rate")],
                      [t.latency_ms, t.error_points], 0.0)
    large = relative_ok & (np.abs(change) >= floor) & (change != 0)
    worse = np.where(worse_higher, change > 0, change < 0)
    p_worse, p_better = table["p_worse"].to_numpy(), table["p_better"].to_numpy()
    untested = np.isnan(p_worse)
    return np.select(
        [large & worse & (p_worse < t.alpha), large & ~worse & (p_better < t.alpha), untested & large, large],
        [REGRESSION, IMPROVEMENT, INSUFFICIENT, NOISE], UNCHANGED)


def _stage_notes(base: RunData, candidate: RunData) -> tuple[str, ...]:
    users = base.stages["users"].to_frame("base").join(candidate.stages["users"].rename("candidate"), how="outer")
    differing = users[users["base"] != users["candidate"]]
    return tuple(f"stage {stage}: {row.base} users in the base run, {row.candidate} in the candidate"
                 for stage, row in differing.iterrows())
