"""The recorder: exact per-stage, per-phase, per-endpoint latency, counts, failures and a 1-second series.

Locust's own stats round response times (about 5 % error above 100 ms) and are not split by stage, so every
sample is also recorded here, attributed to the (stage, phase) the shape declared when the sample finished.
`on_request` is the hot path (it runs for every sample): a dictionary lookup, a histogram record and a
few additions. Everything else (percentiles, files) happens once a second or at flush time.
"""

from __future__ import annotations

import csv
import json
import math
import time
from collections import defaultdict, deque
from collections.abc import Callable, Sequence
from dataclasses import astuple, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from hdrh.histogram import HdrHistogram

from medianest_load.failures import FAILURE_KINDS, failure_kind, reached_server
from medianest_load.open_model import LATENESS, OPEN_STAGE
from medianest_load.results_format import (
    ALL_ENDPOINTS,
    CENSORED_COLUMNS,
    CORRECTED_COLUMNS,
    FAILURE_COLUMNS,
    HISTOGRAM_UNIT,
    NOT_REQUESTS,
    OK_PERCENTILE_COLUMNS,
    PERCENTILE_COLUMNS,
    RAMP,
    SIGNIFICANT_FIGURES,
    SUMMARY_COLUMNS,
    TIMESERIES_COLUMNS,
    censored,
)
from medianest_load.secrets import redact

HISTOGRAM_MAX_US = 3_600_000_000  # one hour: anything slower is clamped, never dropped
RECENT_SECONDS = 60  # ALL rows kept in memory for the progress line; every row also goes to timeseries.csv
# distinct failure messages kept per (stage, phase, endpoint, kind): messages that carry ids or ports would
# otherwise grow without bound over a long run; the counts stay exact, further messages are merged
MESSAGES_PER_KIND = 20
OTHER_MESSAGES = "(further distinct messages of this kind, merged)"


def _histogram() -> HdrHistogram:
    return HdrHistogram(1, HISTOGRAM_MAX_US, SIGNIFICANT_FIGURES)


@dataclass(frozen=True)
class Position:
    """Where the run is: samples are attributed to it."""

    stage: int = 0
    stage_name: str = "setup"
    users: int = 0
    phase: str = RAMP


@dataclass
class Cell:
    """Everything measured for one (stage, phase, endpoint). Latency (histograms, total, min, max) counts only the
    samples that reached a server: the successful ones in `ok_histogram`, the failed ones in `failed_histogram`
    (so a sample costs one record either way); their sum is reached_histogram(). Every field merges by addition."""

    request_type: str
    name: str
    ok_histogram: HdrHistogram = field(default_factory=_histogram)
    failed_histogram: HdrHistogram = field(default_factory=_histogram)
    requests: int = 0
    unreached: int = 0  # failed before reaching a server: no latency to speak of
    backoffs: int = 0  # times a user backed off after this endpoint failed (failed login, 429)
    backoff_s: float = 0.0
    failures: int = 0
    total_ms: float = 0.0
    min_ms: float = float("inf")
    max_ms: float = 0.0
    bytes: int = 0
    ok_bytes: int = 0  # of successful responses only: a failed page visit says nothing of the bundle's size
    failure_kinds: dict[str, int] = field(default_factory=lambda: dict.fromkeys(FAILURE_KINDS, 0))
    # open-model samples only: latency from the iteration's intended start (None: no such sample)
    corrected: HdrHistogram | None = None
    # percentiles and the encoded histogram, recomputed at flush time only when samples arrived since
    changed: bool = True
    _percentiles: dict[str, float | bool | None] = field(default_factory=dict)
    _encoded: str = ""
    _encoded_ok: str = ""
    _encoded_corrected: str = ""

    @property
    def reached(self) -> int:
        return self.requests - self.unreached

    def reached_histogram(self) -> HdrHistogram:
        """Every sample that reached a server, failed or not: what the p*_ms percentiles are read from."""
        reached = _histogram()
        reached.add(self.ok_histogram)
        reached.add(self.failed_histogram)
        return reached

    def percentiles(self) -> dict[str, float | bool | None]:
        """Percentiles of the samples that reached a server (None: none did), their censored flags, and the
        percentiles of the successful samples (None: none succeeded)."""
        self._refresh()
        return self._percentiles

    def encoded(self) -> str:
        self._refresh()
        return self._encoded

    def encoded_ok(self) -> str:
        self._refresh()
        return self._encoded_ok

    def encoded_corrected(self) -> str:
        self._refresh()
        return self._encoded_corrected

    def _refresh(self) -> None:
        if self.changed:
            reached = self.reached_histogram()
            self._percentiles = {
                **_percentiles_ms(reached, PERCENTILE_COLUMNS),
                **{flag: censored(PERCENTILE_COLUMNS[column], self.reached, self.failure_kinds["timeout"])
                   for column, flag in CENSORED_COLUMNS.items()},
                **_percentiles_ms(self.ok_histogram, OK_PERCENTILE_COLUMNS),
            }
            if self.corrected is not None:
                values = self.corrected.get_percentile_to_value_dict(list(CORRECTED_COLUMNS.values()))
                self._percentiles.update({column: values[p] / 1000 for column, p in CORRECTED_COLUMNS.items()})
                self._encoded_corrected = self.corrected.encode().decode("ascii")
            self._encoded = reached.encode().decode("ascii")
            self._encoded_ok = self.ok_histogram.encode().decode("ascii")
            self.changed = False


