"""Benchmark: memory of long runs, in the generator and in `analyze` (issue #14, item 8).

1. Generator: the recorder driven by a simulated clock through a long steady phase (22 endpoints, several
   samples each a second, failures with ever-new messages, results flushed every 10 s as the runner does).
   Prints the resident memory (after a garbage collection) at each simulated hour and its slope in MB/hour after
   the first hour (tracemalloc would be exact but slows the simulation about tenfold).
2. A short real run against the reference target on loopback: resident memory of this process sampled every
   5 s of the steady phase (noisy on a shared machine: a minute says little about a slope; read it as a check).
3. Analysis: a synthetic week-long results folder (about 13 million series rows; summary and histograms from the
   recorder, series written directly). `analyze` runs in a child process: wall time and peak RSS, beside a child
   that only reads timeseries.csv whole with pandas (what loading the series at once would cost).

    .venv/bin/python benchmarks/bench_long_runs.py [--hours 6] [--days 7] [--folder DIR] [--skip-real]

Prints figures, asserts nothing.
"""

from __future__ import annotations

import locust  # noqa: F401  # isort: skip  (first: gevent monkey-patching)

import argparse
import gc
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from medianest_load.failures import HttpServerError
from medianest_load.recorder import Recorder
from medianest_load.results_format import TIMESERIES_COLUMNS

ENDPOINTS = [f"/api/v1/route{index:02d}" for index in range(21)]  # + ALL = 22 series rows a second
START = 1_760_000_000.0


class Clock:
    def __init__(self, start: float) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now


def rss_mb() -> float:
    return int(Path("/proc/self/statm").read_text().split()[1]) * resource.getpagesize() / 1e6


def generator_slope(hours: float, samples_per_endpoint: int) -> None:
    """Traced memory of a recorder through `hours` of simulated steady state."""
    rng = np.random.default_rng(3)
    clock = Clock(START)
    recorder = Recorder(clock=clock)
    recorder.enter(1, "soak", 500, "steady")
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        marks: list[tuple[float, float]] = []
        started = time.perf_counter()
        for second in range(int(hours * 3600)):
            times = rng.lognormal(3.0, 0.5, (len(ENDPOINTS), samples_per_endpoint)).tolist()
            for endpoint, values in zip(ENDPOINTS, times, strict=True):
                for value in values:
                    recorder.on_request("GET", endpoint, value, 200)
            recorder.on_request("GET", ENDPOINTS[0], 5.0, 0, HttpServerError(f"HTTP 500 request id {second}"))
            clock.now += 1.0
            recorder.close_second(500)
            if second % 10 == 9:
                recorder.write(folder)
            if second % 3600 == 3599:
                gc.collect()
                marks.append(((second + 1) / 3600, rss_mb()))
        series_mb = (folder / "timeseries.csv").stat().st_size / 1e6
    elapsed = time.perf_counter() - started
    print(f"generator: {hours:g} simulated hours, {len(ENDPOINTS) + 1} series rows a second, "
          f"{samples_per_endpoint * len(ENDPOINTS) + 1} samples a second ({elapsed:.0f} s to simulate)")
    print("  RSS MB at each hour: " + ", ".join(f"{hour:g} h {mb:.2f}" for hour, mb in marks))
    if len(marks) >= 3:
        later = np.array(marks[1:])
        slope = np.polyfit(later[:, 0], later[:, 1], 1)[0]
        print(f"  slope after the first hour: {slope:+.3f} MB/hour (goal < 1 MB/hour; the histograms' fixed size is "
              f"in the level, not the slope); timeseries.csv {series_mb:.0f} MB on disk")


def real_run_rss(seconds: int) -> None:
    """RSS of this process during a short real steady phase against the reference target."""
    import gevent
    import yaml

    from medianest_load.inputs import load_named
    from medianest_load.run import RunRequest, ScenarioRun
    from medianest_load.scenario import SCENARIO
    from reference_target.launcher import start_target

    samples: list[tuple[float, float]] = []

    def sample() -> None:
        began = time.monotonic()
        while True:
            gevent.sleep(5)
            samples.append((time.monotonic() - began, rss_mb()))

    target = start_target(["--profile", "baseline"])
    with tempfile.TemporaryDirectory() as scratch:
        scenario = Path(scratch) / "steady.yaml"
        scenario.write_text(yaml.safe_dump({
            "name": "bench-steady", "host": target.url, "mix": {"health": 2, "dashboard": 2, "media": 1},
            "think_time": {"min": 0.2, "max": 0.5},
            "stages": [{"name": "steady", "users": 30, "ramp": "2s", "hold": seconds}]}))
        sampler = gevent.spawn(sample)
        try:
            outcome = ScenarioRun(RunRequest(scenario=load_named(SCENARIO, str(scenario)), host=target.url,
                                             out_root=Path(scratch),
                                             show_progress=False)).execute()
            requests = pd.read_csv(outcome.folder / "summary.csv")["requests"].sum()
        finally:
            sampler.kill()
            target.stop()
    steady = np.array(samples[1:]) if len(samples) > 2 else np.array(samples)
    slope = np.polyfit(steady[:, 0], steady[:, 1], 1)[0] * 3600 if len(steady) >= 2 else float("nan")
    print(f"real run: {seconds} s at 30 users, {requests:,} requests, status {outcome.status}")
    print("  RSS MB every 5 s: " + ", ".join(f"{mb:.1f}" for _, mb in samples))
    print(f"  fitted slope {slope:+.1f} MB/hour over {steady[-1, 0] - steady[0, 0]:.0f} s (noisy: allocator warm-up, "
          "shared machine)")


