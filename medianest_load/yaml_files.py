"""Reading the harness's YAML files (scenarios, target profiles, SLO sets, target profiles of the reference
target): one reader, so that an unreadable, oversized, duplicated or malformed file gives the same one-line
error everywhere."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

if TYPE_CHECKING:  # the input layer imports this reader: the error type only annotates
    from medianest_load.inputs import InputError

MAX_FILE_BYTES = 1_000_000  # a hand-written input file is a few KB: anything near this is a mistake


class _DuplicateKey(yaml.YAMLError):
    """Raised by the loader; read_yaml turns it into the caller's one-line error."""

    def __init__(self, key: Any, first_line: int, second_line: int):
        super().__init__(f"duplicate key {key!r}")
        self.key, self.first_line, self.second_line = key, first_line, second_line


class StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice in one mapping (PyYAML keeps the last one silently)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            key, line = self.construct_object(key_node, deep=True), key_node.start_mark.line + 1
            try:
                if key in seen:
                    raise _DuplicateKey(key, seen[key], line)
                seen[key] = line
            except TypeError:  # an unhashable key: SafeLoader's own error follows
                continue
        return super().construct_mapping(node, deep=deep)


def read_yaml(path: Path, error: type[InputError], expected: str) -> Any:
    """The parsed document, or `error` as one line: `<file>: (file) or (YAML) line N: got <problem>, expected ...`."""
    try:
        size = path.stat().st_size
        if size > MAX_FILE_BYTES:
            raise error.at(path, "(file)", f"{size:,} bytes", f"at most {MAX_FILE_BYTES:,} bytes of {expected}")
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise error.at(path, "(file)", f"bytes that are not UTF-8 text (byte {exc.start})", expected) from None
    except OSError as exc:
        raise error.at(path, "(file)", f"a file that cannot be read ({exc.strerror or exc})", expected) from None
    try:
        return yaml.load(text, Loader=StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except _DuplicateKey as exc:
        raise error.at(path, f"(YAML) line {exc.second_line}", f"duplicate key {exc.key!r} (first on line "
                       f"{exc.first_line})", "each key once per mapping") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark is not None else "(document)"
        problem = getattr(exc, "problem", None) or type(exc).__name__
        raise error.at(path, f"(YAML) {where}", f"text that is not valid YAML ({problem})", expected) from None
