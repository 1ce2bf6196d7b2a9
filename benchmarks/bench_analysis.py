"""Benchmark: analyse a one-hour, 1,000-user results folder (written by the recorder's own writer).

The folder is built once from synthetic samples fed through `Recorder.on_request` with a simulated clock
(that part is slow and not timed); then `analyze_run` (load, judge, plots, report files) is timed.

    .venv/bin/python benchmarks/bench_analysis.py [--folder DIR] [--rebuild]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from medianest_load.failures import HttpServerError, RequestTimeout
from medianest_load.recorder import Recorder

# endpoint -> (request_type, name, median ms, spread, bytes, share of requests)
TRAFFIC = [
    ("GET", "/api/v1/health", 8, 0.5, 150, 0.10),
    ("GET", "/api/v1/auth/session", 15, 0.5, 400, 0.12),
    ("POST", "/api/v1/auth/plex/pin", 20, 0.4, 300, 0.02),
    ("POST", "/api/v1/auth/plex/verify", 25, 0.4, 600, 0.02),
    ("GET", "/api/v1/dashboard/stats", 80, 0.6, 4000, 0.20),
    ("GET", "/api/v1/dashboard/notifications", 30, 0.5, 900, 0.05),
    ("GET", "/api/v1/media/search", 45, 0.5, 8000, 0.10),
    ("GET", "/api/v1/media/requests", 35, 0.5, 6000, 0.08),
    ("GET", "/api/v1/media/requests/:id", 20, 0.5, 700, 0.05),
    ("POST", "/api/v1/media/request", 40, 0.5, 500, 0.04),
    ("POST", "/api/v1/media/upload", 110, 0.7, 200, 0.03),
    ("GET", "/_next/static/:asset", 12, 0.6, 250_000, 0.08),
    ("PAGE", "/ (first visit)", 600, 0.4, 9_000_000, 0.01),
    ("SIO", "connect /media", 30, 0.4, 0, 0.005),
    ("SIO", "ack /media ping", 4, 0.5, 20, 0.05),
    ("SIO", "push /media media-status", 6, 0.6, 120, 0.045),
]
STAGES = [("users-100", 100), ("users-250", 250), ("users-500", 500), ("users-750", 750), ("users-1000", 1000)]
RAMP_S, HOLD_S = 60, 660  # 5 x 12 minutes = one hour
REQUESTS_PER_USER_S = 0.85  # the audit measured 847 req/s at 1,000 users


class Clock:
    def __init__(self, start: float) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now


def build_folder(folder: Path, seed: int = 7) -> None:
    """Feed one hour of synthetic traffic through the recorder and write the results folder."""
    rng = np.random.default_rng(seed)
    clock = Clock(1_760_000_000.0)
    recorder = Recorder(clock=clock)
    shares = np.array([row[5] for row in TRAFFIC])
    shares /= shares.sum()
    stages_info, users = [], 0
    for index, (name, target) in enumerate(STAGES, start=1):
        stage = {"index": index, "name": name, "users": target, "spawn_rate": (target - users) / RAMP_S,
                 "planned_hold_s": HOLD_S}
        for phase, seconds in (("ramp", RAMP_S), ("steady", HOLD_S)):
            recorder.enter(index, name, target, phase)
            stage[f"{phase}_start"] = clock.now
            for second in range(seconds):
                active = users + (target - users) * (second + 1) / seconds if phase == "ramp" else target
                load = 1 + 0.6 * (active / 1000) ** 2  # latency grows with concurrency
                counts = rng.poisson(active * REQUESTS_PER_USER_S * shares)
                for (request_type, route, median, spread, size, _), count in zip(TRAFFIC, counts, strict=True):
                    times = rng.lognormal(np.log(median * load), spread, count)
                    failed = rng.random(count) < 0.003 * load
                    for value, failure in zip(times.tolist(), failed.tolist(), strict=True):
                        error = None
                        if failure:
                            error = RequestTimeout("timed out") if value > 2000 else HttpServerError("HTTP 503")
                        recorder.on_request(request_type, route, value, size, error)
                clock.now += 1.0
                recorder.close_second(int(active))
        stage["steady_end"] = clock.now
        users = target
        stages_info.append(stage)
    recorder.finish()
    recorder.write(folder)
    run_info = {"scenario": {"name": "bench-1000"}, "scenario_name": "bench-1000", "scenario_file": None,
                "host": "http://127.0.0.1:8080", "target_profile": "reference", "slo": "staging-gate",
                "time_scale": 1.0, "harness_version": "bench", "locust_version": None, "git_commit": None,
                "status": "completed", "stop_reason": "completed", "started_at": None, "ended_at": None,
                "stages": [{key: stage.get(key) for key in ("index", "name", "users", "spawn_rate", "ramp_start",
                                                             "steady_start", "steady_end", "planned_hold_s")}
                           for stage in stages_info]}
    (folder / "run.json").write_text(json.dumps(run_info, indent=2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folder", type=Path, default=Path("/tmp/medianest-bench-1h-1000u"))
    parser.add_argument("--rebuild", action="store_true")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    if args.rebuild or not (args.folder / "histograms.json").exists():
        started = time.perf_counter()
        build_folder(args.folder)
        print(f"built {args.folder} in {time.perf_counter() - started:.0f} s (not timed)")
    sizes = {path.name: path.stat().st_size for path in args.folder.iterdir() if path.is_file()}
    print("files: " + ", ".join(f"{name} {size / 1e6:.1f} MB" for name, size in sorted(sizes.items())))

    import tempfile

    from analysis.commands import analyze_run
    from analysis.judging import judge_run
    from analysis.load import load_run
    from analysis.plots import make_plots
    from analysis.slo import SLO
    from medianest_load.inputs import load_named

    steps = {}
    started = time.perf_counter()
    run = load_run(args.folder)
    steps["load"] = time.perf_counter() - started
    print(f"summary rows {len(run.summary)}, ALL series rows {len(run.overview)}, histograms {len(run.histograms.keys())}, "
          f"requests {run.summary['requests'].sum():,}")
    slo = load_named(SLO, "staging-gate")
    started = time.perf_counter()
    judge_run(run, slo)
    steps["judge"] = time.perf_counter() - started
    with tempfile.TemporaryDirectory() as scratch:
        started = time.perf_counter()
        make_plots(run, slo, Path(scratch))
        steps["plots"] = time.perf_counter() - started
    print("steps (one pass): " + ", ".join(f"{name} {seconds:.2f} s" for name, seconds in steps.items()))
    timings = []
    for _ in range(args.repeat):
        started = time.perf_counter()
        verdict = analyze_run(args.folder, "staging-gate", echo=lambda *_: None)
        timings.append(time.perf_counter() - started)
    print(f"verdict {verdict.status}; analyze (load + judge + plots + report.html/md + junit + verdict.json): "
          f"best {min(timings):.2f} s, median {float(np.median(timings)):.2f} s over {args.repeat} runs (target < 15 s)")


if __name__ == "__main__":
    main()