def build_week(folder: Path, days: float) -> None:
    """A results folder for one stage of `days`: summary and histograms by the recorder (a few simulated minutes of
    samples, the clock then moved to the end of the week), the series written directly, 22 rows a second."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(11)
    clock = Clock(START)
    recorder = Recorder(clock=clock)
    ramp_s, total_s = 60, int(days * 86_400)
    recorder.enter(1, "soak", 500, "ramp")
    for second in range(600):
        if second == ramp_s:
            recorder.enter(1, "soak", 500, "steady")
        for endpoint in ENDPOINTS:
            for value in rng.lognormal(3.0, 0.5, 4).tolist():
                recorder.on_request("GET", endpoint, value, 200)
        clock.now += 1.0
    clock.now = START + total_s
    recorder.finish()
    recorder.write(folder)  # the recorder's own series rows are replaced below
    path = folder / "timeseries.csv"
    with path.open("w") as handle:
        handle.write(",".join(TIMESERIES_COLUMNS) + "\n")
        names = np.array([*(f"GET {endpoint}" for endpoint in ENDPOINTS), "ALL"])
        for begin in range(0, total_s, 6 * 3600):
            seconds = np.arange(begin, min(begin + 6 * 3600, total_s))
            count = len(seconds) * len(names)
            requests = rng.poisson(20, count)
            requests[len(ENDPOINTS)::len(names)] = requests.reshape(-1, len(names))[:, :-1].sum(axis=1)
            second = np.repeat(seconds, len(names))
            p95 = np.round(rng.lognormal(3.5, 0.3, count), 3)
            frame = pd.DataFrame({
                "time": (START + second).astype(np.int64), "elapsed_s": second + 1.0, "interval_s": 1.0,
                "stage": 1, "phase": np.where(second < ramp_s, "ramp", "steady"), "users": 500,
                "endpoint": np.tile(names, len(seconds)), "requests": requests,
                "failures": rng.binomial(requests, 0.002), "avg_ms": np.round(p95 * 0.6, 3), "p95_ms": p95,
                "max_ms": np.round(p95 * 1.8, 3)})
            frame.to_csv(handle, header=False, index=False)
    stages = [{"index": 1, "name": "soak", "users": 500, "spawn_rate": 500 / ramp_s, "ramp_start": START,
               "steady_start": START + ramp_s, "steady_end": START + total_s, "planned_hold_s": total_s - ramp_s}]
    (folder / "run.json").write_text(json.dumps({
        "scenario_name": "bench-week", "host": "http://127.0.0.1:8080", "slo": "staging-gate", "time_scale": 1.0,
        "status": "completed", "stop_reason": "completed", "stages": stages}))


WEEK_SLO = """name: week
criteria:
  - {name: API p95, metric: p95_ms, endpoint: api, critical: "> 500 ms"}
  - {name: API error rate, metric: error_rate, endpoint: api, critical: "> 1 %"}
  - {name: traffic every second, metric: rps, endpoint: all, critical: "< 1", for: 30s}
  - {name: route00 p95 sustained, metric: p95_ms, endpoint: "GET /api/v1/route00", warn: "> 60 ms", critical: "> 90 ms", for: 5s}
  - {name: errors sustained, metric: error_rate, endpoint: api, critical: "> 1 %", for: 60s}
"""


def child(code: str) -> tuple[float, float, str]:
    """Wall seconds, peak RSS (MB) and the last output line of a fresh Python process running `code`."""
    code += "\nimport resource; print('PEAK', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)"
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines or not lines[-1].startswith("PEAK "):
        return elapsed, float("nan"), f"FAILED {done.returncode}: {(done.stderr.strip().splitlines() or ['?'])[-1]}"
    return elapsed, int(lines[-1].split()[1]) / 1024, lines[-2] if len(lines) > 1 else ""


def analysis_week(folder: Path, days: float, rebuild: bool) -> None:
    if rebuild or not (folder / "run.json").exists():
        started = time.perf_counter()
        build_week(folder, days)
        print(f"built {folder} in {time.perf_counter() - started:.0f} s (not timed)")
    series = folder / "timeseries.csv"
    slo = folder / "week-slo.yaml"
    slo.write_text(WEEK_SLO)
    print(f"analysis: timeseries.csv {series.stat().st_size / 1e6:.0f} MB")
    elapsed, peak, last = child(
        "import time; from analysis.commands import analyze_run; t = time.perf_counter(); "
        f"v = analyze_run({str(folder)!r}, {str(slo)!r}, echo=lambda *_: None); "
        "print(v.status, [(r.criterion.name, r.status, r.measured_text) for r in v.results])")
    print(f"  analyze (load, judge with for-windows, plots, reports): {elapsed:.1f} s, peak RSS {peak:.0f} MB; {last}")
    elapsed, peak, last = child(f"import pandas as pd; f = pd.read_csv({str(series)!r}); print(len(f), 'rows')")
    print(f"  reference, pandas.read_csv of the whole series only: {elapsed:.1f} s, peak RSS {peak:.0f} MB; {last}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hours", type=float, default=4.0, help="simulated steady hours for the generator part")
    parser.add_argument("--samples", type=int, default=3, help="samples per endpoint per simulated second")
    parser.add_argument("--real-seconds", type=int, default=60)
    parser.add_argument("--skip-real", action="store_true")
    parser.add_argument("--only-analysis", action="store_true")
    parser.add_argument("--days", type=float, default=7.0)
    parser.add_argument("--folder", type=Path, default=Path("/tmp/medianest-bench-week"))
    parser.add_argument("--rebuild", action="store_true")
    args = parser.parse_args()
    if not args.only_analysis:
        generator_slope(args.hours, args.samples)
    if not (args.skip_real or args.only_analysis):
        real_run_rss(args.real_seconds)
    analysis_week(args.folder, args.days, args.rebuild)


if __name__ == "__main__":
    main()
