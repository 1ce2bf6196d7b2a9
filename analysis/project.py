"""Capacity projection: fit the Universal Scalability Law to a capacity ladder's steady stages and project
throughput, response time and p95 at larger user counts, with bootstrap intervals and a holdout check.

    X(N) = lambda N / (1 + sigma (N - 1) + kappa N (N - 1))        peak N* = sqrt((1 - sigma) / kappa)

Where the run scraped the server's resident memory, memory is projected too: MB per user from the stages' steady
memory (least squares, intervals from a bootstrap over the stages), memory at each requested N, and the N at
which it reaches the target profile's container limit.

Pure functions over tidy frames: `ladder_input` reads a RunData, `project` does the rest. Every refusal is a
ProjectionError whose message is the one line the user sees. docs/analysis.md ("Capacity projection") is the
user's reference.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from analysis.criteria import Criterion, SloSet
from analysis.judging import generator_limited_stages
from analysis.load import ALL_ENDPOINTS, HTTP_METHODS, STEADY, RunData, endpoint_kind
from analysis.server import load_telemetry, steady_memory_mb
from medianest_load import bounds
from medianest_load.inputs import InputError
from medianest_load.scenario import USER_COUNTS
from medianest_load.vocabulary import Status

MIN_STAGES = 4  # three parameters need at least one degree of freedom
RECOMMENDED_STAGES = 6  # codahale/usl and R's usl ask for about six load levels
COLLAPSE_ERROR_RATE = 0.10  # past this error rate a stage measures failures, not capacity
MIN_WINDOWS = 3  # per stage, for the bootstrap to have something to resample
TARGET_WINDOWS = 15  # windows per stage the window length aims at (at most MAX_WINDOW_S long)
MAX_WINDOW_S = 10
RESAMPLES = 1000
CONFIDENCE = 0.95
EXTRAPOLATION_WARNING = 2.0  # engine notes: warn when projecting past about 2x the largest measured users
PROJECTED_METRICS = {"rps": "throughput", "p95_ms": "p95_estimate_ms"}  # SLO metrics a projection is judged on
SEED = 0  # the bootstrap is seeded: the same folder always gives the same intervals
MIN_MEMORY_STAGES = 3  # a line through two stages has no scatter to give its interval


class ProjectionError(InputError):
    """A refusal (too few stages, no steady data, no convergence): the message is one line, exit 2."""


@dataclass(frozen=True)
class MemoryInput:
    """The server's resident memory per stage's steady phase (stage, users, memory_mb, scrapes; empty without
    telemetry, and `why_none` then says why), and the target profile's container limit (None when unset)."""

    stages: pd.DataFrame
    limit_mb: float | None
    why_none: str = ""


@dataclass(frozen=True)
class LadderInput:
    """The steady input of a ladder. `stages`: one row per stage (users, throughput, mean_ms, p95_ms,
    error_rate, windows, usable, note); `windows`: tidy per-window throughput (stage, window, throughput);
    `memory`: the server's resident memory per stage."""

    stages: pd.DataFrame
    windows: pd.DataFrame
    think_s: float
    window_s: int
    memory: MemoryInput
    notes: tuple[str, ...] = ()

    @property
    def usable(self) -> pd.DataFrame:
        return self.stages[self.stages["usable"]]


@dataclass(frozen=True)
class Interval:
    """A point estimate with its bootstrap interval (inf where the quantity is unbounded, e.g. N* when kappa = 0)."""

    value: float
    low: float
    high: float

    def includes(self, value: float) -> bool:
        return self.low <= value <= self.high


@dataclass(frozen=True)
class Fit:
    """One USL fit: [lambda, sigma, kappa], its bootstrap draws (resamples x 3) and the stages it was fitted to."""

    params: np.ndarray
    draws: np.ndarray
    users: np.ndarray
    throughput: np.ndarray
    r_squared: float
    failed_resamples: int


@dataclass(frozen=True)
class Projected:
    """What the model says at one requested user count, each figure with its interval."""

    users: int
    throughput: Interval
    response_ms: Interval
    p95_estimate_ms: Interval
    extrapolation: float
    beyond_peak: bool
    verdicts: tuple[dict[str, Any], ...]
    status: Status
    labels: tuple[str, ...]
    memory_mb: Interval | None = None  # resident memory, where the run scraped it


