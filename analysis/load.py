"""Load a results folder (docs/design.md) into tidy pandas frames, and merge its HdrHistograms exactly.

Percentiles of several endpoints or stages together are never averaged: the histograms' bucket counts are
added and the percentile is read off the sum, exactly as `HdrHistogram.get_value_at_percentile` does.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from hdrh.codec import HdrCookieException, HdrHistogramSettingsException, HdrLengthException
from hdrh.histogram import HdrHistogram

from medianest_load.inputs import InputError
from medianest_load.results_format import (  # noqa: F401  (re-exported for the analysis modules)
    ALL_ENDPOINTS,
    CENSORED_COLUMNS,
    FAILURE_COLUMNS,
    OK_PERCENTILE_COLUMNS,
    PERCENTILE_COLUMNS,
    RAMP,
    STAGE_COLUMNS,
    STEADY,
    SUMMARY_COLUMNS,
    TELEMETRY_COLUMNS,
    TIMESERIES_COLUMNS,
)

HTTP_METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"})
HistogramKey = tuple[int, str, str]  # (stage, phase, endpoint)
# what a damaged histogram string raises (binascii.Error is a ValueError)
CORRUPT_HISTOGRAM = (ValueError, TypeError, zlib.error, HdrCookieException, HdrLengthException,
                     HdrHistogramSettingsException)


class ResultsError(InputError):
    """A results folder that is missing or not in the documented format: the message is one line."""


class Histograms:
    """The run's HdrHistograms, decoded lazily into numpy bucket counts (one config for all of them). `ok`, when
    present, holds the histograms of the successful samples alone (the *_ok_ms percentiles)."""

    def __init__(self, encoded: Mapping[HistogramKey, str | bytes | HdrHistogram], ok: Histograms | None = None):
        self._source = dict(encoded)
        self.ok = ok
        self._counts: dict[HistogramKey, np.ndarray] = {}
        self._template: HdrHistogram | None = None

    def keys(self) -> list[HistogramKey]:
        return list(self._source)

    def counts(self, key: HistogramKey) -> np.ndarray:
        if key not in self._counts:
            value = self._source[key]
            try:
                histogram = value if isinstance(value, HdrHistogram) else HdrHistogram.decode(value)
            except CORRUPT_HISTOGRAM as error:
                raise ResultsError(f"histograms.json: histogram {key}: cannot decode it ({type(error).__name__}); "
                                   "expected a base64 HdrHistogram as the recorder writes it") from None
            if self._template is None:
                self._template = histogram
            elif histogram.counts_len != self._template.counts_len:
                raise ResultsError(f"histograms.json: histogram {key} has another configuration than the others; "
                                   "expected one configuration (1 us to 1 h, 3 significant figures) for every histogram")
            self._counts[key] = np.ctypeslib.as_array(histogram.counts).astype(np.int64)
        return self._counts[key]

    def check_every_one(self) -> None:
        """Decode them all now: a damaged histogram is reported even when no criterion would read it."""
        for key in self._source:
            self.counts(key)
        if self.ok is not None:
            self.ok.check_every_one()

    def merged(self, keys: Iterable[HistogramKey]) -> np.ndarray | None:
        """Bucket counts of the given histograms added together (None when none of them exists)."""
        present = [key for key in keys if key in self._source]
        return np.sum([self.counts(key) for key in present], axis=0) if present else None

    @cached_property
    def _bucket_values(self) -> tuple[np.ndarray, np.ndarray]:
        """Lowest and highest equivalent value (us) of every bucket index, as HdrHistogram computes them."""
        h = self._template
        assert h is not None  # only counts(), which sets it, gives the counts these values apply to
        index = np.arange(h.counts_len, dtype=np.int64)
        bucket = (index >> h.sub_bucket_half_count_magnitude) - 1
        sub_bucket = (index & (h.sub_bucket_half_count - 1)) + h.sub_bucket_half_count
        first = bucket < 0
        sub_bucket = np.where(first, sub_bucket - h.sub_bucket_half_count, sub_bucket)
        bucket = np.where(first, 0, bucket)
        lowest = sub_bucket << (bucket + h.unit_magnitude)
        return lowest, lowest + (np.int64(1) << (bucket + h.unit_magnitude)) - 1

    def percentiles_ms(self, counts: np.ndarray, percentiles: Sequence[float]) -> np.ndarray:
        """`get_value_at_percentile` for many percentiles at once, in milliseconds."""
        lowest, highest = self._bucket_values
        cumulative = np.cumsum(counts)
        total = cumulative[-1]
        wanted = np.asarray(percentiles, dtype=float)
        target = np.maximum((np.minimum(wanted, 100.0) * total / 100 + 0.5).astype(np.int64), 1)
        index = np.minimum(np.searchsorted(cumulative, target), len(counts) - 1)
        return np.where(wanted > 0, highest[index], lowest[index]) / 1000.0

    def group_percentiles(self, rows: pd.DataFrame, by: list[str],
                          columns: Mapping[str, float] = PERCENTILE_COLUMNS) -> pd.DataFrame:
        """Exact percentiles (ms) of the histograms of `rows` (stage, phase, endpoint) merged per `by` group."""
        keys = rows[["stage", "phase", "endpoint"]].astype({"stage": int}).itertuples(index=False, name=None)
        groups = [rows[column] for column in by] if len(by) > 1 else rows[by[0]] if by else np.zeros(len(rows), dtype=int)
        grouped = pd.Series(list(keys), index=rows.index, dtype=object).groupby(groups, sort=True)
        values = {}
        for group, group_keys in grouped:
            counts = self.merged(group_keys)
            if counts is not None and counts.sum() > 0:
                values[group] = self.percentiles_ms(counts, list(columns.values()))
        frame = pd.DataFrame.from_dict(values, orient="index", columns=list(columns))
        if by and len(by) > 1 and len(frame):
            frame.index = pd.MultiIndex.from_tuples(frame.index, names=by)
        elif by:
            frame.index.name = by[0]
        return frame


@dataclass(frozen=True)
class RunData:
    """One results folder as tidy frames; `stages` has one row per stage of run.json, indexed by stage.

    The 1-second series of a week-long run has millions of rows: only its every-endpoint (ALL) rows are held
    (`overview`); `series_chunks()` reads it chunk by chunk for aggregates, `timeseries` reads all of it."""

    path: Path
    info: dict[str, Any]
    stages: pd.DataFrame
    summary: pd.DataFrame
    overview: pd.DataFrame
    failures: pd.DataFrame
    histograms: Histograms = field(repr=False)
    # open-model stages: latency from each iteration's intended start (histograms.json "corrected"; none for closed)
    corrected: Histograms = field(default_factory=lambda: Histograms({}), repr=False)
    telemetry: pd.DataFrame | None = None  # telemetry.csv (server /metrics scrapes); None when the run has none

    @property
    def name(self) -> str:
        return self.path.name

    def series_chunks(self) -> Iterator[pd.DataFrame]:
        return series_chunks(self.path / "timeseries.csv")

    @cached_property
    def timeseries(self) -> pd.DataFrame:
        """Every row of the series (per endpoint and ALL): for short runs and per-endpoint comparisons."""
        return read_series(self.path / "timeseries.csv")

    @property
    def steady(self) -> pd.DataFrame:
        """The summary rows criteria judge: steady phases of real stages."""
        return self.summary[(self.summary["phase"] == STEADY) & (self.summary["stage"] > 0)]


def endpoint_kind(request_type: pd.Series) -> pd.Series:
    """http, page, sio, txn, browser, ttfb or other, from the recorder's request_type."""
    kinds = np.select([request_type.isin(HTTP_METHODS), request_type == "PAGE", request_type == "SIO",
                       request_type == "TXN", request_type == "BROWSER", request_type == "TTFB"],
                      ["http", "page", "sio", "txn", "browser", "ttfb"], "other")
    return pd.Series(kinds, index=request_type.index)


