"""Judging: a criterion on its evidence (a whole results folder, or one finished stage during a run for the live
gate), the checks' statuses, the verdict of an SLO set, and why a run must stop (`judge_stage`, `abort_reason`)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pandas as pd

from analysis.criteria import Criterion, SloSet
from analysis.load import ALL_ENDPOINTS, STEADY, Histograms, RunData, load_run
from analysis.measure import ALL_STAGES, longest_violation_s, measure, series_per_second
from analysis.selection import endpoint_mask, select_stages
from analysis.server import Telemetry, WindowValue, load_telemetry, server_summary, sustained_s, window_value
from analysis.verdict import FAIL, INCONCLUSIVE, NO_DATA, PASS, RANK, WARN, Check, CriterionResult, Verdict

GENERATOR_BOUND = {"latency": "latencies", "rps": "rates"}  # metric families a saturated generator distorts
# A response that arrives while the generator's event loop is busy is timed late by the rest of that busy spell.
# The probe samples the loop evenly in time, but responses arrive mostly when it is busy (their handling is what
# keeps it busy), so the lag they meet runs above the probe's. Against a fixed-latency server, the p95 the harness
# reported exceeded the server's own by 1.2-2.7x the stage's loop-lag p95 on every stage the generator was not
# flagged on, quiet machine or busy (benchmarks/bench_generator_capacity.py; docs/design.md "Generator health").
LAG_ALLOWANCE = 3.0


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
    generator_lag_ms: Mapping[int, float] = field(default_factory=dict)  # stage -> the worst process's loop-lag p95
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
                   generator_limited_stages(run.stages), generator_lag_by_stage(run.stages), load_telemetry(run))


def generator_limited_stages(stages: pd.DataFrame) -> dict[int, str]:
    """{stage: reason} of the stages run.json flags as generator-limited (docs/design.md)."""
    if "generator_limited" not in stages:
        return {}
    flagged = stages[stages["generator_limited"].fillna(False).astype(bool)]
    return {int(stage): str(reason) for stage, reason in flagged["generator_reason"].fillna("see generator.csv").items()}


def generator_lag_by_stage(stages: pd.DataFrame) -> dict[int, float]:
    """{stage: loop-lag p95 ms} of the stages whose run.json records it (a folder from before it has none)."""
    if "generator_lag_p95_ms" not in stages:
        return {}
    return {int(stage): float(lag) for stage, lag in stages["generator_lag_p95_ms"].dropna().items()}


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
    return with_checks(result, tuple(
        replace(check, status=INCONCLUSIVE, note=generator_note(stage, limited[stage], family))
        if check.status != NO_DATA and (stage := first if check.stage is None else check.stage) in limited else check
        for check in result.checks))


def with_checks(result: CriterionResult, checks: tuple[Check, ...]) -> CriterionResult:
    """The result with some checks made INCONCLUSIVE: its status the worst judged check's, its note the first
    inconclusive one's when that is the status."""
    if checks == result.checks:
        return result
    status = max((check.status for check in checks if check.status != NO_DATA), key=RANK.__getitem__)
    note = next(check.note for check in checks if check.status == INCONCLUSIVE) if status == INCONCLUSIVE else result.note
    return replace(result, status=status, checks=checks, note=note)


def inconclusive_within_generator_lag(result: CriterionResult, lag_ms: Mapping[int, float]) -> CriterionResult:
    """A latency check that fails by less than the generator may have added (LAG_ALLOWANCE x the stage's loop-lag
    p95) is INCONCLUSIVE: it may be the generator's. A pass stays a pass: the generator's lag only ever adds."""
    criterion, critical = result.criterion, result.criterion.critical
    if criterion.metric.family != "latency" or critical is None or not critical.higher_is_worse or not lag_ms:
        return result

    def allowance(check: Check) -> float:
        return LAG_ALLOWANCE * (max(lag_ms.values()) if check.stage is None else lag_ms.get(check.stage, 0.0))

    def undecided(check: Check) -> bool:
        return (check.status == FAIL and check.value is not None and allowance(check) > 0
                and not critical.violated(check.value - allowance(check)))

    return with_checks(result, tuple(replace(check, status=INCONCLUSIVE, note=lag_note(check, criterion, allowance(check)))
                                     if undecided(check) else check for check in result.checks))