@dataclass(frozen=True)
class Holdout:
    """The fit on all but the last `k` usable stages, and how it predicts them."""

    k: int
    params: np.ndarray  # lambda, sigma, kappa fitted without them
    table: pd.DataFrame  # stage, users, measured / predicted throughput and response time, errors %

    @property
    def max_throughput_error_pct(self) -> float:
        return float(self.table["throughput_error_pct"].abs().max())


@dataclass(frozen=True)
class MemoryProjection:
    """Resident memory against users, memory_mb = base_mb + mb_per_user * N: least squares on the used stages'
    steady means (`stages`: stage, users, memory_mb, scrapes), `draws` (resamples x [base_mb, mb_per_user]) its
    bootstrap; `limit_users`: the N at which memory reaches the container limit (None without a limit; inf
    where memory does not grow with users)."""

    params: np.ndarray
    draws: np.ndarray
    stages: pd.DataFrame
    r_squared: float
    base_mb: Interval
    mb_per_user: Interval
    limit_mb: float | None
    limit_users: Interval | None

    def at(self, users: Any) -> np.ndarray:
        """Resident memory (MB) at each of `users`, for every draw (rows) or for the point estimate."""
        return self.params[0] + self.params[1] * np.asarray(users, dtype=float)

    def drawn_at(self, users: Any) -> np.ndarray:
        return self.draws[:, :1] + self.draws[:, 1:] * np.atleast_1d(np.asarray(users, dtype=float))[None, :]


@dataclass(frozen=True)
class Projection:
    """Everything `medianest-load project` reports (projection.json is its serialised form)."""

    ladder: LadderInput
    fit: Fit
    sigma: Interval
    kappa: Interval
    lam: Interval
    peak_users: Interval
    max_throughput: Interval
    peak_reached: bool
    p95_ratio: float
    p95_ratio_stage: int
    projected: tuple[Projected, ...]
    holdout: Holdout | None
    notes: tuple[str, ...]
    slo_name: str
    memory: MemoryProjection | None = None
    memory_note: str = ""  # why memory is not projected ('' when it is)


# --- input ------------------------------------------------------------------------------------------


def think_time_s(info: Mapping[str, Any], source: str = "run.json") -> float:
    """The users' mean think time Z: uniform between think_time min and max, as the scenario ran."""
    scenario = info.get("scenario")
    think: Any = scenario.get("think_time") if isinstance(scenario, dict) else None  # checked by the reads below
    try:
        low, high = float(think["min_s"]), float(think["max_s"])
    except (TypeError, KeyError, ValueError):
        raise ProjectionError(f"{source}: field scenario.think_time is {think!r}; expected {{min_s, max_s}} "
                              "as `medianest-load run` writes it (Little's law needs the think time)") from None
    return (low + high) / 2


def generator_flags(info: Mapping[str, Any], stages: pd.DataFrame) -> pd.Series:
    """Per stage, why the generator's numbers cannot be trusted there ('' when they can). The per-stage health of
    run.json's stages (`generator_limited`, `generator_reason`) wins; a results folder from before it has only the
    run-level `generator_cpu_saturated`, which flags every stage, as it does not say at which one."""
    if "generator_limited" in stages.columns:
        limited = generator_limited_stages(stages)
        return pd.Series({stage: f"the load generator was the bottleneck at this stage ({limited[stage]}): its "
                                 "numbers measure the generator" if stage in limited else "" for stage in stages.index})
    if info.get("generator_cpu_saturated"):
        return pd.Series("the load generator ran out of CPU during the run (run.json generator_cpu_saturated) and "
                         "run.json does not say at which stage", index=stages.index)
    return pd.Series("", index=stages.index)