def _read_csv(path: Path, required: Sequence[str]) -> pd.DataFrame:
    (frame,) = _csv_chunks(path, required, chunk_rows=None)
    return frame


def _csv_chunks(path: Path, required: Sequence[str], chunk_rows: int | None) -> Iterator[pd.DataFrame]:
    """The file as frames of at most chunk_rows rows (one frame when None); any damage is one ResultsError line."""
    if not path.is_file():
        raise ResultsError(f"{path}: missing; expected a results folder written by `medianest-load run` (docs/design.md)")
    try:
        chunks = pd.read_csv(path, chunksize=chunk_rows) if chunk_rows else iter([pd.read_csv(path)])
        for chunk in chunks:
            missing = [column for column in required if column not in chunk.columns]
            if missing:
                raise ResultsError(f"{path}: column(s) {', '.join(missing)} missing; expected the columns of docs/design.md")
            yield chunk
    except pd.errors.EmptyDataError:
        raise ResultsError(f"{path}: empty (not even a header); expected the columns of docs/design.md") from None
    except ResultsError:
        raise
    except (ValueError, UnicodeDecodeError, OSError) as error:  # ParserError is a ValueError
        reason = (str(error).splitlines() or [type(error).__name__])[0]
        raise ResultsError(f"{path}: not a readable CSV ({reason}); expected the docs/design.md format") from None


