"""SLO sets: slo/<name>.yaml (or any path) parsed into an SloSet through the input layer (medianest_load/inputs.py):
every mistake is one SloError line naming the file, the field, the bad value and what was expected, unknown keys
are rejected, and a selector that can never match is a load-time error, never a silent NO_DATA at the gate."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

from analysis.criteria import (
    CORRECTED,
    GLOB_CHARACTERS,
    GROUPS,
    INTERVAL_METRICS,
    METRICS,
    PHASES,
    UNITS,
    Condition,
    Criterion,
    Metric,
    SloSet,
)
from medianest_load.bounds import DAY_S, DESCRIPTION_CHARS, Bound
from medianest_load.inputs import Fields, InputError, InputKind, duration_s, quantity
from medianest_load.paths import SLO_DIR
from medianest_load.results_format import OK_PERCENTILE_COLUMNS, PERCENTILE_COLUMNS

TOP_KEYS = {"name", "description", "source", "baseline", "criteria"}
BASELINE_KEYS = {"source", "endpoints"}
BASELINE_STATS = ("avg_ms", "p50_ms", "p95_ms", "p99_ms")
CRITERION_KEYS = {"name", "description", "metric", "endpoint", "stage", "split", "phase", "warn", "critical", "for",
                  "abort", "required", "min_requests", "timing", "confidence"}
FOR_S = Bound(0, 31 * DAY_S, " s (31 days)", low_open=True)  # no run may plan longer (bounds.PLANNED_S)
MIN_REQUESTS = Bound(1)
MILLISECONDS = Bound(0)
CONFIDENCE = Bound(0.5, 1)  # 1 itself excluded: an interval of certainty is none
_OPERATOR = re.compile(r"^\s*(<=|>=|<|>)(.*)$")
CONDITION_EXAMPLES = {"ms": "> 200 ms", "ratio": "> 1 %", "req/s": "< 500", "bytes": "> 15 MB", "MB": "> 400 MB",
                      "MB/h": "> 20 MB/h"}


class SloError(InputError):
    """A user mistake in an SLO file (medianest_load/inputs.py words it)."""


def parse_slo(raw: Any, source: str) -> SloSet:
    top = Fields.of(source, raw, "", SloError, TOP_KEYS, {"criteria"}, "a mapping with name and criteria")
    name = top.text("name", Path(source).stem)
    description = str(top.get("description", "")).strip()
    if len(description) > DESCRIPTION_CHARS:
        top.refuse("description", f"{len(description):,} characters", f"a text of at most {DESCRIPTION_CHARS} characters")
    items = top.value("criteria", lambda v: isinstance(v, list) and len(v) > 0, "a non-empty list of criteria")
    criteria = tuple(parse_criterion(item, f"criteria[{index}]", source) for index, item in enumerate(items))
    names = [criterion.name for criterion in criteria]
    for index, criterion_name in enumerate(names):
        if criterion_name in names[:index]:
            top.fail(f"criteria[{index}].name", criterion_name, "a name used by one criterion only")
    baseline, baseline_source = _parse_baseline(top)
    return SloSet(name=name.strip(), criteria=criteria, description=description,
                  source=str(top.get("source", "")).strip(), baseline=baseline, baseline_source=baseline_source)


SLO = InputKind("SLO set", SLO_DIR, 'a YAML SLO set (quote conditions: warn: "> 200 ms")', parse_slo, SloError)


def _parse_baseline(top: Fields) -> tuple[dict[str, dict[str, float]], str]:
    """Reference values per route name (`/api/v1/health: {avg_ms: 8, p95_ms: 22}`), drawn as plot lines."""
    if top.data.get("baseline") is None:
        return {}, ""
    baseline = top.section("baseline", BASELINE_KEYS, expected="a mapping with source and endpoints")
    endpoints = baseline.value("endpoints", lambda v: v is None or isinstance(v, dict), "route: {avg_ms: .., p95_ms: ..}",
                               None) or {}
    parsed: dict[str, dict[str, float]] = {}
    for route, values in endpoints.items():
        stats = Fields.of(top.source, values, f"baseline.endpoints.{route}", SloError, BASELINE_STATS,
                          expected="{avg_ms: .., p95_ms: ..}")
        if not stats.data:
            stats.fail_at(stats.where, values, "{avg_ms: .., p95_ms: ..}")
        parsed[str(route)] = {key: stats.number(key, MILLISECONDS, noun="milliseconds, a number") for key in stats.data}
    return parsed, str(baseline.get("source", "")).strip()


def parse_condition(text: Any, metric: Metric, fields: Fields, key: str) -> Condition:
    """`> 200 ms`, `<= 97 %`, `< 500`: an operator, then a quantity in one of the metric's units."""
    match = _OPERATOR.match(str(text)) if isinstance(text, (str, int, float)) and not isinstance(text, bool) else None
    limit = quantity(match.group(2), UNITS[metric.unit]) if match else None
    if match is None or limit is None or not math.isfinite(limit):
        units = ", ".join(repr(unit) for unit in UNITS[metric.unit] if unit) or "none"
        fields.fail(key, text, f"a condition like \"{CONDITION_EXAMPLES[metric.unit]}\" "
                               f"(>, >=, <, <= then a number; units for {metric.name}: {units})")
    return Condition(match.group(1), limit, str(text).strip())


