"""Benchmark: a real capacity ladder against the reference target's knee profile, projected at 3x and 5x.

Starts the reference target (`--profile knee`) on a free loopback port, runs `capacity-ladder-knee` (13 steps,
4 -> 72 users, past the knee at about 30 users) time-scaled, then `medianest-load project --users 3x,5x
--holdout 2`, and prints the fit (sigma, kappa, lambda, N*, X_max with 95 % intervals, R^2), the holdout
prediction errors and the 3x / 5x table the README quotes. It asserts nothing; the goal it prints is the
issue's: throughput prediction error on the two held-out stages within 15 %.

    .venv/bin/python benchmarks/bench_projection.py [--time-scale 0.5] [--seed 1]

The machine is shared: the load average at the start and the end is printed beside the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from reference_target.launcher import start_target  # noqa: E402

MEDIANEST_LOAD = str(Path(sys.executable).with_name("medianest-load"))
GOAL_PCT = 15.0


def figure(value: dict, style: str = "{:.4g}") -> str:
    shown = ["unbounded" if v is None else style.format(v) for v in (value["value"], value["low"], value["high"])]
    return f"{shown[0]} ({shown[1]} to {shown[2]})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--time-scale", type=float, default=0.5, help="of the ladder's 30-s holds")
    parser.add_argument("--seed", type=int, default=1, help="the reference target's service-time seed")
    parser.add_argument("--out", type=Path, default=None, help="results root (default: a temporary folder)")
    args = parser.parse_args()
    out_root = args.out or Path(tempfile.mkdtemp(prefix="bench-projection-"))
    load_before = os.getloadavg()
    target = start_target(["--profile", "knee", "--seed", str(args.seed)])
    started = time.perf_counter()
    try:
        run = subprocess.run([MEDIANEST_LOAD, "run", "capacity-ladder-knee", "--host", target.url, "--out", str(out_root),
                              "--time-scale", str(args.time_scale), "--no-gate", "--quiet"],
                             cwd=REPO_ROOT, capture_output=True, text=True)
    finally:
        target.stop()
    run_s = time.perf_counter() - started
    folder = max(out_root.iterdir(), key=lambda path: path.stat().st_mtime)
    started = time.perf_counter()
    projected = subprocess.run([MEDIANEST_LOAD, "project", str(folder), "--users", "3x,5x", "--holdout", "2"],
                               cwd=REPO_ROOT, capture_output=True, text=True)
    project_s = time.perf_counter() - started
    if projected.returncode != 0:
        print(run.stdout[-2000:], run.stderr[-2000:], projected.stderr, sep="\n")
        raise SystemExit(projected.returncode)
    document = json.loads((folder / "projection.json").read_text())
    info = json.loads((folder / "run.json").read_text())

    print(f"ladder: {len(document['stages'])} stages {document['stages'][0]['users']} -> "
          f"{document['stages'][-1]['users']} users, time scale {args.time_scale}, run {run_s:.0f} s "
          f"(exit {run.returncode}), projection {project_s:.1f} s; folder {folder}")
    print(f"machine: load average {load_before[0]:.1f} before, {os.getloadavg()[0]:.1f} after (2 cores, shared); "
          f"generator_cpu_saturated {info.get('generator_cpu_saturated')}")
    print(f"fit: R^2 {document['fit']['r_squared']:.3f}, {document['fit']['stages_used']} stages, "
          f"{document['resamples']} resamples of {document['window_s']}-s windows")
    for name, value in document["parameters"].items():
        print(f"  {name:7} {figure(value)}")
    print(f"  N*      {figure(document['peak']['users'], '{:.1f}')} users; "
          f"X_max {figure(document['peak']['throughput'], '{:.1f}')} req/s")
    print(f"  {document['peak']['text']}")
    holdout = document["holdout"]
    for row in holdout["stages"]:
        print(f"holdout: stage {row['stage']} ({row['users']} users): throughput measured {row['throughput']:.1f}, "
              f"predicted {row['predicted_throughput']:.1f} ({row['throughput_error_pct']:+.1f} %); mean response "
              f"{row['mean_ms']:.0f} ms, predicted {row['predicted_ms']:.0f} ms ({row['response_error_pct']:+.1f} %)")
    error = holdout["max_throughput_error_pct"]
    print(f"goal: held-out throughput error {error:.1f} % ({'within' if error <= GOAL_PCT else 'NOT within'} {GOAL_PCT:g} %)")
    print("\n| users | x measured | throughput req/s | response time (Little) | p95 (estimate) | peak | verdict |")
    print("|---|---|---|---|---|---|---|")
    for p in document["projections"]:
        print(f"| {p['users']:,} | {p['extrapolation']:.0f}x | {figure(p['throughput'], '{:.1f}')} | "
              f"{figure(p['response_ms'], '{:,.0f}')} ms | {figure(p['p95_estimate_ms'], '{:,.0f}')} ms | "
              f"{'beyond N*' if p['beyond_peak'] else 'below N*'} | {p['status']}: {'; '.join(p['labels'])} |")


if __name__ == "__main__":
    main()
