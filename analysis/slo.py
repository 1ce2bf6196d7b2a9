"""SLO sets: load slo/<name>.yaml (or any path) into an SloSet; every mistake is one SloError line
naming the file, the field, the bad value and what was expected. Unknown keys are rejected."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from analysis.criteria import CriteriaError, SloSet, parse_criterion
from medianest_load.bounds import DESCRIPTION_CHARS
from medianest_load.paths import SLO_DIR, resolve_named_file
from medianest_load.yaml_files import read_yaml

TOP_KEYS = {"name", "description", "source", "baseline", "criteria"}
BASELINE_KEYS = {"source", "endpoints"}


class SloError(ValueError):
    """A user mistake in an SLO file: the message is the one line the user sees."""


def available_slos() -> list[str]:
    return sorted(path.stem for path in SLO_DIR.glob("*.yaml"))


def load_slo(name_or_path: str | Path) -> SloSet:
    """An SLO set by name (slo/<name>.yaml) or by path."""
    path = resolve_named_file(str(name_or_path), SLO_DIR)
    if not path.is_file():
        raise SloError(f"{name_or_path}: no such SLO file; expected a path or one of {', '.join(available_slos())}")
    raw = read_yaml(path, SloError, 'a YAML SLO set (quote conditions: warn: "> 200 ms")')
    try:
        return parse_slo(raw, path)
    except CriteriaError as error:
        raise SloError(f"{path}: {error}") from None


def parse_slo(raw: Any, path: Path) -> SloSet:
    if not isinstance(raw, dict):
        raise CriteriaError("(top level)", f"bad value {raw!r}; expected a mapping with name and criteria")
    unknown = sorted(set(raw) - TOP_KEYS)
    if unknown:
        raise CriteriaError(unknown[0], f"unknown key; expected one of {', '.join(sorted(TOP_KEYS))}")
    name = raw.get("name", path.stem)
    if not isinstance(name, str) or not name.strip():
        raise CriteriaError("name", f"bad value {name!r}; expected a non-empty text")
    description = str(raw.get("description", "")).strip()
    if len(description) > DESCRIPTION_CHARS:
        raise CriteriaError("description", f"bad value of {len(description)} characters; expected at most {DESCRIPTION_CHARS}")
    criteria_raw = raw.get("criteria")
    if not isinstance(criteria_raw, list) or not criteria_raw:
        raise CriteriaError("criteria", f"bad value {criteria_raw!r}; expected a non-empty list of criteria")
    criteria = tuple(parse_criterion(item, f"criteria[{index}]") for index, item in enumerate(criteria_raw))
    seen: set[str] = set()
    for index, criterion in enumerate(criteria):
        if criterion.name in seen:
            raise CriteriaError(f"criteria[{index}].name", f"bad value {criterion.name!r}: used twice; expected unique names")
        seen.add(criterion.name)
    baseline, baseline_source = _parse_baseline(raw.get("baseline"))
    return SloSet(name=name.strip(), criteria=criteria, description=description,
                  source=str(raw.get("source", "")).strip(), baseline=baseline, baseline_source=baseline_source)


def _parse_baseline(raw: Any) -> tuple[dict[str, dict[str, float]], str]:
    """Reference values per route name (`/api/v1/health: {avg_ms: 8, p95_ms: 22}`), drawn as plot lines."""
    if raw is None:
        return {}, ""
    if not isinstance(raw, dict):
        raise CriteriaError("baseline", f"bad value {raw!r}; expected a mapping with source and endpoints")
    unknown = sorted(set(raw) - BASELINE_KEYS)
    if unknown:
        raise CriteriaError(f"baseline.{unknown[0]}", f"unknown key; expected one of {', '.join(sorted(BASELINE_KEYS))}")
    endpoints = raw.get("endpoints") or {}
    if not isinstance(endpoints, dict):
        raise CriteriaError("baseline.endpoints", f"bad value {endpoints!r}; expected route: {{avg_ms: .., p95_ms: ..}}")
    parsed: dict[str, dict[str, float]] = {}
    for route, values in endpoints.items():
        if not isinstance(values, dict) or not values:
            raise CriteriaError(f"baseline.endpoints.{route}", f"bad value {values!r}; expected {{avg_ms: .., p95_ms: ..}}")
        for key, value in values.items():
            if key not in ("avg_ms", "p50_ms", "p95_ms", "p99_ms"):
                raise CriteriaError(f"baseline.endpoints.{route}.{key}", "unknown key; expected avg_ms, p50_ms, p95_ms or p99_ms")
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise CriteriaError(f"baseline.endpoints.{route}.{key}",
                                    f"bad value {value!r}; expected milliseconds (a number >= 0)")
        parsed[str(route)] = {key: float(value) for key, value in values.items()}
    return parsed, str(raw.get("source", "")).strip()
