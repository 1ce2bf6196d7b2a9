"""The one input layer: how every YAML file the harness reads (scenarios, target profiles, SLO sets, the reference
target's profiles) declares and checks its fields, and the one error a user mistake becomes.

Every mistake is one `InputError` line shaped `FILE: FIELD: got X, expected Y`, where FIELD is a dotted path
(`stages[0].hold`), `(file)` or `(YAML) line N`. The CLI catches InputError and nothing else for input mistakes.

Why a small module of our own rather than pydantic v2 (extra="forbid" plus one error formatter):
- the expectations are the harness's own words with their bounds (`a duration greater than 0 and at most
  604,800 s (7 days), in seconds or like '30s', '5m', '2h', '7d'`); pydantic's error types would need a
  translation table back to those words for every field, which is this module again, behind a dependency;
- most rules are not per field but across fields (a ramp or a spawn_rate, an open-model stage's pool, a warn
  level pointing the same way as critical, a lognormal's p95 against its mean), which pydantic expresses as
  validators written by hand anyway;
- values with units (`30s`, `800/s`, `> 15 MB`) need one parser of our own under either choice;
- no new compiled dependency (pydantic-core) for about 200 lines, and nothing heavy to import: the CLI's
  `scenarios list` and `--help` stay lean.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, NoReturn, TypeVar

from medianest_load.bounds import TEXT_CHARS, Bound
from medianest_load.paths import resolve_named_file
from medianest_load.yaml_files import read_yaml

T = TypeVar("T")
SHOWN_CHARS = 80  # a bad value longer than this is cut: the error stays one readable line


class InputError(ValueError):
    """A user mistake in an input: the message is the one line the user sees.

    The input layer builds it with `InputError.at(file, field, got, expected)`; the other inputs that are no YAML
    file (a results folder, a host URL, an option) subclass it with a line of the same kind."""

    @classmethod
    def at(cls: type[E], file: str | Path, field: str, got: str, expected: str) -> E:
        return cls(f"{file}: {field}: got {got}, expected {expected}")

    @classmethod
    def nested(cls: type[E], file: str | Path, field: str, inner: InputError) -> E:
        """A mistake in a file that `file` names in `field` (a scenario's slo, its target_profile): both lines' places."""
        return cls(f"{file}: {field}: {inner}")


E = TypeVar("E", bound=InputError)


def shown(value: Any) -> str:
    """A bad value as an error line shows it: short, on one line."""
    if value is None:
        return "null"
    text = repr(value)
    return text if len(text) <= SHOWN_CHARS else f"{text[:60]}... ({len(text)} characters)"


# --- one parser for quantities with units: durations, rates, sizes, condition limits ----------------------------

_QUANTITY = re.compile(r"^\s*((?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?)\s*([A-Za-z%/]*)\s*$")
DURATION_UNITS: Mapping[str, float] = {"": 1.0, "ms": 0.001, "s": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0,
                                       "d": 86_400.0}
DURATION_EXAMPLE = "in seconds or like '30s', '5m', '2h', '7d'"
RATE_UNITS: Mapping[str, float] = {"s": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0}  # per second, per minute, ...


def quantity(value: Any, units: Mapping[str, float]) -> float | None:
    """A number of at least 0, with an optional unit (case-insensitive) from `units`, in the table's base unit
    (units[unit] base units per unit); None when it is none. A bare number takes units[""], when the table has it."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value) * units[""] if "" in units and value >= 0 else None
    match = _QUANTITY.match(value) if isinstance(value, str) else None
    if match is None or match.group(2).lower() not in units:
        return None
    return float(match.group(1)) * units[match.group(2).lower()]


def duration_s(value: Any) -> float | None:
    """Seconds from `30`, `2.5`, `'500ms'`, `'30s'`, `'5m'`, `'5min'`, `'2h'`, `'7d'`; None when it is no duration.
    Zero is a duration: each field's Bound says whether it may be zero (a ramp may; a hold, a timeout or a criterion's
    `for` window may not), and how long it may be."""
    return quantity(value, DURATION_UNITS)


def rate_per_s(value: Any) -> float | None:
    """Per second from `'800/s'`, `'600/m'`, `'3600/h'` or a bare number per second; None when it is no rate."""
    if isinstance(value, str) and "/" in value:
        count, _, unit = value.rpartition("/")
        per = RATE_UNITS.get(unit.strip().lower())
        number = quantity(count, {"": 1.0})
        return None if per is None or number is None else number / per
    return quantity(value, {"": 1.0})


# --- fields of one mapping ----------------------------------------------------------------------------------------

MISSING: Any = object()  # a key not given (YAML null is None, and shown as null)


@dataclass
class Fields:
    """One mapping of an input file, read field by field: every bad value becomes one `error` line naming the
    file, the field's dotted path, the value and what was expected. Unknown keys fail at once (a typo never falls
    back to a default silently), required ones fail when absent."""

    source: str
    data: dict[Any, Any]
    where: str
    error: type[InputError]

    @classmethod
    def of(cls, source: str | Path, data: Any, where: str, error: type[InputError], known: Collection[str],
           required: Iterable[str] = (), expected: str = "a mapping of keys to values") -> Fields:
        fields = cls(str(source), {}, where, error)
        if not isinstance(data, dict):
            fields.fail_at(where or "(top level)", data, expected)
        fields.data = data
        for key in data:
            if not isinstance(key, str) or key not in known:
                fields.fail(str(key), key, f"one of the known keys: {', '.join(sorted(known))}")
        for key in sorted(set(required) - set(data)):
            fields.fail(key, MISSING, "a value (the field is required)")
        return fields

    def path(self, key: str) -> str:
        return f"{self.where}.{key}" if self.where else key

    def fail_at(self, field_path: str, value: Any, expected: str) -> NoReturn:
        raise self.error.at(self.source, field_path, "nothing" if value is MISSING else shown(value), expected)

    def fail(self, key: str, value: Any, expected: str) -> NoReturn:
        self.fail_at(self.path(key), value, expected)

    def refuse(self, key: str, got: str, expected: str) -> NoReturn:
        """As fail, with what was got already said in words (`50,000 characters`) rather than a value to show."""
        raise self.error.at(self.source, self.path(key), got, expected)

    def get(self, key: str, default: Any = MISSING) -> Any:
        """The raw value, `default` when absent; absent without a default fails as required."""
        value = self.data.get(key, default)
        if value is MISSING:
            self.fail(key, MISSING, "a value (the field is required)")
        return value

    def value(self, key: str, check: Callable[[Any], bool], expected: str, default: Any = MISSING) -> Any:
        """The value if `check` accepts it; `default` when the key is absent (or null, for an optional field whose
        default is None)."""
        value = self.get(key, default)
        if value is None and default is None or value is default and key not in self.data:
            return value
        if not check(value):
            self.fail(key, value, expected)
        return value

    def text(self, key: str, default: Any = MISSING, max_chars: int = TEXT_CHARS) -> Any:
        value = self.value(key, lambda v: isinstance(v, str) and v.strip() != "", "a non-empty string", default)
        if isinstance(value, str) and len(value) > max_chars:
            self.refuse(key, f"{len(value):,} characters", f"a text of at most {max_chars} characters")
        return value

    def number(self, key: str, bound: Bound, default: Any = MISSING, noun: str = "a number") -> Any:
        value = self.value(key, bound.holds, f"{noun} {bound.text}", default)
        return value if value is None else float(value)

    def integer(self, key: str, bound: Bound, default: Any = MISSING) -> Any:
        return self.value(key, lambda v: isinstance(v, int) and bound.holds(v), f"a whole number {bound.text}", default)

    def duration(self, key: str, bound: Bound, default: Any = MISSING) -> Any:
        value = self.get(key, default)
        if value is None and default is None:
            return None
        seconds = duration_s(value)
        if not bound.holds(seconds):
            self.fail(key, value, f"a duration {bound.text}, {DURATION_EXAMPLE}")
        return seconds

    def boolean(self, key: str, default: Any = MISSING) -> bool:
        return self.value(key, lambda v: isinstance(v, bool), "true or false", default)

    def choice(self, key: str, choices: Collection[str], default: Any = MISSING, expected: str = "") -> Any:
        return self.value(key, lambda v: isinstance(v, str) and v in choices,
                          expected or f"one of {', '.join(choices)}", default)

    def section(self, key: str, known: Collection[str], required: Iterable[str] = (), default: Any = MISSING,
                expected: str = "a mapping of keys to values") -> Fields:
        return Fields.of(self.source, self.get(key, default), self.path(key), self.error, known, required, expected)


# --- files by name -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class InputKind(Generic[T]):
    """A kind of input file: where its names live, what it is called in errors and how it is parsed."""

    noun: str  # "scenario"
    folder: Path  # where a bare name is looked up
    expected: str  # what a broken file was expected to be
    parse: Callable[[Any, str], T]  # (parsed YAML, the file's name in errors) -> the checked value
    error: type[InputError]

    def names(self) -> list[str]:
        return sorted(path.stem for path in self.folder.glob("*.yaml"))


def load_named(kind: InputKind[T], name_or_path: str | Path) -> T:
    """A file of this kind by path, or by bare name in its folder, read strictly and checked field by field."""
    path = resolve_named_file(str(name_or_path), kind.folder)
    if not path.is_file():
        raise kind.error.at(name_or_path, "(file)", "no such file",
                            f"a path to {kind.expected} or one of the names {', '.join(kind.names())}")
    return kind.parse(read_yaml(path, kind.error, kind.expected), str(path))