def is_selector(selector: str) -> bool:
    """A group, or a pattern that could match a recorded key ("<request type> <name>"): a word without a space
    and without glob characters is neither, so a typo like `apix` never disarms a gate as NO_DATA."""
    return selector in GROUPS or " " in selector or any(char in selector for char in GLOB_CHARACTERS)


def default_min_requests(metric: Metric) -> int:
    """A percentile p from fewer than 1 / (1 - p) samples is only the maximum: p95 needs 20, p99 100, p99.9 1000."""
    percentile = {**PERCENTILE_COLUMNS, **OK_PERCENTILE_COLUMNS}.get(metric.column or "")
    return int(math.ceil(1 / (1 - percentile / 100) - 1e-9)) if percentile else 1


def _parse_endpoints(fields: Fields, metric: Metric, name: str) -> tuple[str, ...]:
    endpoint = fields.get("endpoint", metric.default_endpoint)
    endpoints = (endpoint,) if isinstance(endpoint, str) else tuple(endpoint) if isinstance(endpoint, list) else ()
    if not endpoints or not all(isinstance(e, str) and e.strip() for e in endpoints):
        fields.fail("endpoint", endpoint, f"an endpoint key, a glob (\"GET /api/*\"), a group ({', '.join(sorted(GROUPS))}) "
                                          "or a list of them")
    for selector in endpoints:
        if not is_selector(selector.strip()):
            fields.refuse("endpoint", f"{selector!r} in criterion {name!r}",
                          f"a group ({', '.join(sorted(GROUPS))}) or a pattern (an endpoint key \"METHOD path\" holds a "
                          "space, a glob holds * ? or [)")
    return tuple(selector.strip() for selector in endpoints)


def _parse_stage(fields: Fields) -> str | int:
    stage = fields.value("stage", lambda v: not isinstance(v, bool) and (isinstance(v, int) and v >= 1 or
                                                                          isinstance(v, str) and v.strip() != ""),
                         "each, all, peak, a stage index (1, 2, ...), a stage name or \"<N> users\"", "each")
    return stage.strip() if isinstance(stage, str) else stage


def _parse_levels(fields: Fields, metric: Metric) -> tuple[Condition | None, Condition | None]:
    """warn and critical: at least one, both pointing the same way, critical at least as far as warn."""
    warn, critical = (parse_condition(fields.data[key], metric, fields, key) if fields.data.get(key) is not None else None
                      for key in ("warn", "critical"))
    if warn is None and critical is None:
        raise SloError.at(fields.source, fields.where, "neither warn nor critical", "at least one level (warn and/or critical)")
    if warn and critical:
        if warn.higher_is_worse != critical.higher_is_worse:
            fields.fail("critical", critical.text, f"a condition pointing the same way as warn {warn.text!r} (both > or both <)")
        if (critical.limit < warn.limit) if warn.higher_is_worse else (critical.limit > warn.limit):
            fields.fail("critical", critical.text, f"a limit at least as far as warn {warn.text!r} (critical is the more severe)")
    return warn, critical


