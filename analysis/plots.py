"""The report's plots (matplotlib, Agg, PNG): latency and throughput against users, errors per stage, the
run over time with its stages as bands, the latency percentile spectrum, Socket.IO. Each function draws one
figure from the tidy frames and returns the file it wrote; `make_plots` draws them all."""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.collections import PolyCollection  # noqa: E402
from matplotlib.ticker import AutoLocator, LogLocator, NullLocator  # noqa: E402

from analysis.criteria import Criterion, SloSet  # noqa: E402
from analysis.load import RAMP, STEADY, RunData  # noqa: E402
from analysis.project import MemoryProjection, Projection, curve, stage_intervals  # noqa: E402
from analysis.selection import USERS_PATTERN, endpoint_mask  # noqa: E402
from analysis.server import MIN_SLOPE_SCRAPES, MIN_SLOPE_WINDOW_S, load_telemetry, memory_growth  # noqa: E402

DPI = 90
WARN_COLOR, CRITICAL_COLOR, BASELINE_COLOR = "#e69f00", "#d62728", "#7f7f7f"
PERCENTILE_STYLE = {"p50_ms": ("p50", "#56b4e9"), "p95_ms": ("p95", "#0072b2"), "p99_ms": ("p99", "#cc79a7")}
SPECTRUM = np.array([0, 10, 25, 50, 75, 80, 85, 90, 92.5, 95, 96.5, 97.5, 98.5, 99, 99.25, 99.5, 99.75, 99.9,
                     99.95, 99.99, 99.995, 99.999])
FAILURE_PREFIX = "fail_"


@dataclass(frozen=True, kw_only=True)
class Layout:
    """A figure's margins and the gaps between its axes, in inches. Fixed rather than constrained: constrained
    layout measured every text of every axes at each save to find about these margins again, most of the report's
    drawing time. The defaults hold tick labels of up to six characters ("0.0010", "12000") and an axis label on
    the left, tick labels and an axis label below, a 12-pt title above."""

    left: float = 0.8
    right: float = 0.2
    bottom: float = 0.5
    top: float = 0.3
    wgap: float = 0.0  # between columns
    hgap: float = 0.0  # between rows

    def fractions(self, size: tuple[float, float], rows: int, columns: int) -> dict[str, float]:
        """The margins and gaps as `subplots_adjust` takes them: figure fractions, gaps in axes widths / heights."""
        width, height = size
        axes_width = (width - self.left - self.right - (columns - 1) * self.wgap) / columns
        axes_height = (height - self.bottom - self.top - (rows - 1) * self.hgap) / rows
        return {"left": self.left / width, "right": 1 - self.right / width, "bottom": self.bottom / height,
                "top": 1 - self.top / height, "wspace": self.wgap / axes_width, "hspace": self.hgap / axes_height}


SUPTITLE_IN = 0.25  # a figure title's 12-pt line and the space above it
TITLED_CELLS = Layout(top=0.3 + SUPTITLE_IN, wgap=1.0, hgap=0.75)  # per axes: a 9-pt title above, tick labels below
BANDED_ROWS = Layout(top=0.2 + SUPTITLE_IN, hgap=0.2)  # shared x below, stage names above the first axes


def _fixed_titles() -> AbstractContextManager[None]:
    """Axes made within put their titles at the top without measuring: the automatic place dodges an offset text
    above the y axis ("1e6"), which these plots never need, by laying out every y tick label once more at each save."""
    return plt.rc_context({"axes.titley": 1.0})


class _TicksInView(AutoLocator):
    """matplotlib's default ticks without those past the ends of the axis, which it makes and leaves undrawn."""

    def __init__(self, bins: int) -> None:
        super().__init__()
        self.set_params(nbins=bins)

    def __call__(self) -> Any:
        assert self.axis is not None
        low, high = sorted(self.axis.get_view_interval())
        ticks = super().__call__()
        slack = (high - low) * 1e-9
        return ticks[(ticks >= low - slack) & (ticks <= high + slack)]


