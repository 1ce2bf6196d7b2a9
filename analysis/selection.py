"""Which summary rows and stages a criterion looks at: its endpoint selectors (groups, globs, exact keys) and its
stage selector (each, all, peak, an index, a name, "<N> users")."""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Sequence

import pandas as pd

from analysis.criteria import GROUPS, NOT_REQUEST_KINDS
from analysis.load import ALL_ENDPOINTS, endpoint_kind

USERS_PATTERN = re.compile(r"^\s*([0-9]+)\s*users?\s*$")


def endpoint_mask(frame: pd.DataFrame, selectors: Sequence[str]) -> pd.Series:
    """Rows whose endpoint one of the selectors matches (groups, globs and exact keys; vectorised per endpoint)."""
    endpoints = pd.Series(frame["endpoint"].unique())
    endpoints = endpoints[endpoints != ALL_ENDPOINTS]
    request_type = endpoints.str.split(" ", n=1).str[0]
    kind = endpoint_kind(request_type)
    chosen = pd.Series(False, index=endpoints.index)
    for selector in selectors:
        if selector == "all":
            chosen |= ~kind.isin(NOT_REQUEST_KINDS)
        elif selector == "api":
            chosen |= (kind == "http") & endpoints.str.split(" ", n=1).str[1].str.startswith("/api/")
        elif selector in GROUPS:
            chosen |= kind == selector
        else:
            chosen |= endpoints.map(lambda endpoint, pattern=selector: fnmatch.fnmatchcase(endpoint, pattern)).astype(bool)
    return frame["endpoint"].isin(set(endpoints[chosen]))


def select_stages(stage: str | int, stages: pd.DataFrame) -> tuple[pd.DataFrame, str]:
    """The stages a criterion concerns, and why none when none (each/all: every stage)."""
    if stage in ("each", "all"):
        chosen = stages
    elif stage == "peak":
        chosen = stages[stages["users"] == stages["users"].max()].tail(1)
    elif isinstance(stage, int):
        chosen = stages[stages.index == stage]
    elif (users := USERS_PATTERN.match(stage)) is not None:
        chosen = stages[stages["users"] == int(users.group(1))]
    else:
        chosen = stages[stages["name"] == stage]
    return chosen, "" if len(chosen) else f"no stage matches {stage!r} in this run"