SERIES_CHUNK_ROWS = 250_000  # about 25 MB of frame at a time, whatever the length of the run
SERIES_NUMERIC = ("elapsed_s", "interval_s", "stage", "users", "requests", "failures", "avg_ms", "p95_ms", "max_ms")
RowFilter = Callable[[pd.DataFrame], pd.Series]


def series_chunks(path: Path, chunk_rows: int = SERIES_CHUNK_ROWS) -> Iterator[pd.DataFrame]:
    """timeseries.csv chunk by chunk, each checked and typed; a series without rows is damaged (the recorder
    writes one row every second)."""
    rows = 0
    for chunk in _csv_chunks(path, TIMESERIES_COLUMNS, chunk_rows):
        rows += len(chunk)
        yield _typed(_numeric(chunk, path, SERIES_NUMERIC), path,
                     {"stage": int, "requests": int, "failures": int, "phase": str, "endpoint": str})
    if not rows:
        raise ResultsError(f"{path}: no rows; expected at least one row (the recorder writes one every second)")


def read_series(path: Path, keep: RowFilter | None = None, chunk_rows: int = SERIES_CHUNK_ROWS) -> pd.DataFrame:
    """The series rows `keep` selects (every row without it): memory follows what is kept, not the run's length."""
    return pd.concat([chunk[keep(chunk)] if keep is not None else chunk for chunk in series_chunks(path, chunk_rows)],
                     ignore_index=True)


def _typed(frame: pd.DataFrame, path: Path, types: Mapping[str, type]) -> pd.DataFrame:
    """The columns as the given types; an empty cell in a whole-number column is one ResultsError line."""
    blank = [column for column, kind in types.items() if kind is int and frame[column].isna().any()]
    if blank:
        raise ResultsError(f"{path}: column {blank[0]} has an empty value; expected a whole number in every row")
    return frame.astype(dict(types))


def _numeric(frame: pd.DataFrame, path: Path, columns: Iterable[str]) -> pd.DataFrame:
    for column in columns:
        converted = pd.to_numeric(frame[column], errors="coerce")
        bad = converted.isna() & frame[column].notna()
        if bad.any():
            raise ResultsError(f"{path}: column {column} has the non-numeric value {frame[column][bad].iloc[0]!r}; "
                               "expected a number")
        frame[column] = converted
    return frame


def stages_frame(stages: list[dict[str, Any]], source: str = "run.json") -> pd.DataFrame:
    """run.json's stages as a frame indexed by stage index (epoch-second columns stay floats, NaN = never)."""
    if not isinstance(stages, list) or not all(isinstance(stage, dict) for stage in stages):
        raise ResultsError(f"{source}: field stages is {type(stages).__name__}; expected a list of stage objects")
    frame = pd.DataFrame(stages, columns=list(dict.fromkeys([*STAGE_COLUMNS, *(key for s in stages for key in s)])))
    frame = frame.astype({"index": int, "users": int}).set_index("index", drop=False).rename_axis("stage")
    for column in ("spawn_rate", "ramp_start", "steady_start", "steady_end", "planned_hold_s"):
        frame[column] = pd.to_numeric(frame[column], errors="coerce")
    return frame.sort_index()