def _percentiles_ms(histogram: HdrHistogram, columns: dict[str, float]) -> dict[str, float | None]:
    if histogram.get_total_count() == 0:
        return dict.fromkeys(columns)
    values = histogram.get_percentile_to_value_dict(list(columns.values()))
    return {column: values[p] / 1000 for column, p in columns.items()}


HistogramKey = tuple[int, str, str]  # (stage, phase, endpoint), as histograms.json keys them


@dataclass(frozen=True, kw_only=True)
class LiveSnapshot:
    """What the recorder measured so far, as plain data, for judging a finished stage while the run goes on
    (analysis/gate.py) without reaching into the recorder. Histograms are encoded as in histograms.json."""

    summary_rows: list[dict[str, Any]]  # summary.csv rows so far, of every stage (whether the run has seen an
    # endpoint at all decides how a criterion without data in the judged stage explains itself)
    histograms: dict[HistogramKey, str]  # the judged stage's samples that reached a server
    ok_histograms: dict[HistogramKey, str]  # the judged stage's successful samples
    corrected: dict[HistogramKey, str]  # the judged stage's open-model samples, from their intended starts


@dataclass
class PhaseSpan:
    position: Position
    start: float
    end: float | None = None


class Recorder:
    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self.started_at = clock()
        self.position = Position()
        self.spans: list[PhaseSpan] = [PhaseSpan(self.position, self.started_at)]
        self.cells: dict[tuple[Position, str], Cell] = {}
        self.failures: dict[tuple[Position, str, str, str], list[Any]] = {}
        self._messages_per_kind: dict[tuple[Position, str, str], int] = defaultdict(int)
        self._second_samples: dict[str, list[float]] = defaultdict(list)
        self._second_failures: dict[str, int] = defaultdict(int)
        # series rows leave memory once written: a week-long run would otherwise hold millions of them
        self._unwritten_rows: list[list[Any]] = []
        self.recent_totals: deque[list[Any]] = deque(maxlen=RECENT_SECONDS)  # the latest ALL rows
        self._series_started = False
        self._second_started = self.started_at
        self._last_second = 0
        self.listeners: list[Callable[[Position], None]] = []  # told of every transition (the master tells workers)

    # --- run structure ---------------------------------------------------------------------------

    def enter(self, stage: int, stage_name: str, users: int, phase: str) -> None:
        """The shape moved on: samples from now on belong to this stage and phase."""
        now = self.clock()
        self.spans[-1].end = now
        self.position = Position(stage, stage_name, users, phase)
        self.spans.append(PhaseSpan(self.position, now))
        for listener in self.listeners:
            listener(self.position)

    def finish(self) -> None:
        if self.spans[-1].end is None:
            self.spans[-1].end = self.clock()

    # --- the hot path ----------------------------------------------------------------------------

    def on_request(self, request_type: str, name: str, response_time: float, response_length: int,
                   exception: BaseException | None = None, context: dict[str, Any] | None = None, **_: Any) -> None:
        endpoint = f"{request_type} {name}"
        key = (self.position, endpoint)
        cell = self.cells.get(key)
        if cell is None:
            cell = self.cells[key] = Cell(request_type, name)
        cell.requests += 1
        cell.bytes += int(response_length or 0)
        cell.changed = True
        if exception is not None and not reached_server(exception):
            cell.unreached += 1  # counted as a request and a failure, but it has no latency
            self._second_samples[endpoint].append(math.nan)
            self._record_failure(cell, endpoint, exception)
            return
        response_time = max(float(response_time or 0.0), 0.0)
        value_us = min(max(int(response_time * 1000), 1), HISTOGRAM_MAX_US)
        context = context or {}
        lateness = context.get(LATENESS)
        if lateness is not None and context[OPEN_STAGE] == self.position.stage:  # open model: from the intended start
            if cell.corrected is None:
                cell.corrected = _histogram()
            cell.corrected.record_value(min(max(int((response_time + lateness) * 1000), 1), HISTOGRAM_MAX_US))
        cell.total_ms += response_time
        cell.min_ms = min(cell.min_ms, response_time)
        cell.max_ms = max(cell.max_ms, response_time)
        self._second_samples[endpoint].append(response_time)
        if exception is not None:
            cell.failed_histogram.record_value(value_us)
            self._record_failure(cell, endpoint, exception)
        else:
            cell.ok_histogram.record_value(value_us)
            cell.ok_bytes += int(response_length or 0)

    def on_backoff(self, request_type: str, name: str, delay_s: float, **_: Any) -> None:
        """A user backed off for `delay_s` after this endpoint failed (a failed login, a 429)."""
        endpoint = f"{request_type} {name}"
        key = (self.position, endpoint)
        cell = self.cells.get(key)
        if cell is None:
            cell = self.cells[key] = Cell(request_type, name)
        cell.backoffs += 1
        cell.backoff_s += delay_s

    def _record_failure(self, cell: Cell, endpoint: str, exception: BaseException) -> None:
        kind = failure_kind(exception)
        cell.failures += 1
        cell.failure_kinds[kind] += 1
        self._second_failures[endpoint] += 1
        now = self.clock()
        message = str(exception)[:300] or type(exception).__name__
        key = (self.position, endpoint, kind, message)
        if key not in self.failures:
            if self._messages_per_kind[key[:3]] >= MESSAGES_PER_KIND:
                key = (self.position, endpoint, kind, OTHER_MESSAGES)
            else:
                self._messages_per_kind[key[:3]] += 1
        entry = self.failures.setdefault(key, [0, now, now])
        entry[0] += 1
        entry[2] = now

    # --- once a second ---------------------------------------------------------------------------

    def close_second(self, users: int) -> None:
        """Turn the samples of the second that just ended into series rows (one per endpoint and ALL)."""
        now = self.clock()
        # the wall time this row covers: a generator too busy to tick on time makes it longer than 1 s,
        # and every per-second rate divides by it rather than assume it
        elapsed, interval = round(now - self.started_at, 3), round(now - self._second_started, 3)
        # `time` keys the series: unique and increasing, also for the short last row of a run
        second = self._last_second = max(int(now), self._last_second + 1)
        self._second_started = now
        samples, failures = self._second_samples, self._second_failures
        self._second_samples, self._second_failures = defaultdict(list), defaultdict(int)
        requests = [endpoint for endpoint in samples if endpoint.split(" ", 1)[0] not in NOT_REQUESTS]
        everything = [value for endpoint in requests for value in samples[endpoint]]
        prefix = [second, elapsed, interval, self.position.stage, self.position.phase, users]
        for endpoint, values in [*sorted(samples.items()), (ALL_ENDPOINTS, everything)]:
            count = len(values)
            failed = sum(failures.get(e, 0) for e in requests) if endpoint == ALL_ENDPOINTS else failures.get(endpoint, 0)
            array = np.asarray(values)
            array = array[~np.isnan(array)]  # samples that never reached a server have no latency
            stats: list[float | None]
            if array.size:
                stats = [round(float(array.mean()), 3), round(float(np.percentile(array, 95)), 3), round(float(array.max()), 3)]
            else:
                stats = [None, None, None]
            self._unwritten_rows.append([*prefix, endpoint, count, failed, *stats])
        self.recent_totals.append(self._unwritten_rows[-1])

    # --- snapshots that merge by addition (workers -> master) -------------------------------------

    def take_delta(self) -> dict[str, Any]:
        """Everything recorded since the last call, as plain msgpack-able data, and forget it: a worker ships
        this to the master, which adds it with merge_delta. Nothing yields in between, so no sample is lost
        or counted twice."""
        cells, failures = self.cells, self.failures
        seconds, second_failures = self._second_samples, self._second_failures
        self.cells, self.failures = {}, {}
        self._second_samples, self._second_failures = defaultdict(list), defaultdict(int)
        return {
            "cells": [[*astuple(position), endpoint, cell.request_type, cell.name,
                       cell.ok_histogram.encode().decode("ascii"), cell.failed_histogram.encode().decode("ascii"),
                       cell.requests, cell.failures, cell.total_ms, cell.min_ms, cell.max_ms, cell.bytes, cell.ok_bytes,
                       cell.failure_kinds, cell.unreached, cell.backoffs, cell.backoff_s]
                      for (position, endpoint), cell in cells.items()],
            "failures": [[*astuple(position), endpoint, kind, redact(message), *entry]
                         for (position, endpoint, kind, message), entry in failures.items()],
            "seconds": dict(seconds), "second_failures": dict(second_failures),
        }

    def merge_delta(self, delta: dict[str, Any]) -> int:
        """Add a worker's delta: counters and histograms by addition, extremes by min/max. Its per-second
        samples join the second now open here (docs/design.md: late reports). Returns its request count."""
        requests = 0
        for *position, endpoint, request_type, name, ok_encoded, failed_encoded, count, failed, total, low, high, size, \
                ok_size, kinds, unreached, backoffs, backoff_s in delta["cells"]:
            key = (Position(*position), endpoint)
            cell = self.cells.get(key)
            if cell is None:
                cell = self.cells[key] = Cell(request_type, name)
            cell.ok_histogram.add(HdrHistogram.decode(ok_encoded))
            cell.failed_histogram.add(HdrHistogram.decode(failed_encoded))
            cell.unreached += unreached
            cell.backoffs += backoffs
            cell.backoff_s += backoff_s
            cell.requests += count
            cell.failures += failed
            cell.total_ms += total
            cell.min_ms, cell.max_ms = min(cell.min_ms, low), max(cell.max_ms, high)
            cell.bytes += size
            cell.ok_bytes += ok_size
            for kind, number in kinds.items():
                cell.failure_kinds[kind] = cell.failure_kinds.get(kind, 0) + number
            cell.changed = True
            requests += count
        for *position, endpoint, kind, message, count, first, last in delta["failures"]:
            entry = self.failures.setdefault((Position(*position), endpoint, kind, message), [0, first, last])
            entry[0] += count
            entry[1], entry[2] = min(entry[1], first), max(entry[2], last)
        for endpoint, values in delta["seconds"].items():
            self._second_samples[endpoint].extend(values)
        for endpoint, failed in delta["second_failures"].items():
            self._second_failures[endpoint] += failed
        return requests

    # --- results ---------------------------------------------------------------------------------

    def summary_rows(self) -> list[dict[str, Any]]:
        durations = self._phase_durations()
        rows = []
        for (position, endpoint), cell in self.cells.items():
            duration = durations.get(position, 0.0)
            reached = cell.reached
            rows.append({
                "stage": position.stage, "stage_name": position.stage_name, "users": position.users,
                "phase": position.phase, "endpoint": endpoint, "request_type": cell.request_type, "name": cell.name,
                "requests": cell.requests, "failures": cell.failures,
                "error_rate": round(cell.failures / cell.requests, 6) if cell.requests else 0.0,
                "rps": round(cell.requests / duration, 3) if duration > 0 else None,
                "duration_s": round(duration, 3),
                "avg_ms": round(cell.total_ms / reached, 3) if reached else None,
                "min_ms": round(cell.min_ms, 3) if reached else None,
                **cell.percentiles(),
                "max_ms": round(cell.max_ms, 3) if reached else None,
                "bytes": cell.bytes, "ok_bytes": cell.ok_bytes,
                "avg_bytes": round(cell.ok_bytes / successes, 1) if (successes := cell.requests - cell.failures) else None,
                **{f"fail_{kind}": count for kind, count in cell.failure_kinds.items()},
                "unreached": cell.unreached, "backoffs": cell.backoffs, "backoff_s": round(cell.backoff_s, 3),
            })
        return sorted(rows, key=lambda row: (row["stage"], row["phase"] != RAMP, row["endpoint"]))

    def live_snapshot(self, stage: int) -> LiveSnapshot:
        """Everything a stage verdict reads, now: the summary rows, and the histograms of `stage` only (a stage's
        verdict reads no other stage's). Encodings are cached per cell and shared with write()."""
        cells = [(position, endpoint, cell) for (position, endpoint), cell in self.cells.items() if position.stage == stage]
        return LiveSnapshot(
            summary_rows=self.summary_rows(),
            histograms={(position.stage, position.phase, endpoint): cell.encoded() for position, endpoint, cell in cells},
            ok_histograms={(position.stage, position.phase, endpoint): cell.encoded_ok()
                           for position, endpoint, cell in cells},
            corrected={(position.stage, position.phase, endpoint): cell.encoded_corrected()
                       for position, endpoint, cell in cells if cell.corrected is not None},
        )

    def _phase_durations(self) -> dict[Position, float]:
        now = self.clock()
        durations: dict[Position, float] = defaultdict(float)
        for span in self.spans:
            durations[span.position] += (span.end or now) - span.start
        return durations

    def stage_boundaries(self) -> list[dict[str, Any]]:
        """Wall-clock (epoch seconds) start and end of each stage's ramp and steady phase."""
        stages: dict[int, dict[str, Any]] = {}
        for span in self.spans:
            position = span.position
            if position.stage == 0:
                continue
            entry = stages.setdefault(position.stage, {
                "index": position.stage, "name": position.stage_name, "users": position.users,
                "ramp_start": None, "steady_start": None, "steady_end": None, "end": None,
            })
            if position.phase == RAMP:
                entry["ramp_start"] = span.start
            else:
                entry["steady_start"], entry["steady_end"] = span.start, span.end
            entry["end"] = span.end
        return list(stages.values())

    def write(self, folder: Path) -> None:
        """Write (or rewrite) every results file; the series is appended, never rewritten."""
        folder.mkdir(parents=True, exist_ok=True)
        _write_csv(folder / "summary.csv", SUMMARY_COLUMNS, self.summary_rows())
        self._append_timeseries(folder / "timeseries.csv")
        _write_csv(folder / "failures.csv", FAILURE_COLUMNS, self._failure_rows())
        histograms = [
            {"stage": position.stage, "phase": position.phase, "endpoint": endpoint, "encoded": cell.encoded(),
             "encoded_ok": cell.encoded_ok()}
            for (position, endpoint), cell in self.cells.items()
        ]
        corrected = [
            {"stage": position.stage, "phase": position.phase, "endpoint": endpoint,
             "encoded": cell.encoded_corrected()}
            for (position, endpoint), cell in self.cells.items() if cell.corrected is not None
        ]
        _write_atomically(folder / "histograms.json", json.dumps(
            {"unit": HISTOGRAM_UNIT, "significant_figures": SIGNIFICANT_FIGURES, "histograms": histograms,
             "corrected": corrected}))

    def _failure_rows(self) -> list[dict[str, Any]]:
        return [
            {"stage": position.stage, "phase": position.phase, "endpoint": endpoint, "kind": kind,
             "message": redact(message), "count": count, "first_seen": round(first, 3), "last_seen": round(last, 3)}
            for (position, endpoint, kind, message), (count, first, last) in self.failures.items()
        ]

    def _append_timeseries(self, path: Path) -> None:
        """Append the rows written since the last call, then forget them (the file is the series)."""
        new_file = not self._series_started or not path.exists()
        with path.open("w" if new_file else "a", newline="") as handle:
            writer = csv.writer(handle)
            if new_file:
                writer.writerow(TIMESERIES_COLUMNS)
            writer.writerows(self._unwritten_rows)
        self._series_started = True
        self._unwritten_rows = []


def _write_csv(path: Path, columns: Sequence[str], rows: list[dict[str, Any]]) -> None:
    temporary = path.with_suffix(".tmp")
    with temporary.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    temporary.replace(path)


def _write_atomically(path: Path, text: str) -> None:
    temporary = path.with_suffix(".tmp")
    temporary.write_text(text)
    temporary.replace(path)