def _parse_window(fields: Fields, metric: Metric, endpoints: tuple[str, ...]) -> float | None:
    """`for`: how long a level must be violated in a row; only where the 1-second series carries the metric."""
    if fields.data.get("for") is None:
        return None
    window = duration_s(fields.data["for"])
    if not FOR_S.holds(window):
        fields.fail("for", fields.data["for"], f"a duration {FOR_S.text}, like \"30s\" or \"2m\"")
    if not metric.in_series:
        series = ", ".join(name for name, spec in METRICS.items() if spec.in_series)
        fields.fail("for", fields.data["for"], f"one of the metrics the 1-second series has ({series}), "
                                               f"not {metric.name}")
    if metric.column == "p95_ms" and fields.data.get("split") is None and endpoints != ("all",) and (
            len(endpoints) > 1 or endpoints[0] in GROUPS or any(char in endpoints[0] for char in GLOB_CHARACTERS)):
        fields.fail("for", fields.data["for"], "split: endpoint, endpoint: all or one exact endpoint key (a per-second "
                                               "p95 exists per endpoint and for all endpoints only)")
    return window


def _parse_confidence(fields: Fields, metric: Metric) -> float | None:
    if metric.name not in INTERVAL_METRICS:
        if "confidence" in fields.data:
            fields.fail("confidence", fields.data["confidence"], f"no confidence on {metric.name} (only on "
                                                                 f"{', '.join(sorted(INTERVAL_METRICS))})")
        return None
    confidence = fields.value("confidence", lambda v: CONFIDENCE.holds(v) and v != 1,
                              "a number from 0.5 up to (not including) 1, like 0.95", 0.95)
    return float(confidence)


def _parse_timing(fields: Fields, metric: Metric, window: float | None) -> str:
    timing = fields.choice("timing", ("raw", "corrected"), "raw", "raw (the default) or corrected")
    if timing == "corrected" and (metric.name not in CORRECTED or window is not None):
        fields.fail("timing", timing, f"one of {', '.join(CORRECTED)} without for, not {metric.name}"
                                      f"{' with for' if window is not None else ''} (open-model stages keep corrected "
                                      "percentiles, not a corrected series)")
    return timing


def parse_criterion(raw: Any, where: str, source: str) -> Criterion:
    """One criterion mapping of an SLO file (`where`: its place, like criteria[0]); every mistake is an SloError."""
    fields = Fields.of(source, raw, where, SloError, CRITERION_KEYS,
                       expected="a mapping with name, metric, warn and/or critical")
    name = fields.text("name").strip()
    metric = METRICS[fields.choice("metric", METRICS)]
    endpoints = _parse_endpoints(fields, metric, name)
    split = fields.choice("split", ("endpoint",), None, "endpoint (or leave it out to merge)")
    warn, critical = _parse_levels(fields, metric)
    window = _parse_window(fields, metric, endpoints)
    abort, required = fields.boolean("abort", False), fields.boolean("required", False)
    if abort and critical is None:
        fields.fail("abort", True, "a critical level to abort on")
    phase = fields.choice("phase", PHASES, "steady", "steady (the default) or all (ramps too)")
    description = str(fields.get("description", ""))
    if len(description) > DESCRIPTION_CHARS:
        fields.refuse("description", f"{len(description):,} characters", f"a text of at most {DESCRIPTION_CHARS} characters")
    return Criterion(name=name, metric=metric, endpoint=endpoints, stage=_parse_stage(fields),
                     split_endpoint=split == "endpoint", warn=warn, critical=critical, window_s=window, abort=abort,
                     required=required, description=description,
                     min_requests=fields.integer("min_requests", MIN_REQUESTS, default_min_requests(metric)),
                     phases=PHASES[phase], timing=_parse_timing(fields, metric, window),
                     confidence=_parse_confidence(fields, metric))