def load_run(run_dir: str | Path) -> RunData:
    """Read every file of a results folder; any departure from docs/design.md is one ResultsError line."""
    path = Path(run_dir)
    if not path.is_dir():
        raise ResultsError(f"{path}: not a folder; expected a results folder written by `medianest-load run`")
    info_path = path / "run.json"
    try:
        info = json.loads(info_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ResultsError(f"{info_path}: missing; expected a results folder written by `medianest-load run`") from None
    except UnicodeDecodeError as error:
        raise ResultsError(f"{info_path}: not UTF-8 text (byte {error.start}); expected run.json of docs/design.md") from None
    except OSError as error:
        raise ResultsError(f"{info_path}: cannot read it ({error.strerror or error}); "
                           "expected run.json of docs/design.md") from None
    except json.JSONDecodeError as error:
        raise ResultsError(f"{info_path}: not valid JSON ({error.msg} at line {error.lineno}); "
                           "expected run.json of docs/design.md") from None
    if not isinstance(info, dict):
        raise ResultsError(f"{info_path}: holds a {type(info).__name__}; expected a JSON object")
    try:
        stages = stages_frame(info.get("stages", []), str(info_path))
    except (KeyError, TypeError, ValueError) as error:
        raise ResultsError(f"{info_path}: field stages is malformed ({error}); "
                           "expected {index, name, users, ...} per stage") from None

    summary = _numeric(_read_csv(path / "summary.csv", SUMMARY_COLUMNS), path / "summary.csv",
                       ("stage", "users", "requests", "failures", "duration_s", "avg_ms", "min_ms",
                        *PERCENTILE_COLUMNS, "max_ms", "bytes", "ok_bytes", "unreached", *OK_PERCENTILE_COLUMNS))
    for flag in CENSORED_COLUMNS.values():  # written as True/False
        summary[flag] = summary[flag].astype(str).str.lower().eq("true")
    summary = _typed(summary, path / "summary.csv", {"stage": int, "users": int, "requests": int, "failures": int,
                                                     "phase": str, "endpoint": str, "request_type": str, "stage_name": str})
    summary["kind"] = endpoint_kind(summary["request_type"])

    overview = read_series(path / "timeseries.csv", lambda chunk: chunk["endpoint"] == ALL_ENDPOINTS)
    failures = _read_csv(path / "failures.csv", FAILURE_COLUMNS)
    return RunData(path, info, stages, summary, overview, failures, _load_histograms(path / "histograms.json"),
                   _load_histograms(path / "histograms.json", "corrected"), _load_telemetry(path / "telemetry.csv"))


def _load_telemetry(path: Path) -> pd.DataFrame | None:
    """telemetry.csv, or None for a run without scraping (it is optional: --no-scrape, older folders)."""
    if not path.is_file():
        return None
    frame = _numeric(_read_csv(path, TELEMETRY_COLUMNS), path, ("time", "elapsed_s", "stage", "value"))
    return frame.astype({"stage": int, "phase": str, "metric": str}).fillna({"labels": ""}).astype({"labels": str})


def _load_histograms(path: Path, timing: str = "histograms") -> Histograms:
    """The raw histograms, or (timing "corrected") the open-model stages' corrected ones, absent in older folders."""
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
        entries = document["histograms"] if timing == "histograms" else document.get(timing, [])
        unit = document.get("unit", "us")
    except FileNotFoundError:
        raise ResultsError(f"{path}: missing; expected a results folder written by `medianest-load run`") from None
    except (json.JSONDecodeError, UnicodeDecodeError, OSError, KeyError, TypeError, AttributeError):
        raise ResultsError(f"{path}: not the documented format; expected {{\"unit\": \"us\", \"histograms\": [...]}}") from None
    if unit != "us":
        raise ResultsError(f"{path}: field unit is {unit!r}; expected 'us'")
    try:
        keyed = {(int(e["stage"]), str(e["phase"]), str(e["endpoint"])): e for e in entries}
        ok = {key: e["encoded_ok"] for key, e in keyed.items() if "encoded_ok" in e}
        histograms = Histograms({key: e["encoded"] for key, e in keyed.items()}, Histograms(ok) if ok else None)
    except (KeyError, TypeError, ValueError):
        raise ResultsError(f"{path}: an entry lacks stage, phase, endpoint or encoded; expected them in every entry") from None
    histograms.check_every_one()
    return histograms
