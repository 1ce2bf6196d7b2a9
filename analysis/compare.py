"""Compare two runs: per stage x endpoint (and ALL, every endpoint of the stage together), what moved (p95, p99,
error rate, throughput) and whether the move is real. A change is a regression only when it is both

- statistically clear: a one-sided Mann-Whitney U test on per-window values (windows of the 1-second series;
  by default, per stage, the largest window that still gives `min_windows` in both runs) rejects "no shift"
  after Holm's correction. A comparison runs a hundred tests or more (uncorrected, a clean pair would flag
  something), so alpha is split in two families, Holm within each: the stage-level ALL rows (few, many samples
  per window: the power) and the per-endpoint rows (where); the chance of any false flag stays below alpha.
  Adjacent seconds are autocorrelated, windows much less, so the test never sees raw samples. The error rate is
  also tested on the run's totals with Fisher's exact test (one-sided), so that 0 % against 20 % over a few
  hundred requests is clear even when a short run has few windows; the two p-values of an error-rate row are
  combined with Bonferroni (twice the smaller one), so the family's error stays below alpha; and
- practically large: the exact run-level values (HdrHistogram percentiles, totals) moved by at least the
  relative threshold (10 %) and, for latency, by at least 5 ms, for the error rate by 0.5 percentage points.

The comparison's outcome is REGRESSION (exit 1) when a row is a regression, else INCONCLUSIVE (exit 3) when a row
could not be judged (too few windows, see `_verdicts`), else NO REGRESSION (exit 0): never a pass by default for
what was not measured.

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

from analysis.load import ALL_ENDPOINTS, STEADY, RunData
from analysis.server import compare_server
from medianest_load.inputs import InputError
from medianest_load.vocabulary import CompareOutcome, ExitCode

METRICS = {"p95_ms": "higher", "p99_ms": "higher", "error_rate": "higher", "rps": "lower"}  # the worse direction
REGRESSION, IMPROVEMENT, UNCHANGED, NOISE, INSUFFICIENT = "regression", "improvement", "no change", "not clear", "too few windows"
INFO = "info only"  # per-endpoint throughput: in a closed loop it follows how many users of each kind ran
KEYS = ["stage", "endpoint", "metric"]
# what run.json says about how a run was made: two runs that differ here measure different things
RUN_FACTS = {"scenario_name": "scenario", "target_profile": "target profile", "time_scale": "time scale"}


class CompareError(InputError):
    """Two runs that cannot be compared: the message is one line."""


@dataclass(frozen=True, kw_only=True)
class Thresholds:
    relative: float = 0.10        # practical: at least 10 % ...
    latency_ms: float = 5.0       # ... and at least 5 ms for p95 / p99
    error_points: float = 0.005   # ... and at least 0.5 percentage points for the error rate
    alpha: float = 0.01           # statistical: one-sided Mann-Whitney on per-window values, Holm-corrected
    window_s: int | None = None   # None: per stage, the largest window giving min_windows in both runs (--window auto)
    # per run and stage x endpoint; fewer and nothing is claimed. 8 is the fewest with which a one-sided Mann-Whitney
    # test can reach p < 0.01 after Holm over the stage-level family (best p with 8 against 8 windows: 1 / C(16, 8))
    min_windows: int = 8


@dataclass(frozen=True)
class Comparison:
    base: RunData
    candidate: RunData
    table: pd.DataFrame           # one row per stage x endpoint x metric
    thresholds: Thresholds = field(default_factory=Thresholds)
    notes: tuple[str, ...] = ()
    allow_inconclusive: bool = False  # --allow-inconclusive: the user accepts rows that could not be judged
    server: pd.DataFrame | None = None  # analysis.server.compare_server: memory growth and loop lag, shown only

    @property
    def regressions(self) -> pd.DataFrame:
        return self.table[self.table["verdict"] == REGRESSION]

    @property
    def undecided(self) -> pd.DataFrame:
        return self.table[self.table["verdict"] == INSUFFICIENT]

    @property
    def outcome(self) -> CompareOutcome:
        if len(self.regressions):
            return CompareOutcome.REGRESSION
        return CompareOutcome.INCONCLUSIVE if len(self.undecided) else CompareOutcome.NO_REGRESSION

    @property
    def exit_code(self) -> ExitCode:
        if self.outcome == CompareOutcome.REGRESSION:
            return ExitCode.FAILED
        if self.outcome == CompareOutcome.INCONCLUSIVE and not self.allow_inconclusive:
            return ExitCode.INCONCLUSIVE
        return ExitCode.OK

    @property
    def headline(self) -> str:
        counts = self.table["verdict"].value_counts()
        parts = ", ".join(f"{counts.get(verdict, 0)} {verdict}"
                          for verdict in (REGRESSION, IMPROVEMENT, NOISE, UNCHANGED, INSUFFICIENT))
        accepted = (" (accepted: --allow-inconclusive)"
                    if self.outcome == CompareOutcome.INCONCLUSIVE and self.allow_inconclusive else "")
        return f"{self.outcome}{accepted}: {self.candidate.name} against {self.base.name} ({parts})"


def totals(run: RunData) -> pd.DataFrame:
    """Requests, failures and steady seconds per steady stage x endpoint, plus the stage's ALL row."""
    steady = run.steady
    per_stage = steady.groupby("stage").agg(requests=("requests", "sum"), failures=("failures", "sum"),
                                            duration_s=("duration_s", "max")).assign(endpoint=ALL_ENDPOINTS)
    rows = pd.concat([steady[["stage", "endpoint", "requests", "failures", "duration_s"]],
                      per_stage.reset_index()])
    return rows.set_index(["stage", "endpoint"])