def _window_length(steady_seconds: pd.Series) -> int:
    """Seconds per window: about TARGET_WINDOWS windows in the shortest steady stage, 1 to MAX_WINDOW_S s."""
    shortest = steady_seconds[steady_seconds > 0].min() if (steady_seconds > 0).any() else 0
    return int(np.clip(shortest // TARGET_WINDOWS, 1, MAX_WINDOW_S))


def http_requests_per_second(run: RunData) -> pd.Series:
    """HTTP requests of every steady second, indexed by (stage, elapsed_s): the series read chunk by chunk, so
    memory follows the stages, not the run's length."""
    parts = []
    for chunk in run.series_chunks():
        rows = chunk[(chunk["phase"] == STEADY) & (chunk["stage"] > 0) & (chunk["endpoint"] != ALL_ENDPOINTS)]
        http = rows[endpoint_kind(rows["endpoint"].str.split(" ", n=1).str[0]).to_numpy() == "http"]
        parts.append(http.groupby(["stage", "elapsed_s"])["requests"].sum())
    return pd.concat(parts).groupby(level=["stage", "elapsed_s"]).sum()


def per_window_throughput(run: RunData, window_s: int | None = None) -> tuple[pd.DataFrame, int]:
    """HTTP requests per second of every whole window of each stage's steady phase, from the 1-second series
    (the ALL rows give each second's interval_s, the HTTP endpoints its requests); only seconds with the stage's
    full user count count, and a trailing part window is dropped."""
    series = run.overview[(run.overview["phase"] == STEADY) & (run.overview["stage"] > 0)]
    full = series["users"] == series["stage"].map(run.stages["users"])  # not the stop's last fraction of a second
    seconds = series[full].set_index(["stage", "elapsed_s"])[["interval_s"]].sort_index()
    seconds["requests"] = http_requests_per_second(run).reindex(seconds.index, fill_value=0)
    seconds = seconds.reset_index()
    window_s = window_s or _window_length(seconds.groupby("stage").size())
    seconds["window"] = seconds.groupby("stage").cumcount() // window_s
    windows = seconds.groupby(["stage", "window"]).agg(seconds=("interval_s", "size"), requests=("requests", "sum"),
                                                       interval_s=("interval_s", "sum")).reset_index()
    windows = windows[windows["seconds"] == window_s].assign(throughput=lambda w: w["requests"] / w["interval_s"])
    return windows[["stage", "window", "throughput"]].reset_index(drop=True), window_s


def ladder_input(run: RunData, collapse_error_rate: float = COLLAPSE_ERROR_RATE, window_s: int | None = None) -> LadderInput:
    """Per stage's steady phase: users, HTTP throughput (mean of its windows), mean and exact p95 response time,
    error rate; and whether the fit may use it (steady data, generator not flagged, not collapsed)."""
    think_s = think_time_s(run.info, str(run.path / "run.json"))
    windows, window_s = per_window_throughput(run, window_s)
    http = run.steady[run.steady["kind"] == "http"]
    per_stage = http.groupby("stage").agg(requests=("requests", "sum"), failures=("failures", "sum"))
    per_stage["mean_ms"] = (http["avg_ms"] * http["requests"]).groupby(http["stage"]).sum() / per_stage["requests"]
    p95 = run.histograms.group_percentiles(http[["stage", "phase", "endpoint"]], ["stage"], {"p95_ms": 95})
    stages = run.stages[["users"]].assign(stage_name=run.stages["name"]).join(per_stage).join(p95)
    stages["error_rate"] = stages["failures"] / stages["requests"].where(stages["requests"] > 0)
    by_stage = windows.groupby("stage")["throughput"]
    stages["throughput"] = by_stage.mean()
    stages["windows"] = by_stage.size().reindex(stages.index, fill_value=0)
    stages["little_ms"] = (stages["users"] / stages["throughput"] - think_s) * 1000
    generator = generator_flags(run.info, run.stages)
    stages["note"] = np.select(
        [stages["requests"].fillna(0) <= 0, stages["windows"] < MIN_WINDOWS, generator != "",
         stages["error_rate"] > collapse_error_rate],
        ["no steady HTTP data", f"fewer than {MIN_WINDOWS} whole {window_s}-s windows in its steady phase",
         "left out: " + generator,
         "collapsed: error rate " + (stages["error_rate"] * 100).map("{:.1f}".format) + f" % above the "
         f"{collapse_error_rate * 100:g} % cut-off; kept out of the fit"], "")
    stages["usable"] = stages["note"] == ""
    stages = stages.rename_axis("stage").reset_index()
    notes = tuple(f"stage {row.stage} ({row.users} users): {row.note}" for row in stages.itertuples() if row.note)
    return LadderInput(stages, windows, think_s, window_s, memory_input(run), notes)


def memory_input(run: RunData) -> MemoryInput:
    """The steady resident memory of every stage, from telemetry.csv (analysis.server), and the container limit
    the run's target profile set."""
    telemetry = load_telemetry(run)
    why_none = telemetry.missing(("resident_memory_bytes",))
    stages = pd.DataFrame(columns=["stage", "users", "memory_mb", "scrapes"]) if why_none else steady_memory_mb(run)
    return MemoryInput(stages, telemetry.limit_mb, why_none)


# --- the model --------------------------------------------------------------------------------------


def usl(users: Any, params: np.ndarray) -> np.ndarray:
    """X(N) for one parameter vector [lambda, sigma, kappa], or for many (rows) against users (columns)."""
    n = np.asarray(users, dtype=float)
    p = np.asarray(params, dtype=float)
    lam, sigma, kappa = (p[:, 0, None], p[:, 1, None], p[:, 2, None]) if p.ndim == 2 else p
    return lam * n / (1 + sigma * (n - 1) + kappa * n * (n - 1))


def peak_users(params: np.ndarray) -> np.ndarray:
    """N* = sqrt((1 - sigma) / kappa); inf when kappa = 0 (the curve never bends down)."""
    p = np.atleast_2d(params)
    ratio = np.divide(1 - p[:, 1], p[:, 2], out=np.full(len(p), np.inf), where=p[:, 2] > 0)
    return np.sqrt(ratio)


def max_throughput(params: np.ndarray) -> np.ndarray:
    """X(N*) where the curve has a peak, else its ceiling lambda / sigma (inf with sigma = 0 as well)."""
    p = np.atleast_2d(params)
    n_star = peak_users(p)
    finite = np.isfinite(n_star)
    n = np.where(finite, n_star, 1.0)
    at_peak = p[:, 0] * n / (1 + p[:, 1] * (n - 1) + p[:, 2] * n * (n - 1))
    ceiling = np.divide(p[:, 0], p[:, 1], out=np.full(len(p), np.inf), where=p[:, 1] > 0)
    return np.where(finite, at_peak, ceiling)


def _residuals(params: np.ndarray, users: np.ndarray, throughput: np.ndarray) -> np.ndarray:
    """Relative residuals: every stage weighs alike. (Weighting by each stage's standard error instead chases the
    steadiest stages where the model's form is only approximately right: on a real ladder against the reference
    target its holdout error was 19 % against 12 % for relative residuals.)"""
    return usl(users, params) / throughput - 1


def _jacobian(params: np.ndarray, users: np.ndarray, throughput: np.ndarray) -> np.ndarray:
    lam, sigma, kappa = params
    denominator = 1 + sigma * (users - 1) + kappa * users * (users - 1)
    x = lam * users / denominator
    return np.column_stack([users / denominator, -x * (users - 1) / denominator,
                            -x * users * (users - 1) / denominator]) / throughput[:, None]


BOUNDS = ([0.0, 0.0, 0.0], [np.inf, 1.0, np.inf])


def fit_params(users: np.ndarray, throughput: np.ndarray, start: np.ndarray | None = None) -> np.ndarray | None:
    """Bounded least squares (sigma in [0, 1], kappa >= 0, lambda >= 0), best of a few starts; None when none
    converges, or when a stage has no throughput (its relative residual is undefined)."""
    from scipy.optimize import least_squares  # here: the report draws from this module, only `project` fits

    if not np.all(np.isfinite(throughput) & (throughput > 0)):
        return None
    if start is not None:
        starts = [start]
    else:
        slope = float(np.max(throughput / users))
        spread = 1 / float(np.max(users)) ** 2
        starts = [np.array([slope, sigma, kappa]) for sigma in (0.01, 0.3) for kappa in (0.0, 0.1 * spread, spread)]
    best = None
    for x0 in starts:
        result = least_squares(_residuals, x0, jac=_jacobian, bounds=BOUNDS, args=(users, throughput),
                               x_scale="jac", method="trf")
        if result.success and np.all(np.isfinite(result.x)) and result.x[0] > 0 and (best is None or result.cost < best.cost):
            best = result
    if best is None:
        return None
    # the trust-region method approaches a bound without touching it: a term worth less than 1e-9 of X at the
    # largest measured users is that bound (kappa = 0 is "never bends", and N* is then infinite, not 1e11)
    negligible = best.x[1:] * np.array([users.max(), users.max() ** 2]) < 1e-9
    return np.where(np.r_[False, negligible], 0.0, best.x)


def r_squared(users: np.ndarray, throughput: np.ndarray, params: np.ndarray) -> float:
    total = np.sum((throughput - throughput.mean()) ** 2)
    return float(1 - np.sum((throughput - usl(users, params)) ** 2) / total) if total > 0 else float("nan")


def resample_means(windows: pd.DataFrame, stages: Sequence[int], resamples: int, rng: np.random.Generator) -> np.ndarray:
    """Bootstrap means of each stage's per-window throughput, all at once: resamples x stages."""
    table = windows[windows["stage"].isin(stages)].pivot(index="stage", columns="window", values="throughput")
    values = table.reindex(list(stages)).to_numpy(dtype=float)  # windows are numbered from 0: NaN only at the end
    counts = np.sum(~np.isnan(values), axis=1)
    index = (rng.random((resamples, *values.shape)) * counts[None, :, None]).astype(int)
    drawn = np.take_along_axis(np.broadcast_to(values, (resamples, *values.shape)), index, axis=2)
    used = np.arange(values.shape[1])[None, None, :] < counts[None, :, None]
    return np.where(used, drawn, 0).sum(axis=2) / counts[None, :]


def _fit_input(ladder: LadderInput, stages: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    rows = ladder.stages.set_index("stage").loc[list(stages)]
    return rows["users"].to_numpy(dtype=float), rows["throughput"].to_numpy(dtype=float)


def fit_ladder(ladder: LadderInput, stages: Sequence[int], resamples: int, rng: np.random.Generator) -> Fit:
    """The USL fit on the given usable stages, and its bootstrap: the same fit on resampled stage means (each
    stage's windows drawn with replacement), started from the point estimate."""
    users, throughput = _fit_input(ladder, stages)
    params = fit_params(users, throughput)
    if params is None:
        raise ProjectionError(f"no convergence: the USL fit to {len(users)} stages ({_users_text(users)} users) did "
                              "not converge; expected throughput that rises with users before it levels off")
    means = resample_means(ladder.windows, list(stages), resamples, rng)
    fitted = [fit_params(users, sample, start=params) for sample in means]
    draws = np.array([draw for draw in fitted if draw is not None])
    if len(draws) < resamples / 2:
        raise ProjectionError(f"no convergence: only {len(draws)} of {resamples} bootstrap refits converged; the "
                              "stages' throughput is too noisy for a USL fit (longer holds give steadier windows)")
    return Fit(params, draws, users, throughput, r_squared(users, throughput, params), resamples - len(draws))


def _users_text(users: np.ndarray) -> str:
    return ", ".join(f"{n:g}" for n in users)


def interval(point: float, draws: np.ndarray, confidence: float = CONFIDENCE) -> Interval:
    """Percentile interval; 'inverted_cdf' never interpolates between inf draws."""
    tail = (1 - confidence) / 2
    low, high = np.quantile(draws, [tail, 1 - tail], method="inverted_cdf")
    return Interval(float(point), float(low), float(high))


# --- memory -----------------------------------------------------------------------------------------


def line_fits(users: np.ndarray, memory_mb: np.ndarray) -> np.ndarray:
    """Least-squares lines through rows of (users, memory) samples, all at once: [base_mb, mb_per_user] per row
    (NaN where a row's users are all alike)."""
    users, memory_mb = np.atleast_2d(users), np.atleast_2d(memory_mb)
    spread = users - users.mean(axis=1, keepdims=True)
    variance = (spread**2).sum(axis=1)
    slope = np.divide((spread * memory_mb).sum(axis=1), variance, out=np.full(len(users), np.nan), where=variance > 0)
    return np.column_stack([memory_mb.mean(axis=1) - slope * users.mean(axis=1), slope])


def users_at_limit(params: np.ndarray, limit_mb: float) -> np.ndarray:
    """N at which base_mb + mb_per_user * N reaches the limit (0 when memory is already beyond it); inf when
    memory does not grow with users."""
    p = np.atleast_2d(params)
    growing = p[:, 1] > 0
    reach = np.divide(limit_mb - p[:, 0], p[:, 1], out=np.full(len(p), np.inf), where=growing)
    return np.where(growing, np.maximum(reach, 0.0), np.inf)


def project_memory(memory: MemoryInput, stages: Sequence[int], resamples: int,
                   rng: np.random.Generator) -> tuple[MemoryProjection | None, str]:
    """MB per user from the fitted stages' steady resident memory, or why there is none (one line). Intervals come
    from resampling the stages with replacement: the stages, not the scrapes, are the independent samples (a
    stage's scrapes follow each other, and a leak makes them climb within the stage)."""
    if memory.why_none:
        return None, f"memory not projected: {memory.why_none}"
    rows = memory.stages[memory.stages["stage"].isin(stages) & (memory.stages["scrapes"] > 0)]
    if rows["users"].nunique() < MIN_MEMORY_STAGES:
        return None, (f"memory not projected: {rows['users'].nunique()} of the {len(stages)} fitted stages have "
                      f"resident memory scraped in their steady phase; MB per user needs {MIN_MEMORY_STAGES} "
                      "(longer holds or a shorter --scrape-interval)")
    users, memory_mb = rows["users"].to_numpy(dtype=float), rows["memory_mb"].to_numpy(dtype=float)
    params = line_fits(users, memory_mb)[0]
    picks = rng.integers(0, len(rows), (resamples, len(rows)))
    draws = line_fits(users[picks], memory_mb[picks])
    draws = draws[np.isfinite(draws[:, 1])]  # a resample of one user count has no slope
    residual = memory_mb - (params[0] + params[1] * users)
    total = np.sum((memory_mb - memory_mb.mean()) ** 2)
    limit_users = None
    if memory.limit_mb:
        limit_users = interval(float(users_at_limit(params, memory.limit_mb)[0]), users_at_limit(draws, memory.limit_mb))
    return MemoryProjection(
        params=params, draws=draws, stages=rows.reset_index(drop=True),
        r_squared=float(1 - np.sum(residual**2) / total) if total > 0 else float("nan"),
        base_mb=interval(params[0], draws[:, 0]), mb_per_user=interval(params[1], draws[:, 1]),
        limit_mb=memory.limit_mb, limit_users=limit_users), ""


# --- verdicts and projection ------------------------------------------------------------------------


def judges_http_requests(criterion: Criterion) -> bool:
    """The projection is one figure for all HTTP requests: it speaks for criteria on HTTP requests (all, api,
    http, or a pattern of a method and a path), never for pages, sockets, transactions or browser timings."""
    return all(selector in ("all", "api", "http") or selector.split(" ", 1)[0] in HTTP_METHODS
               for selector in criterion.endpoint)


def slo_verdicts(slo: SloSet, values: Mapping[str, Interval]) -> tuple[dict[str, Any], ...]:
    """Each throughput and p95 criterion of the SLO set on HTTP requests judged on the projected point (narrower
    scopes among them get the same figure), noting when the interval reaches another level."""
    verdicts = []
    for criterion in slo.criteria:
        quantity = PROJECTED_METRICS.get(criterion.metric.name)
        if quantity is None or not judges_http_requests(criterion):
            continue
        estimate = values[quantity]
        statuses = [_level_status(criterion, x) for x in (estimate.value, estimate.low, estimate.high)]
        spread = sorted(set(statuses) - {statuses[0]})
        verdicts.append({"criterion": criterion.name, "metric": criterion.metric.name, "limits": criterion.limits_text,
                         "status": statuses[0], "value": estimate.value, "low": estimate.low, "high": estimate.high,
                         "note": f"its interval reaches {', '.join(spread)}" if spread else ""})
    return tuple(verdicts)


def _level_status(criterion: Criterion, value: float) -> Status:
    if criterion.critical is not None and criterion.critical.violated(value):
        return Status.FAIL
    if criterion.warn is not None and criterion.warn.violated(value):
        return Status.WARN
    return Status.PASS


def project_at(users: int, fit: Fit, think_s: float, p95_ratio: float, peak: Interval, bends: bool,
               slo: SloSet, memory: MemoryProjection | None = None) -> Projected:
    """Throughput, Little's-law response time R(N) = N / X(N) - Z, the p95 estimate and resident memory at
    `users`; `bends`: kappa's interval excludes 0, so that past N* more users surely lower throughput."""
    def response_ms(throughput: np.ndarray) -> np.ndarray:
        return np.maximum(users / throughput - think_s, 0) * 1000

    point_x, draws_x = usl(users, fit.params), usl(users, fit.draws).ravel()
    throughput = interval(float(point_x), draws_x)
    response = interval(float(response_ms(point_x)), response_ms(draws_x))
    p95 = Interval(response.value * p95_ratio, response.low * p95_ratio, response.high * p95_ratio)
    verdicts = slo_verdicts(slo, {"throughput": throughput, "p95_estimate_ms": p95})
    extrapolation = users / float(fit.users.max())
    past_point = users > peak.value
    beyond_peak = bool(past_point and bends)
    labels = ([f"beyond the peak (N* {peak.value:,.0f}): more users lower throughput there"] if beyond_peak else
              [f"perhaps beyond the peak: N* {peak.value:,.0f} is uncertain, as kappa's interval includes 0"]
              if past_point else []) + ([f"extrapolation x{extrapolation:.1f}"] if extrapolation > 1 else [])
    memory_mb = None
    if memory is not None:
        memory_mb = interval(float(memory.at(users)), memory.drawn_at(users).ravel())
        if memory.limit_mb and memory_mb.value >= memory.limit_mb:
            labels.append(f"resident memory beyond the container limit ({memory.limit_mb:,.0f} MB)")
    status = max((Status(v["status"]) for v in verdicts), key=[Status.PASS, Status.WARN, Status.FAIL].index,
                 default=Status.NO_DATA)
    return Projected(users, throughput, response, p95, extrapolation, beyond_peak, verdicts, status, tuple(labels),
                     memory_mb)


def holdout_check(ladder: LadderInput, k: int) -> Holdout:
    """Fit on all but the last k usable stages (by users) and compare its predictions with what they measured."""
    usable = ladder.usable.sort_values(["users", "stage"])
    if len(usable) - k < MIN_STAGES:
        raise ProjectionError(f"--holdout {k}: leaves {len(usable) - k} of {len(usable)} usable stages to fit; "
                              f"expected at least {MIN_STAGES} (hold out fewer, or run more stages)")
    train, test = usable.iloc[:-k], usable.iloc[-k:]
    params = fit_params(*_fit_input(ladder, train["stage"].tolist()))
    if params is None:
        raise ProjectionError(f"no convergence: the USL fit without the last {k} stages did not converge")
    users = test["users"].to_numpy(dtype=float)
    predicted = usl(users, params)
    predicted_ms = (users / predicted - ladder.think_s) * 1000
    table = pd.DataFrame({
        "stage": test["stage"].to_numpy(), "users": test["users"].to_numpy(), "throughput": test["throughput"].to_numpy(),
        "predicted_throughput": predicted, "throughput_error_pct": (predicted / test["throughput"].to_numpy() - 1) * 100,
        "mean_ms": test["mean_ms"].to_numpy(), "predicted_ms": predicted_ms,
        "response_error_pct": (predicted_ms / test["mean_ms"].to_numpy() - 1) * 100})
    return Holdout(k, params, table)


def parse_users(text: str, largest_measured: int) -> list[int]:
    """'3000,5000' -> [3000, 5000]; '3x,5x' -> multiples of the largest measured users."""
    parts = [part.strip().lower() for part in text.split(",")]
    counts = [round(float(part[:-1]) * largest_measured if part.endswith("x") else float(part)) for part in parts
              ] if USER_COUNTS.match(text) else []
    if not counts or not all(bounds.USERS.holds(count) for count in counts):
        raise ProjectionError(f"--users: bad value {text!r}; expected user counts like 3000,5000 or multiples of the "
                              f"largest measured stage like 3x,5x, each {bounds.USERS.text}")
    return counts


def project(ladder: LadderInput, slo: SloSet, users: Sequence[int] | str = (3000, 5000), holdout: int = 0,
            resamples: int = RESAMPLES, seed: int = SEED) -> Projection:
    """The whole projection: refusals, fit, intervals, projections at `users`, optional holdout validation."""
    usable = ladder.usable.sort_values(["users", "stage"])
    if ladder.stages["requests"].fillna(0).le(0).all():
        raise ProjectionError("no steady data: no stage has HTTP requests in its steady phase; expected a capacity "
                              "ladder whose stages reached their steady holds")
    if usable["users"].nunique() < MIN_STAGES:
        reasons = ladder.stages[~ladder.stages["usable"]].groupby("note", sort=False)["stage"].agg(list)
        left_out = "; ".join(f"stage{'s' * (len(ids) > 1)} {', '.join(map(str, ids))}: {note}"
                             for note, ids in reasons.items())
        raise ProjectionError(f"{usable['users'].nunique()} usable stages ({left_out or 'none left out'}): the USL fit "
                              f"needs at least {MIN_STAGES} user counts, {RECOMMENDED_STAGES} or more recommended "
                              "(run the capacity-ladder scenario)")
    if isinstance(users, str):
        users = parse_users(users, int(usable["users"].max()))
    rng = np.random.default_rng(seed)
    fit = fit_ladder(ladder, usable["stage"].tolist(), resamples, rng)
    lam, sigma, kappa = (interval(fit.params[i], fit.draws[:, i]) for i in range(3))
    peak = interval(float(peak_users(fit.params)[0]), peak_users(fit.draws))
    top = float(usable["users"].max())
    peak_reached = kappa.low > 0 and peak.value <= top
    last = usable.iloc[-1]
    p95_ratio = float(last["p95_ms"] / last["mean_ms"])
    notes = list(ladder.notes)
    if len(usable) < RECOMMENDED_STAGES:
        notes.append(f"only {len(usable)} usable stages: {RECOMMENDED_STAGES} or more are recommended")
    if fit.failed_resamples:
        notes.append(f"{fit.failed_resamples} of {resamples} bootstrap refits did not converge and were left out")
    outside = [f"{name} {estimate.value:.4g} (interval {estimate.low:.4g} to {estimate.high:.4g})"
               for name, estimate in (("lambda", lam), ("sigma", sigma), ("kappa", kappa))
               if not estimate.includes(estimate.value)]
    if outside:
        notes.append(f"unstable fit: the point estimate lies outside its bootstrap interval for {', '.join(outside)}; "
                     "the stages' throughput is too noisy for these parameters (longer holds or more stages steady them)")
    memory, memory_note = project_memory(ladder.memory, usable["stage"].tolist(), resamples, rng)
    far = [n for n in users if n / top > EXTRAPOLATION_WARNING]
    if far:
        notes.append(f"{', '.join(f'{n:,}' for n in far)} users lie beyond {EXTRAPOLATION_WARNING:g}x the largest "
                     f"measured stage ({top:,.0f} users): the model's form, not the data, decides those figures")
    return Projection(
        ladder=ladder, fit=fit, sigma=sigma, kappa=kappa, lam=lam, peak_users=peak,
        max_throughput=interval(float(max_throughput(fit.params)[0]), max_throughput(fit.draws)),
        peak_reached=bool(peak_reached), p95_ratio=p95_ratio, p95_ratio_stage=int(last["stage"]),
        projected=tuple(project_at(n, fit, ladder.think_s, p95_ratio, peak, kappa.low > 0, slo, memory) for n in users),
        holdout=holdout_check(ladder, holdout) if holdout else None,
        notes=tuple(notes), slo_name=slo.name, memory=memory, memory_note=memory_note)


def curve(fit: Fit, think_s: float, grid: np.ndarray, confidence: float = CONFIDENCE) -> pd.DataFrame:
    """The fitted throughput and Little's-law response time over `grid`, with their pointwise bands."""
    tail = (1 - confidence) / 2
    draws = usl(grid, fit.draws)
    response = np.maximum(grid / draws - think_s, 0) * 1000
    x_low, x_high = np.quantile(draws, [tail, 1 - tail], axis=0)
    r_low, r_high = np.quantile(response, [tail, 1 - tail], axis=0)
    throughput = usl(grid, fit.params)
    return pd.DataFrame({"users": grid, "throughput": throughput, "throughput_low": x_low, "throughput_high": x_high,
                         "response_ms": np.maximum(grid / throughput - think_s, 0) * 1000,
                         "response_low_ms": r_low, "response_high_ms": r_high})


def stage_intervals(ladder: LadderInput, resamples: int = RESAMPLES, seed: int = SEED) -> pd.DataFrame:
    """Each stage's throughput interval (bootstrap of its windows' mean), for the plot's error bars."""
    with_windows = ladder.stages[ladder.stages["windows"] >= MIN_WINDOWS]
    means = resample_means(ladder.windows, with_windows["stage"].tolist(), resamples, np.random.default_rng(seed))
    tail = (1 - CONFIDENCE) / 2
    low, high = np.quantile(means, [tail, 1 - tail], axis=0)
    return pd.DataFrame({"stage": with_windows["stage"].to_numpy(), "low": low, "high": high})