def _fewer_ticks(figure: plt.Figure) -> None:
    """Major ticks half as far apart again as matplotlib's default (an interval per 45 pt of x or 30 pt of y instead
    of 30 and 20; still 4 to 9 intervals), none past the ends, on every axis that kept the default locator (not
    categorical, logarithmic or fixed): each tick is five artists (two tick lines, a grid line, two labels) made and
    laid out at every save, the larger part of the report's drawing time. A grid cell gets 5 intervals, not 8."""
    for axis in figure.axes:
        for ticks in (axis.xaxis, axis.yaxis):
            if type(ticks.get_major_locator()) is AutoLocator:
                ticks.set_major_locator(_TicksInView(max(4, min(ticks.get_tick_space() * 2 // 3, 9))))


def _figure(rows: int, columns: int, size: tuple[float, float], layout: Layout = Layout(),
            **options: Any) -> tuple[plt.Figure, Any]:
    """`plt.subplots` of `size` inches on a fixed layout."""
    with _fixed_titles():
        figure, axes = plt.subplots(rows, columns, figsize=size, gridspec_kw=layout.fractions(size, rows, columns),
                                    **options)
    return figure, axes


def _suptitle(figure: plt.Figure, text: str) -> None:
    """The figure's title 0.08 in below the top edge, in the room SUPTITLE_IN keeps for it."""
    figure.suptitle(text, y=1 - 0.08 / figure.get_figheight())


def _save(figure: plt.Figure, path: Path) -> Path:
    """The PNG at zlib's level 3, the smallest of its fast levels (1-3): the default, 6, spent twice the time on
    a tenth less file, a sixth of the report's drawing time."""
    _fewer_ticks(figure)
    figure.savefig(path, dpi=DPI, pil_kwargs={"compress_level": 3})
    plt.close(figure)
    return path


def _legend(axis: plt.Axes, **options: Any) -> None:
    """A legend only when something is labelled (an empty one is a matplotlib warning); the handles found once."""
    handles, labels = axis.get_legend_handles_labels()
    if handles:
        axis.legend(handles, labels, **options)


def _grid(count: int, columns: int = 3, size: tuple[float, float] = (4.4, 3.0)) -> tuple[plt.Figure, list[plt.Axes]]:
    """`count` titled axes of `size` inches each, `columns` to a row, under a figure title; the empty cells of the
    last row get no axes (hidden ones cost as much to make as drawn ones)."""
    rows = max(1, -(-count // columns))
    columns = min(columns, max(count, 1))
    size = (size[0] * columns, size[1] * rows + SUPTITLE_IN)
    figure = plt.figure(figsize=size)
    cells = figure.add_gridspec(rows, columns, **TITLED_CELLS.fractions(size, rows, columns))
    with _fixed_titles():
        axes = [figure.add_subplot(cells[index // columns, index % columns]) for index in range(count)]
    return figure, axes


SloLine = tuple[float, str, str]  # limit, label, color


def _levels(criterion: Criterion) -> list[SloLine]:
    return [(level.limit, f"{criterion.name} {tag} {level.text}", color)
            for level, tag, color in ((criterion.warn, "warn", WARN_COLOR), (criterion.critical, "critical", CRITICAL_COLOR))
            if level is not None]


def slo_lines(slo: SloSet | None, metric: str) -> list[SloLine]:
    """The levels of the criteria on `metric`."""
    criteria = slo.criteria if slo else ()
    return [line for criterion in criteria if criterion.metric.name == metric for line in _levels(criterion)]


def endpoint_slo_lines(slo: SloSet | None, metric: str, endpoints: Sequence[str]) -> dict[str, list[SloLine]]:
    """Per endpoint, the levels of the criteria on `metric` whose endpoint selector covers it: each selector is
    matched once against every endpoint (a pandas call per endpoint and criterion cost a second on 30 endpoints)."""
    frame = pd.DataFrame({"endpoint": endpoints})
    lines: dict[str, list[SloLine]] = {endpoint: [] for endpoint in endpoints}
    for criterion in slo.criteria if slo else ():
        if criterion.metric.name == metric:
            for endpoint in frame.loc[endpoint_mask(frame, criterion.endpoint), "endpoint"]:
                lines[endpoint] += _levels(criterion)
    return lines


def _latency_axis(axis: plt.Axes, title: str, max_users: float) -> None:
    """Milliseconds against users from 0, gridded, with a small legend."""
    axis.set_title(title, fontsize=9)
    axis.set_xlabel("users")
    axis.set_ylabel("ms")
    axis.set_xlim(0, max_users * 1.05)
    axis.set_ylim(bottom=0)
    axis.grid(alpha=0.3)
    _legend(axis, fontsize=6, loc="upper left")


def _stage_label(frame: pd.DataFrame) -> pd.Series:
    return "stage " + frame["stage"].astype(str) + "\n" + frame["users"].astype(str) + " users"


def latency_vs_users(run: RunData, slo: SloSet | None, path: Path) -> Path | None:
    """p50 / p95 / p99 against users per endpoint, with the SLO levels and the audit's baseline."""
    steady = run.steady.sort_values(["endpoint", "users", "stage"])
    endpoints = list(steady["endpoint"].unique())
    if not endpoints:
        return None
    figure, axes = _grid(len(endpoints))
    baseline = slo.baseline if slo else {}
    levels = endpoint_slo_lines(slo, "p95_ms", endpoints)
    for axis, (endpoint, rows) in zip(axes, steady.groupby("endpoint", sort=True), strict=False):
        for column, (label, color) in PERCENTILE_STYLE.items():
            axis.plot(rows["users"], rows[column], marker="o", color=color, label=label)
        for limit, label, color in levels[endpoint]:
            axis.axhline(limit, color=color, linestyle="--", linewidth=1, label=label)
        for key, style in (("avg_ms", ":"), ("p95_ms", "-.")):
            value = baseline.get(rows["name"].iloc[0], {}).get(key)
            if value is not None:
                axis.axhline(value, color=BASELINE_COLOR, linestyle=style, linewidth=1,
                             label=f"audit baseline {key[:-3]} {value:g} ms")
        _latency_axis(axis, endpoint, steady["users"].max())
    _suptitle(figure, "Latency against users (steady phases)")
    return _save(figure, path)


def throughput_vs_users(run: RunData, slo: SloSet | None, path: Path) -> Path | None:
    """Requests per second against users: HTTP, every endpoint, linear scaling from the first stage, the SLO."""
    steady = run.steady
    if steady.empty:
        return None
    duration = steady.groupby("stage")["duration_s"].max()
    per_stage = pd.DataFrame({
        "users": steady.groupby("stage")["users"].first(),
        "http": (steady[steady["kind"] == "http"].groupby("stage")["requests"].sum().reindex(duration.index, fill_value=0)
                 / duration),
        "all": steady.groupby("stage")["requests"].sum() / duration,
    }).sort_values("users")
    figure, axis = _figure(1, 1, (7, 4))
    axis.plot(per_stage["users"], per_stage["http"], marker="o", label="HTTP requests/s")
    axis.plot(per_stage["users"], per_stage["all"], marker="s", alpha=0.6, label="all samples/s (incl. pages, Socket.IO)")
    first = per_stage.iloc[0]
    axis.plot(per_stage["users"], first["http"] / first["users"] * per_stage["users"], color=BASELINE_COLOR,
              linestyle=":", label="linear scaling from the first stage")
    for criterion in slo.criteria if slo else ():
        if criterion.metric.name != "rps":
            continue
        scoped = USERS_PATTERN.match(criterion.stage) if isinstance(criterion.stage, str) else None
        for level, color in ((criterion.warn, WARN_COLOR), (criterion.critical, CRITICAL_COLOR)):
            if level is None:
                continue
            label = f"{criterion.name}: fails when {level.text} ({criterion.stage_label})"
            if scoped:  # a level that holds at one users count only is a mark there, not a line
                axis.plot([int(scoped.group(1))], [level.limit], marker="_", markersize=40, mew=2, color=color, linestyle="",
                          label=label)
            else:
                axis.axhline(level.limit, color=color, linestyle="--", linewidth=1, label=label)
    axis.set_xlabel("users")
    axis.set_ylabel("requests / s")
    axis.set_xlim(left=0)
    axis.set_ylim(bottom=0)
    axis.grid(alpha=0.3)
    _legend(axis, fontsize=7)
    axis.set_title("Throughput against users (steady phases)")
    return _save(figure, path)


def error_rate_by_stage(run: RunData, slo: SloSet | None, path: Path) -> Path | None:
    """Error rate per stage (steady phase), stacked by failure kind, with the SLO levels."""
    steady = run.steady
    if steady.empty:
        return None
    kinds = [column for column in steady.columns if column.startswith(FAILURE_PREFIX)]
    per_stage = steady.groupby(["stage", "stage_name", "users"])[["requests", "failures", *kinds]].sum().reset_index()
    rates = per_stage[kinds].div(per_stage["requests"].where(per_stage["requests"] > 0), axis=0).fillna(0) * 100
    figure, axis = _figure(1, 1, (max(6, 1.5 * len(per_stage)), 4), Layout(bottom=0.6))  # two-line stage labels
    labels, bottom = _stage_label(per_stage), np.zeros(len(per_stage))
    for kind in kinds:
        if rates[kind].any():
            axis.bar(labels, rates[kind], bottom=bottom, label=kind[len(FAILURE_PREFIX):])
            bottom += rates[kind].to_numpy()
    for limit, label, color in slo_lines(slo, "error_rate"):
        axis.axhline(limit * 100, color=color, linestyle="--", linewidth=1, label=label)
    axis.set_ylabel("failed requests, % of requests")
    axis.set_ylim(0, max(bottom.max(), *(limit * 100 for limit, _, _ in slo_lines(slo, "error_rate")), 0.5) * 1.15)
    axis.set_title("Error rate per stage (steady phase), by failure kind")
    axis.grid(axis="y", alpha=0.3)
    _legend(axis, fontsize=7)
    return _save(figure, path)


def _stage_bands(axes: Sequence[plt.Axes], series: pd.DataFrame) -> None:
    spans = (series[series["stage"] > 0].groupby(["stage", "phase"])["elapsed_s"].agg(["min", "max"]).reset_index())
    for _, span in spans.iterrows():
        color = "#bbbbbb" if span["phase"] == RAMP else ("#d9ecff" if span["stage"] % 2 else "#e8f6e8")
        for axis in axes:
            axis.axvspan(span["min"], span["max"] + 1, color=color, alpha=0.5 if span["phase"] == RAMP else 0.6, linewidth=0)
    steady = spans[spans["phase"] == STEADY]
    for _, span in steady.iterrows():
        axes[0].text((span["min"] + span["max"]) / 2, 1.02, f"stage {span['stage']}", transform=axes[0].get_xaxis_transform(),
                     ha="center", fontsize=7)


PER_MINUTE_AFTER_S = 3 * 3600  # a longer run is drawn per minute: a week is 10,080 points instead of 604,800


def per_minute_if_long(series: pd.DataFrame) -> pd.DataFrame:
    """ALL rows of the series as drawn: per second, or per minute for a long run (counts and seconds summed, users
    averaged, p95 the worst second's so that a spike stays visible; split at stage and phase changes)."""
    if series.empty or series["elapsed_s"].iloc[-1] - series["elapsed_s"].iloc[0] <= PER_MINUTE_AFTER_S:
        return series
    minute = (series["elapsed_s"] // 60).astype(int).rename("minute")
    return (series.groupby([minute, "stage", "phase"], sort=True)
            .agg(time=("time", "first"), elapsed_s=("elapsed_s", "first"), users=("users", "mean"),
                 requests=("requests", "sum"), failures=("failures", "sum"), interval_s=("interval_s", "sum"),
                 p95_ms=("p95_ms", "max"))
            .reset_index().drop(columns="minute").sort_values("elapsed_s", ignore_index=True))


def _bars(axis: plt.Axes, x: pd.Series, heights: pd.Series, width: float, color: str) -> None:
    """`axis.bar`'s rectangles as one artist: `bar` makes one per value, 3,600 in an hour's timeline, whose making
    and drawing took half of that report's plotting time."""
    corners = [[(start, 0), (start, top), (start + width, top), (start + width, 0)]
               for start, top in zip(x.to_numpy() - width / 2, heights.to_numpy(), strict=True)]
    bars = PolyCollection(corners, facecolors=color, linewidths=0)
    bars.sticky_edges.y.append(0)
    axis.add_collection(bars)


def timeline(run: RunData, path: Path) -> Path | None:
    """Users, requests/s, p95 and failures per second (per minute for long runs) over the run; ramps grey,
    steady phases coloured."""
    series = per_minute_if_long(run.overview.sort_values("elapsed_s"))
    if series.empty:
        return None
    unit = "minute" if len(series) < len(run.overview) else "second"
    figure, axes = _figure(4, 1, (11, 8), BANDED_ROWS, sharex=True)
    _stage_bands(axes, series)
    elapsed = series["elapsed_s"]
    axes[0].plot(elapsed, series["users"], color="black")
    axes[0].set_ylabel("users")
    axes[1].plot(elapsed, series["requests"] / series["interval_s"].where(series["interval_s"] > 0), color="#0072b2",
                 linewidth=0.8)
    axes[1].set_ylabel("requests / s")
    axes[2].plot(elapsed, series["p95_ms"], color="#0072b2", linewidth=0.6, alpha=0.5,
                 label="p95 of each second" if unit == "second" else "worst per-second p95 of each minute")
    axes[2].plot(elapsed, series["p95_ms"].rolling(10, min_periods=1).median(), color="#d55e00", linewidth=1.2,
                 label="10-s rolling median" if unit == "second" else "10-min rolling median")
    axes[2].set_ylabel("p95 ms (all)")
    _legend(axes[2], fontsize=7, loc="upper left")
    _bars(axes[3], elapsed, series["failures"], 1.0 if unit == "second" else 60.0, CRITICAL_COLOR)
    axes[3].set_ylabel("failures / s" if unit == "second" else "failures / min")
    axes[3].set_xlabel("seconds since the run started (grey: ramps, coloured: steady phases)")
    for axis in axes:
        axis.set_ylim(bottom=0)
        axis.grid(alpha=0.3)
    _suptitle(figure, "The run over time")
    return _save(figure, path)


SUPERSCRIPTS = str.maketrans("-0123456789", "\u207b\u2070\u00b9\u00b2\u00b3\u2074\u2075\u2076\u2077\u2078\u2079")


def _power_of_ten(value: float, _: float) -> str:
    """A log axis's label as plain text, "10³": matplotlib's own, "$10^{3}$", is mathtext, parsed again for every
    figure (a twentieth of a report's drawing time for a dozen labels)."""
    return "10" + str(round(np.log10(value))).translate(SUPERSCRIPTS)


def latency_spectrum(run: RunData, path: Path) -> Path | None:
    """Latency at each percentile per endpoint, from the histograms merged over every steady phase."""
    steady = run.steady
    keys = steady[["stage", "phase", "endpoint"]]
    if keys.empty:
        return None
    figure, axes = _figure(1, 2, (12, 4.5), Layout(right=0.3, wgap=0.8), width_ratios=[3, 2])
    x = 1 / (1 - SPECTRUM / 100)
    spectra = run.histograms.group_percentiles(keys, ["endpoint"], {f"{p:g}": p for p in SPECTRUM})
    for endpoint, values in spectra.iterrows():
        axes[0].plot(x, values.to_numpy(), label=endpoint, linewidth=1)
    by_stage = run.histograms.group_percentiles(steady[steady["kind"] == "http"][["stage", "phase", "endpoint"]], ["stage"],
                                                {f"{p:g}": p for p in SPECTRUM})
    for stage, values in by_stage.iterrows():
        users = steady.loc[steady["stage"] == stage, "users"].iloc[0]
        axes[1].plot(x, values.to_numpy(), label=f"stage {stage} ({users} users)", linewidth=1.2)
    ticks = [50, 90, 99, 99.9, 99.99, 99.999]
    for axis, title in ((axes[0], "per endpoint, all steady phases"), (axes[1], "all HTTP endpoints, per stage")):
        axis.set_xscale("log")
        axis.set_yscale("log")
        axis.set_xticks([1 / (1 - t / 100) for t in ticks], [f"{t:g}%" for t in ticks])
        # minor ticks, each five artists like a major one: none between the percentiles (2x ... 9x a tail, 40 ticks
        # that say nothing), and 2 and 5 times each power of ten of ms (not 2 to 9, 8 a decade)
        axis.xaxis.set_minor_locator(NullLocator())
        axis.yaxis.set_minor_locator(LogLocator(subs=(2, 5)))
        axis.yaxis.set_major_formatter(_power_of_ten)
        axis.set_xlabel("percentile")
        axis.set_ylabel("ms")
        axis.grid(alpha=0.3, which="both")
        axis.set_title(f"Latency percentile spectrum: {title}", fontsize=9)
        _legend(axis, fontsize=6, loc="upper left")
    return _save(figure, path)


def socketio(run: RunData, slo: SloSet | None, path: Path) -> Path | None:
    """Socket.IO connect success and server-push delay per stage (None when the run had no Socket.IO)."""
    steady = run.steady
    connects = steady[steady["endpoint"].str.startswith("SIO connect")]
    pushes = steady[steady["endpoint"].str.startswith("SIO push")]
    if connects.empty and pushes.empty:
        return None
    figure, axes = _figure(1, 2, (12, 4), Layout(bottom=0.6, wgap=0.8))
    per_stage = connects.groupby(["stage", "stage_name", "users"])[["requests", "failures"]].sum().reset_index()
    success = (1 - per_stage["failures"] / per_stage["requests"]) * 100
    axes[0].bar(_stage_label(per_stage), success, color="#009e73")
    for limit, label, color in slo_lines(slo, "connect_success"):
        axes[0].axhline(limit * 100, color=color, linestyle="--", linewidth=1, label=label)
    axes[0].set_ylim(min(90.0, success.min() - 1 if len(success) else 90.0), 100.5)
    axes[0].set_ylabel("connect success %")
    axes[0].set_title("Socket.IO connect success per stage", fontsize=9)
    _legend(axes[0], fontsize=7, loc="lower left")
    if len(pushes):
        merged = run.histograms.group_percentiles(pushes, ["stage"], {"p50": 50, "p95": 95, "p99": 99})
        users = pushes.groupby("stage")["users"].first().reindex(merged.index)
        for column, color in zip(merged.columns, ("#56b4e9", "#0072b2", "#cc79a7"), strict=True):
            axes[1].plot(users, merged[column], marker="o", label=column, color=color)
    for limit, label, color in slo_lines(slo, "push_delay_p95_ms"):
        axes[1].axhline(limit, color=color, linestyle="--", linewidth=1, label=label)
    axes[1].set_xlabel("users")
    axes[1].set_ylabel("push delay ms (receive time - server sentAt)")
    axes[1].set_ylim(bottom=0)
    axes[1].set_title("Socket.IO server-push delay per stage", fontsize=9)
    axes[1].grid(alpha=0.3)
    _legend(axes[1], fontsize=7)
    return _save(figure, path)


def server(run: RunData, slo: SloSet | None, path: Path) -> Path | None:
    """Server telemetry over the run, stages as bands: memory with the fitted growth, loop lag, CPU, cache and DB."""
    telemetry = load_telemetry(run)
    if telemetry.missing(("resident_memory_bytes",)):
        return None
    series = telemetry.per_scrape
    figure, axes = _figure(4, 1, (11, 9), BANDED_ROWS, sharex=True)
    _stage_bands(axes, run.overview)
    elapsed = series["elapsed_s"]
    axes[0].plot(elapsed, series["memory_mb"], color="black", linewidth=1, label="resident memory")
    if "heap_mb" in series:
        axes[0].plot(elapsed, series["heap_mb"], color="#56b4e9", linewidth=1, label="heap used")
    steady = series[(series["phase"] == STEADY) & (series["stage"] > 0)]
    for stage, rows in steady.groupby("stage"):
        if len(rows) < MIN_SLOPE_SCRAPES or rows["time"].max() - rows["time"].min() < MIN_SLOPE_WINDOW_S:
            continue  # what the criterion would not judge is not drawn either
        slope, low, high = memory_growth(rows)
        hours = (rows["time"] - rows["time"].median()) / 3600
        for value, style in ((slope, "-"), (low, ":"), (high, ":")):
            axes[0].plot(rows["elapsed_s"], rows["memory_mb"].median() + value * hours, color=CRITICAL_COLOR,
                         linestyle=style, linewidth=1.5 if style == "-" else 1,
                         label=f"stage {stage}: {slope:+.1f} MB/h [{low:+.1f}, {high:+.1f}]" if style == "-" else None)
    axes[0].set_ylabel("MB")
    _legend(axes[0], fontsize=7, loc="upper left")
    for column, label, color in (("loop_lag_ms", "lag (latest)", "#0072b2"), ("loop_lag_p99_ms", "lag p99 gauge", "#cc79a7")):
        if column in series:
            axes[1].plot(elapsed, series[column], color=color, linewidth=0.8, label=label)
    for limit, label, color in slo_lines(slo, "event_loop_lag_p95_ms"):
        axes[1].axhline(limit, color=color, linestyle="--", linewidth=1, label=label)
    axes[1].set_ylabel("event-loop lag ms")
    _legend(axes[1], fontsize=7, loc="upper left")
    if "cpu_pct" in series:
        axes[2].plot(elapsed, series["cpu_pct"] * 100, color="#d55e00", linewidth=0.8)
    for limit, label, color in slo_lines(slo, "cpu_pct"):
        axes[2].axhline(limit * 100, color=color, linestyle="--", linewidth=1, label=label)
    axes[2].set_ylabel("CPU % of one core")
    _legend(axes[2], fontsize=7, loc="upper left")
    if "cache_hits_increase" in series and "cache_misses_increase" in series:
        lookups = series["cache_hits_increase"] + series["cache_misses_increase"]
        axes[3].plot(elapsed, series["cache_hits_increase"] / lookups.where(lookups > 0) * 100, color="#009e73",
                     marker=".", linewidth=0.8, label="cache hit ratio %")
    if "db_connections_active" in series:
        axes[3].plot(elapsed, series["db_connections_active"], color="#7f7f7f", linewidth=0.8, label="DB connections active")
    axes[3].set_ylabel("% / connections")
    axes[3].set_xlabel("seconds since the run started (grey: ramps, coloured: steady phases)")
    _legend(axes[3], fontsize=7, loc="upper left")
    for axis in axes:
        axis.set_ylim(bottom=0)
        axis.grid(alpha=0.3)
    axes[0].set_ylim(bottom=max(series.filter(["memory_mb", "heap_mb"]).min().min() * 0.9 - 5, 0))
    _suptitle(figure, f"The server over time (scraped from {telemetry.url})")
    return _save(figure, path)


UX_FIGURES = (("fcp", "First contentful paint"), ("lcp", "Largest contentful paint"), ("ttfb", "Time to first byte"))


def user_experience(run: RunData, slo: SloSet | None, path: Path) -> Path | None:
    """FCP, LCP and TTFB of the browser users (and the protocol users' PAGE TTFB) against users, p50 and p95 per
    stage, with the SLO's KPI levels (None when the run had no browser users and no page visits)."""
    steady = run.steady.sort_values(["users", "stage"])
    rows = steady[(steady["kind"] == "browser") | steady["endpoint"].str.startswith("PAGE ttfb")]
    if rows.empty:
        return None
    figure, axes = _grid(len(UX_FIGURES))
    levels = endpoint_slo_lines(slo, "p95_ms", list(rows["endpoint"].unique()))
    for axis, (figure_name, title) in zip(axes, UX_FIGURES, strict=False):
        for endpoint, series in rows[rows["name"].str.startswith(f"{figure_name} ")].groupby("endpoint"):
            for column, style in (("p50_ms", ":"), ("p95_ms", "-")):
                axis.plot(series["users"], series[column], style, marker="o", label=f"{endpoint} {column[:-3]}")
            for limit, label, color in levels[endpoint]:
                axis.axhline(limit, color=color, linestyle="--", linewidth=1, label=label)
        _latency_axis(axis, title, steady["users"].max())
    _suptitle(figure, "User experience against users (steady phases)")
    return _save(figure, path)


def projection_plot(projection: Projection, path: Path) -> Path:
    """The USL fit: measured throughput with its intervals, the fitted curve and band, N*, the projected users;
    response time: measured mean and p95, Little's-law R(N) with its band, the p95 estimates; and, where memory
    was projected, resident memory against users up to the container limit."""
    ladder, fit = projection.ladder, projection.fit
    stages = ladder.stages.merge(stage_intervals(ladder), on="stage", how="left")
    used, left_out = stages[stages["usable"]], stages[~stages["usable"] & stages["throughput"].notna()]
    top = max([*stages["users"], *(p.users for p in projection.projected)]) * 1.05
    band = curve(fit, ladder.think_s, np.linspace(1, top, 300))
    memory = projection.memory
    figure, axes = _figure(1, 3 if memory else 2, (19.5 if memory else 13, 4.8), Layout(wgap=0.9))
    left, right = axes[0], axes[1]
    left.fill_between(band["users"], band["throughput_low"], band["throughput_high"], color="#0072b2", alpha=0.2,
                      label="95 % band (bootstrap)")
    left.plot(band["users"], band["throughput"], color="#0072b2", label="USL fit")
    left.errorbar(used["users"], used["throughput"], yerr=[used["throughput"] - used["low"], used["high"] - used["throughput"]],
                  fmt="o", color="black", capsize=3, label="measured (steady, 95 % interval)")
    if len(left_out):
        left.plot(left_out["users"], left_out["throughput"], "o", mfc="none", color=BASELINE_COLOR, label="left out of the fit")
    response = band.filter(like="response").clip(lower=0.1)  # a log axis: R(N) is 0 where users barely wait
    right.fill_between(band["users"], response["response_low_ms"], response["response_high_ms"], color="#0072b2", alpha=0.2)
    right.plot(band["users"], response["response_ms"], color="#0072b2", label="R(N) = N / X(N) - Z")
    right.plot(used["users"], used["mean_ms"], "o", color="black", label="measured mean")
    right.plot(used["users"], used["p95_ms"], "^", color="#cc79a7", label="measured p95")
    peak = projection.peak_users
    if np.isfinite(peak.value) and peak.value <= top:
        for axis in (left, right):
            axis.axvspan(peak.low, min(peak.high, top), color=WARN_COLOR, alpha=0.15, linewidth=0)
            axis.axvline(peak.value, color=WARN_COLOR, linestyle="--", label=f"peak N* {peak.value:,.0f}")
    for projected in projection.projected:
        x, r, p95 = projected.throughput, projected.response_ms, projected.p95_estimate_ms
        label = f"{projected.users:,} users (x{projected.extrapolation:.1f})"
        left.errorbar([projected.users], [x.value], yerr=[[x.value - x.low], [x.high - x.value]], fmt="D",
                      color=CRITICAL_COLOR, capsize=4, label=f"projected at {label}")
        right.errorbar([projected.users], [r.value], yerr=[[r.value - r.low], [r.high - r.value]], fmt="s",
                       color="#0072b2", capsize=4, label=f"R at {label}")
        right.errorbar([projected.users], [p95.value], yerr=[[p95.value - p95.low], [p95.high - p95.value]], fmt="D",
                       color=CRITICAL_COLOR, capsize=4, label=f"p95 estimate at {label}")
    left.set(xlabel="users", ylabel="HTTP requests / s", title="Throughput against users (USL)", xlim=(0, top))
    right.set(xlabel="users", ylabel="ms (log)", title="Response time against users", xlim=(0, top), yscale="log")
    right.yaxis.set_major_formatter(_power_of_ten)
    left.set_ylim(bottom=0)
    if memory:
        _memory_panel(axes[2], memory, projection, top)
    for axis in axes:
        axis.grid(alpha=0.3)
        _legend(axis, fontsize=7)
    return _save(figure, path)


def _memory_panel(axis: plt.Axes, memory: MemoryProjection, projection: Projection, top: float) -> None:
    """Steady resident memory per stage, the fitted MB per user with its band, the container limit and the users
    at which memory reaches it, and the memory projected at each requested user count."""
    reach = memory.limit_users
    right_edge = max(top, reach.value * 1.05) if reach is not None and np.isfinite(reach.value) else top
    grid = np.linspace(0, right_edge, 200)
    low, high = np.quantile(memory.drawn_at(grid), [0.025, 0.975], axis=0)
    axis.fill_between(grid, low, high, color="#009e73", alpha=0.2, label="95 % band (bootstrap over stages)")
    axis.plot(grid, memory.at(grid), color="#009e73", label=f"{memory.mb_per_user.value:,.3f} MB per user")
    axis.plot(memory.stages["users"], memory.stages["memory_mb"], "o", color="black", label="measured (steady mean)")
    if memory.limit_mb:
        axis.axhline(memory.limit_mb, color=CRITICAL_COLOR, linestyle="--", label=f"container limit {memory.limit_mb:,.0f} MB")
    if reach is not None and np.isfinite(reach.value):
        axis.axvspan(reach.low, min(reach.high, right_edge), color=WARN_COLOR, alpha=0.15, linewidth=0)
        axis.axvline(reach.value, color=WARN_COLOR, linestyle=":", label=f"limit reached at {reach.value:,.0f} users")
    for projected in projection.projected:
        if projected.memory_mb is not None:
            value = projected.memory_mb
            axis.errorbar([projected.users], [value.value], yerr=[[value.value - value.low], [value.high - value.value]],
                          fmt="D", color=CRITICAL_COLOR, capsize=4, label=f"projected at {projected.users:,} users")
    axis.set(xlabel="users", ylabel="resident memory, MB", title="Resident memory against users", xlim=(0, right_edge))


def make_plots(run: RunData, slo: SloSet | None, folder: Path) -> dict[str, Path]:
    """Draw every plot into folder (plots/); a plot without data is left out."""
    folder.mkdir(parents=True, exist_ok=True)
    drawn = {
        "latency_vs_users": latency_vs_users(run, slo, folder / "latency_vs_users.png"),
        "throughput_vs_users": throughput_vs_users(run, slo, folder / "throughput_vs_users.png"),
        "error_rate_by_stage": error_rate_by_stage(run, slo, folder / "error_rate_by_stage.png"),
        "timeline": timeline(run, folder / "timeline.png"),
        "latency_spectrum": latency_spectrum(run, folder / "latency_spectrum.png"),
        "socketio": socketio(run, slo, folder / "socketio.png"),
        "server": server(run, slo, folder / "server.png"),
        "user_experience": user_experience(run, slo, folder / "user_experience.png"),
    }
    return {name: path for name, path in drawn.items() if path is not None}



def _by_endpoint(steady: pd.DataFrame, endpoints: Sequence[str]) -> dict[str, pd.DataFrame]:
    """Each endpoint's rows in users order, split once (the whole frame filtered again per endpoint and run was an
    eighth of the comparison's time); an endpoint the run lacks gets none, drawn as empty lines as before."""
    groups = dict(list(steady.sort_values(["users", "stage"]).groupby("endpoint")))
    return {endpoint: groups.get(endpoint, steady.iloc[:0]) for endpoint in endpoints}


def compare_plots(base: RunData, candidate: RunData, folder: Path) -> dict[str, Path]:
    """Overlays of two runs: p95 / p99 against users per endpoint, throughput and errors per stage, p95 over time."""
    folder.mkdir(parents=True, exist_ok=True)
    runs = (("base", base, "--", 0.7), ("candidate", candidate, "-", 1.0))
    drawn: dict[str, Path] = {}
    endpoints = sorted(set(base.steady["endpoint"]) | set(candidate.steady["endpoint"]))
    if endpoints:
        figure, axes = _grid(len(endpoints))
        split = [(label, _by_endpoint(run.steady, endpoints), style, alpha) for label, run, style, alpha in runs]
        for axis, endpoint in zip(axes, endpoints, strict=True):
            for label, rows_of, style, alpha in split:
                rows = rows_of[endpoint]
                for column, (name, color) in PERCENTILE_STYLE.items():
                    if column != "p50_ms":
                        axis.plot(rows["users"], rows[column], linestyle=style, marker="o", color=color, alpha=alpha,
                                  label=f"{name} {label}")
            axis.set_title(endpoint, fontsize=9)
            axis.set_xlabel("users")
            axis.set_ylabel("ms")
            axis.set_ylim(bottom=0)
            axis.grid(alpha=0.3)
            _legend(axis, fontsize=6, loc="upper left")
        _suptitle(figure, f"p95 / p99 against users: {candidate.name} (solid) over {base.name} (dashed)")
        drawn["compare_latency"] = _save(figure, folder / "compare_latency.png")
    figure, axes = _figure(1, 2, (12, 4), Layout(wgap=0.9))
    for offset, (label, run, style, alpha) in zip((-0.2, 0.2), runs, strict=True):
        steady = run.steady
        per_stage = steady.groupby("stage").agg(users=("users", "first"), requests=("requests", "sum"),
                                                failures=("failures", "sum"), duration=("duration_s", "max"))
        axes[0].plot(per_stage["users"], per_stage["requests"] / per_stage["duration"], linestyle=style, marker="o",
                     alpha=alpha, label=f"{label}: {run.name}")
        axes[1].bar(per_stage.index + offset, per_stage["failures"] / per_stage["requests"] * 100, width=0.4, alpha=alpha,
                    label=f"{label}: {run.name}")
    axes[0].set(xlabel="users", ylabel="requests / s (all endpoints)", title="Throughput against users")
    axes[1].set(xlabel="stage", ylabel="failed requests %, all endpoints", title="Error rate per stage (steady)")
    axes[1].set_xticks(sorted(set(base.steady["stage"]) | set(candidate.steady["stage"])))
    for axis in axes:
        axis.set_ylim(bottom=0)
        axis.grid(alpha=0.3)
        _legend(axis, fontsize=7)
    drawn["compare_throughput_errors"] = _save(figure, folder / "compare_throughput_errors.png")
    figure, axis = _figure(1, 1, (11, 3.5))
    for label, run, style, alpha in runs:
        series = run.overview.sort_values("elapsed_s")
        axis.plot(series["elapsed_s"], series["p95_ms"].rolling(10, min_periods=1).median(), linestyle=style, alpha=alpha,
                  label=f"{label}: {run.name}")
    axis.set(xlabel="seconds since the run started", ylabel="p95 ms, 10-s rolling median", title="p95 over time (all endpoints)")
    axis.set_ylim(bottom=0)
    axis.grid(alpha=0.3)
    _legend(axis, fontsize=7)
    drawn["compare_timeline"] = _save(figure, folder / "compare_timeline.png")
    return drawn