def exact_values(run: RunData) -> pd.DataFrame:
    """Run-level values per steady stage x endpoint, plus ALL (every endpoint of the stage, histograms merged),
    long format: stage, endpoint, metric, value."""
    steady = run.steady
    merged = run.histograms.group_percentiles(steady, ["stage"], {"p95_ms": 95.0, "p99_ms": 99.0})
    percentiles = pd.concat([steady.set_index(["stage", "endpoint"])[["p95_ms", "p99_ms"]],
                             merged.assign(endpoint=ALL_ENDPOINTS).set_index("endpoint", append=True)])
    rows = totals(run).join(percentiles)
    values = rows[["p95_ms", "p99_ms"]].assign(error_rate=rows["failures"] / rows["requests"],
                                               rps=rows["requests"] / rows["duration_s"].where(rows["duration_s"] > 0))
    return values.rename_axis(columns="metric").stack().rename("value").reset_index()


def steady_series(run: RunData) -> pd.DataFrame:
    """The 1-second series of the steady phases of real stages."""
    return run.timeseries[(run.timeseries["phase"] == STEADY) & (run.timeseries["stage"] > 0)]


def _window_counts(run: RunData, window_s: pd.Series) -> pd.Series:
    """Per stage, how many windows of the stage's length `window_values` keeps (seconds >= half a window)."""
    series = steady_series(run)
    series = series[(series["endpoint"] == ALL_ENDPOINTS) & series["stage"].isin(window_s.index)]
    length = series["stage"].map(window_s)
    window = (series["time"] - series.groupby("stage")["time"].transform("min")) // length
    seconds = series.groupby([series["stage"], window])["interval_s"].sum()
    kept = seconds >= np.maximum(seconds.index.get_level_values("stage").map(window_s) // 2, 1)
    return kept.groupby(level="stage").sum().reindex(window_s.index, fill_value=0)


def auto_windows(base: RunData, candidate: RunData, stages: pd.Index, min_windows: int) -> pd.Series:
    """Per stage, the largest window (whole seconds, down to 1 s) giving at least min_windows in both runs'
    steady phases: longer windows are less autocorrelated and hold more samples each."""
    window = (_steady_spans(base, candidate, stages) // min_windows).clip(lower=1).astype(int)
    while True:  # the guess from the spans; shorten where late ticks or a partial last window cost a window
        counts = np.minimum(_window_counts(base, window), _window_counts(candidate, window))
        short = (counts < min_windows) & (window > 1)
        if not short.any():
            return window.rename("window_s")
        window = window.where(~short, window - 1)


def window_values(run: RunData, window_s: int | pd.Series) -> pd.DataFrame:
    """Per-window values of the steady 1-second series, long format: stage, endpoint, metric, window, value.
    `window_s`: one length for every stage, or a length per stage (indexed by stage)."""
    series = steady_series(run)
    length = series["stage"].map(window_s) if isinstance(window_s, pd.Series) else pd.Series(window_s, index=series.index)
    series, length = series[length.notna()], length.dropna().astype(int)
    first = series.groupby("stage")["time"].transform("min")
    series = series.assign(window=(series["time"] - first) // length, length=length)
    # the wall seconds each window covers (a late tick makes a row longer than one second)
    everything = series[series["endpoint"] == ALL_ENDPOINTS]
    seconds = everything.groupby(["stage", "window"]).agg(seconds=("interval_s", "sum"), length=("length", "first"))
    per_endpoint = series.groupby(["stage", "endpoint", "window"]).agg(
        requests=("requests", "sum"), failures=("failures", "sum"), p95_ms=("p95_ms", "median"), p99_ms=("max_ms", "max"))
    # throughput counts every second of the window, also those in which the endpoint sent nothing
    endpoints = per_endpoint.reset_index()[["stage", "endpoint"]].drop_duplicates()
    grid = endpoints.merge(seconds.reset_index(), on="stage").set_index(["stage", "endpoint", "window"])
    windows = grid.join(per_endpoint).fillna({"requests": 0, "failures": 0})
    windows = windows[windows["seconds"] >= np.maximum(windows["length"] // 2, 1)]
    windows["error_rate"] = windows["failures"] / windows["requests"].where(windows["requests"] > 0)
    windows["rps"] = windows["requests"] / windows["seconds"]
    return windows[list(METRICS)].rename_axis(columns="metric").stack().rename("value").reset_index()


def _tests(base: pd.DataFrame, candidate: pd.DataFrame, min_windows: int) -> pd.DataFrame:
    """One-sided Mann-Whitney p-values per stage x endpoint x metric, both directions (candidate greater,
    candidate less), every group in one vectorised call per direction (NaN-padded); NaN: too few windows."""
    from scipy.stats import mannwhitneyu  # here: scipy.stats takes a second to import, and only compare tests

    def padded(frame: pd.DataFrame) -> pd.DataFrame:
        frame = frame.dropna(subset=["value"])
        frame = frame.assign(rank=frame.groupby(KEYS).cumcount())
        return frame.pivot_table(index=KEYS, columns="rank", values="value", aggfunc="first")
    left, right = padded(candidate), padded(base)
    index = left.index.intersection(right.index)
    left, right = left.reindex(index), right.reindex(index)
    enough = (left.notna().sum(axis=1) >= min_windows) & (right.notna().sum(axis=1) >= min_windows)
    p = pd.DataFrame(np.nan, index=index, columns=["greater", "less"])
    width = max(left.shape[1], right.shape[1])
    a, b = (side.reindex(columns=range(width)).to_numpy(dtype=float) for side in (left, right))
    # one call per metric: scipy picks the exact or the normal method per call (ties in one metric, say equal
    # request counts, must not move another metric's test to the approximation)
    for metric in index.get_level_values("metric").unique():
        rows = enough.to_numpy() & (index.get_level_values("metric") == metric)
        for alternative in p.columns:
            if rows.any():
                p.loc[rows, alternative] = mannwhitneyu(a[rows], b[rows], alternative=alternative, axis=1,
                                                        nan_policy="omit").pvalue
    return p


def error_rate_exact(base: RunData, candidate: RunData) -> pd.DataFrame:
    """One-sided Fisher exact test on the totals of every stage x endpoint both runs reached: p_worse is
    P(at least the candidate's failures | all failures, both runs' requests), p_better the other tail."""
    from scipy.stats import hypergeom  # here: scipy.stats takes a second to import, and only compare tests

    counts = totals(base)[["requests", "failures"]].join(totals(candidate)[["requests", "failures"]].add_suffix("_candidate"),
                                                         how="inner")
    counts = counts.rename(columns={"requests": "requests_base", "failures": "failures_base"})
    counts = counts[(counts["requests_base"] > 0) & (counts["requests_candidate"] > 0)]
    everything = counts["requests_base"] + counts["requests_candidate"]
    failed = counts["failures_base"] + counts["failures_candidate"]
    drawn = counts["requests_candidate"]
    p = pd.DataFrame({"p_worse": hypergeom.sf(counts["failures_candidate"] - 1, everything, failed, drawn),
                      "p_better": hypergeom.cdf(counts["failures_candidate"], everything, failed, drawn)}, index=counts.index)
    return p.assign(metric="error_rate").set_index("metric", append=True)


def compare_runs(base: RunData, candidate: RunData, thresholds: Thresholds = Thresholds()) -> Comparison:
    shared = base.steady["stage"].unique()
    shared = pd.Index(sorted(set(shared) & set(candidate.steady["stage"].unique())), name="stage")
    if shared.empty:
        raise CompareError(f"{base.path} and {candidate.path}: no steady stage in common; expected two runs of the same scenario")
    exact = exact_values(base).merge(exact_values(candidate), on=KEYS, suffixes=("_base", "_candidate"))
    windows_s = (auto_windows(base, candidate, shared, thresholds.min_windows) if thresholds.window_s is None
                 else pd.Series(thresholds.window_s, index=shared, name="window_s"))
    windows_base, windows_candidate = (window_values(run, windows_s) for run in (base, candidate))
    windows_base, windows_candidate = windows_base[~_info_only(windows_base)], windows_candidate[~_info_only(windows_candidate)]
    exact_tests = error_rate_exact(base, candidate)

    windowed = _tests(windows_base, windows_candidate, thresholds.min_windows)
    worse_higher = windowed.index.get_level_values("metric").map(METRICS) == "higher"

    def one_sided(towards_worse: bool) -> pd.Series:
        """Adjusted p-values of "the candidate moved towards worse" (or towards better) for every row."""
        greater = worse_higher if towards_worse else ~worse_higher
        on_windows = pd.Series(np.where(greater, windowed["greater"], windowed["less"]), index=windowed.index)
        return _adjusted(_either(on_windows, exact_tests["p_worse" if towards_worse else "p_better"]))

    p_worse, p_better = one_sided(True), one_sided(False)
    counts = [frame.dropna(subset=["value"]).groupby(KEYS).size().rename(name)
              for frame, name in ((windows_base, "windows_base"), (windows_candidate, "windows_candidate"))]
    table = (exact.set_index(KEYS).join(p_worse.rename("p_worse")).join(p_better.rename("p_better")).join(counts)
             .fillna({"windows_base": 0, "windows_candidate": 0}).reset_index())
    table = table.astype({"windows_base": int, "windows_candidate": int}).join(windows_s, on="stage")
    table["change"] = table["value_candidate"] - table["value_base"]
    table["change_pct"] = table["change"] / table["value_base"].where(table["value_base"] != 0) * 100
    table["verdict"] = np.where(_info_only(table), INFO, _verdicts(table, thresholds))
    stages = candidate.steady.groupby("stage").agg(stage_name=("stage_name", "first"), users=("users", "first"))
    table = table.join(stages, on="stage")
    table["needs"] = _needs(table, _steady_spans(base, candidate, shared), thresholds.min_windows)
    columns = ["stage", "stage_name", "users", "endpoint", "metric", "value_base", "value_candidate", "change", "change_pct",
               "window_s", "windows_base", "windows_candidate", "p_worse", "p_better", "verdict", "needs"]
    return Comparison(base, candidate, table[columns].sort_values(KEYS).reset_index(drop=True), thresholds,
                      mismatch_notes(base, candidate), server=compare_server(base, candidate))


def _either(windowed: pd.Series, on_totals: pd.Series) -> pd.Series:
    """Each row's p-value: the windowed test's, or for the error rate the smaller of it and the exact test's,
    doubled when both exist (Bonferroni over the two tests of one hypothesis)."""
    both = pd.concat([windowed.rename("windowed"), on_totals.rename("totals")], axis=1)
    tested = both.notna().sum(axis=1)
    return (both.min(axis=1) * tested.clip(lower=1)).clip(upper=1.0).where(tested > 0)


def _steady_spans(base: RunData, candidate: RunData, stages: pd.Index) -> pd.Series:
    """Per stage, the shorter of the two runs' steady phases, in seconds of the series."""
    spans = [steady_series(run).groupby("stage")["time"].agg(lambda t: t.max() - t.min() + 1).reindex(stages, fill_value=0)
             for run in (base, candidate)]
    return np.minimum(*spans).rename("span_s")


def _needs(table: pd.DataFrame, spans: pd.Series, min_windows: int) -> pd.Series:
    """For the rows that could not be judged: what would give them min_windows windows in both runs."""
    undecided = table[table["verdict"] == INSUFFICIENT]
    span = undecided["stage"].map(spans)
    have = np.minimum(undecided["windows_base"], undecided["windows_candidate"])
    # stage-level rows lack seconds, an endpoint's rows seconds with requests: scale the steady phase to match
    hold_s = np.maximum(np.ceil(span * min_windows / have.clip(lower=1)), min_windows * undecided["window_s"]).astype(int)
    shorter = (span // min_windows).astype(int)
    text = [f"{h} of {min_windows} windows of {w} s: " + (f"try --window {s}, or " if 1 <= s < w else "")
            + f"a steady phase of at least {need} s in both runs (now {length} s)"
            for h, w, s, need, length in zip(have, undecided["window_s"], shorter, hold_s, span, strict=True)]
    return pd.Series(text, index=undecided.index, dtype=object).reindex(table.index)


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
    """regression / improvement (clear and large), not clear (large only), no change, too few windows.

    A row that could not be tested has too few windows when it is a stage-level (ALL) row, which must always be
    judged, or when it moved beyond the practical thresholds towards worse (it may be a regression; nothing
    says whether). An untested per-endpoint row that did not move that way cannot be a regression by the
    practical rule, whatever a test would say."""
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
    stage_level = table["endpoint"].eq(ALL_ENDPOINTS).to_numpy()
    return np.select(
        [large & worse & (p_worse < t.alpha), large & ~worse & (p_better < t.alpha),
         untested & (stage_level | (large & worse)), large],
        [REGRESSION, IMPROVEMENT, INSUFFICIENT, NOISE], UNCHANGED)


def mismatch_notes(base: RunData, candidate: RunData) -> tuple[str, ...]:
    """What differs in how the two runs were made (scenario, target profile, time scale, stage users): the
    comparison still runs, but its reader must know."""
    notes = [f"the runs differ in {label}: {base.info.get(key)!r} in the base run, {candidate.info.get(key)!r} in the candidate"
             for key, label in RUN_FACTS.items() if base.info.get(key) != candidate.info.get(key)]
    users = base.stages["users"].to_frame("base").join(candidate.stages["users"].rename("candidate"), how="outer")
    differing = users[users["base"] != users["candidate"]]
    notes += [f"stage {stage}: {_users(row.base)} users in the base run, {_users(row.candidate)} in the candidate"
              for stage, row in differing.iterrows()]
    return tuple(notes)


def _users(value: float) -> str:
    return "no stage" if pd.isna(value) else f"{int(value)}"