def lag_note(check: Check, criterion: Criterion, allowance_ms: float) -> str:
    where = "a stage" if check.stage is None else f"stage {check.stage}"
    return (f"{criterion.metric.name} {check.value:,.1f} ms fails by less than the load generator may have added at "
            f"{where} ({LAG_ALLOWANCE:g} x its event-loop lag p95 = {allowance_ms:,.1f} ms): it may measure the "
            "generator; add workers or machines")


def generator_rules(result: CriterionResult, limited: Mapping[int, str], lag_ms: Mapping[int, float]) -> CriterionResult:
    """What the load generator's health makes of a result: its flagged stages, then its loop lag."""
    return inconclusive_within_generator_lag(inconclusive_on_limited_stages(result, limited), lag_ms)


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
    per_second = series_per_second(evidence, criterion, stage_ids, merge_stages)
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
    if sustained is not None and criterion.window_s is not None:
        reached = [status for status in (FAIL, WARN) if sustained.get(status, 0) >= criterion.window_s]
        return reached[0] if reached else PASS
    ends = [measured.value] if measured.low is None or measured.high is None else [measured.low, measured.high]
    if criterion.critical and criterion.critical.violated(ends).all():
        return FAIL
    if any(level.violated(ends).any() for level in (criterion.critical, criterion.warn) if level is not None):
        return WARN
    return PASS


def judge(evidence: Evidence, slo: SloSet, run_name: str = "", run_info: Mapping[str, Any] | None = None) -> Verdict:
    return Verdict(slo, tuple(generator_rules(judge_criterion(criterion, evidence), evidence.generator_limited,
                                              evidence.generator_lag_ms) for criterion in slo.criteria),
                   run_name, run_info or {})


def judge_run(run_dir: Any, slo: SloSet) -> Verdict:
    """Judge a whole results folder; `verdict.exit_code` is what the CLI exits with."""
    run = run_dir if isinstance(run_dir, RunData) else load_run(run_dir)
    evidence = Evidence.from_run(run)
    assert evidence.server is not None  # from_run reads telemetry.csv (empty telemetry when the run has none)
    verdict = judge(evidence, slo, run.name, run.info)
    return replace(verdict, server=server_summary(evidence.server, evidence.stages))


def judge_stage(summary: pd.DataFrame, slo: SloSet, stage: int,
                histograms: Mapping[tuple[int, str, str], Any] | None = None,
                timeseries: pd.DataFrame | None = None,
                series_chunks: Callable[[], Iterable[pd.DataFrame]] | None = None,
                corrected: Mapping[tuple[int, str, str], Any] | None = None,
                generator_limited: Mapping[int, str] | None = None,
                ok_histograms: Mapping[tuple[int, str, str], Any] | None = None,
                generator_lag_ms: Mapping[int, float] | None = None) -> list[CriterionResult]:
    """Judge one finished stage during a run, for the abort decision.

    `summary`: summary.csv rows so far (e.g. `pd.DataFrame(recorder.summary_rows())`); `histograms`: optional
    {(stage, phase, endpoint): HdrHistogram or encoded string} for exact merged percentiles; `timeseries`:
    optional 1-second rows for `for:` criteria (at least the ALL rows when `series_chunks` reads the whole series
    chunk by chunk, as the runner does); `corrected`: the open-model stages' corrected histograms;
    `generator_limited`: {stage: reason} (INCONCLUSIVE); `generator_lag_ms`: {stage: the generator's loop-lag p95}
    (a latency failing by less than it may add is INCONCLUSIVE); `ok_histograms`: as `histograms`, of the successful
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
        results.append(generator_rules(judge_criterion(criterion, evidence, only_stage=stage), generator_limited or {},
                                       generator_lag_ms or {}))
    return results


def abort_reason(results: Sequence[CriterionResult]) -> str | None:
    """Why the remaining stages must not run: the failed criteria that carry `abort: true` (None: go on)."""
    failed = [result for result in results if result.criterion.abort and result.status == FAIL]
    if not failed:
        return None
    return "aborted by " + "; ".join(_abort_line(result) for result in failed)


def _abort_line(result: CriterionResult) -> str:
    """`<name> <measured> (<critical level>) at <where>`: an aborting criterion has a critical level (analysis/slo.py)."""
    worst, critical = result.worst, result.criterion.critical
    if worst is None or critical is None:
        return f"{result.criterion.name}: {result.note}"
    return f"{result.criterion.name} {result.measured_text} ({critical.text}) at {worst.where}"
