"""Reading the harness's YAML files (scenarios, target profiles, SLO sets, target profiles of the reference
target): one reader, so that an unreadable or malformed file gives the same one-line error everywhere."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml


def read_yaml(path: Path, error: type[Exception], expected: str) -> Any:
    """The parsed document, or `error("<file>: <where>: <problem>; expected <expected>")`."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise error(f"{path}: (file) not UTF-8 text (byte {exc.start}); expected {expected}") from None
    except OSError as exc:
        raise error(f"{path}: (file) cannot read the file ({exc.strerror or exc}); expected {expected}") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark is not None else "(document)"
        problem = getattr(exc, "problem", None) or type(exc).__name__
        raise error(f"{path}: (YAML) {where}: not valid YAML ({problem}); expected {expected}") from None
