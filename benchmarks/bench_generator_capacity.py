"""How much load one generator process carries, and whether workers add to it: figures for the README's
"how many workers for N users" table.

    .venv/bin/python benchmarks/bench_generator_capacity.py [--hold 8] [--steps 100,200,400,600,800]

1. CPU microseconds per sample for each user class and the default mix (one process, against the reference
   target, which serves every route and Socket.IO).
2. A ladder of steps against a fixed-latency server of its own (every route answers after FIXED_MS, and the
   server times itself): per step, the harness's p95 against the server's own p95, and whether the step was
   flagged generator-limited; once in one process, once over 2 local workers. Users per process before the
   first flagged step, and the capacity ratio of 2 workers to 1.

Prints figures, asserts nothing: the machine is shared, so figures move between runs.
"""

from __future__ import annotations

import locust  # noqa: F401  (first: gevent monkey-patching)

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import gevent
import httpx
import pandas as pd
import yaml
from hdrh.histogram import HdrHistogram

from medianest_load.distributed import free_port
from medianest_load.paths import SCENARIOS_DIR
from medianest_load.run import RunRequest, ScenarioRun
from medianest_load.inputs import load_named
from medianest_load.scenario import SCENARIO
from reference_target.launcher import start_target

FIXED_MS = 20.0
CLASSES = ("health", "auth", "dashboard", "media", "upload", "frontend", "sockets")
BODY = json.dumps({"status": "ok", "success": True, "data": {"id": "1", "token": "bench", "csrfToken": "bench"}}).encode()


# --- the fixed-latency server (a process of its own: `--serve PORT`) -----------------------------------------

def serve(port: int) -> None:
    """Every request: sleep FIXED_MS, answer BODY; each second's service times go into an HdrHistogram (us)."""
    from gevent.pywsgi import WSGIServer

    seconds: dict[int, HdrHistogram] = {}

    def app(environ, start_response):
        if environ["PATH_INFO"] == "/__bench/seconds":
            start_response("200 OK", [("Content-Type", "application/json")])
            return [json.dumps({str(s): h.encode().decode() for s, h in seconds.items()}).encode()]
        started = time.perf_counter()
        environ["wsgi.input"].read()
        gevent.sleep(FIXED_MS / 1000)
        start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(BODY)))])
        took_us = int((time.perf_counter() - started) * 1e6)
        seconds.setdefault(int(time.time()), HdrHistogram(1, 60_000_000, 3)).record_value(max(took_us, 1))
        return [BODY]

    WSGIServer(("127.0.0.1", port), app, log=None, backlog=4096).serve_forever()


# --- helpers -------------------------------------------------------------------------------------------------

def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def scenario(folder: Path, name: str, stages: list[dict], mix: dict[str, int], think: tuple[str, str]) -> Path:
    data = yaml.safe_load((SCENARIOS_DIR / "smoke.yaml").read_text())
    data.update({"name": name, "stages": stages, "mix": mix, "think_time": {"min": think[0], "max": think[1]},
                 "slo": "staging-gate"})
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def run(path: Path, host: str, out: Path, workers: int = 0) -> tuple[Path, dict]:
    request = RunRequest(load_named(SCENARIO, str(path)), host=host, out_root=out, show_progress=False, gate_stages=False,
                         workers=workers)
    outcome = ScenarioRun(request).execute()
    return outcome.folder, json.loads((outcome.folder / "run.json").read_text())


def steady_samples(folder: Path, stage: int) -> int:
    summary = pd.read_csv(folder / "summary.csv")
    return int(summary[(summary.stage == stage) & (summary.phase == "steady")].requests.sum())


def client_p95_ms(folder: Path, stage: int) -> float | None:
    merged = HdrHistogram(1, 3_600_000_000, 3)
    for entry in json.loads((folder / "histograms.json").read_text())["histograms"]:
        if entry["stage"] == stage and entry["phase"] == "steady":
            merged.add(HdrHistogram.decode(entry["encoded"]))
    return merged.get_value_at_percentile(95) / 1000 if merged.get_total_count() else None


def server_p95_ms(seconds: dict[str, str], start: float, end: float) -> float | None:
    merged = HdrHistogram(1, 60_000_000, 3)
    for second, encoded in seconds.items():
        if start <= int(second) < end:
            merged.add(HdrHistogram.decode(encoded))
    return merged.get_value_at_percentile(95) / 1000 if merged.get_total_count() else None


# --- the two measurements ----------------------------------------------------------------------------------

def cpu_per_sample(folder: Path, hold_s: int) -> None:
    target = start_target(["--profile", "baseline", "--latency-scale", "0.2"])
    print(f"1. generator CPU per sample, one process, 20 users with 0-50 ms think time (so that per-sample work, not "
          f"the per-second housekeeping, dominates), against the reference target ({hold_s} s steady)")
    try:
        for label, mix in [*((kind, {kind: 1}) for kind in CLASSES), ("default mix", dict.fromkeys(CLASSES, 1) | {"auth": 2, "dashboard": 4})]:
            path = scenario(folder, f"cpu-{label.replace(' ', '-')}", [{"name": "steady", "users": 20, "ramp": "1s",
                                                                         "hold": f"{hold_s}s"}], mix, ("0s", "0.05s"))
            before = cpu_seconds()
            run_folder, _ = run(path, target.url, folder / "out")
            spent = cpu_seconds() - before
            samples = int(pd.read_csv(run_folder / "summary.csv").requests.sum())
            print(f"   {label:12} {samples:6d} samples  {1e6 * spent / max(samples, 1):8.0f} us CPU per sample "
                  f"(whole run, ramp and setup included)")
    finally:
        target.stop()


def ladder(folder: Path, steps: list[int], hold_s: int) -> None:
    port = free_port()
    server = subprocess.Popen([sys.executable, __file__, "--serve", str(port)])
    host = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                httpx.get(f"{host}/__bench/seconds", timeout=1)
                break
            except httpx.HTTPError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        stages = [{"name": f"u{users}", "users": users, "ramp": "3s", "hold": f"{hold_s}s"} for users in steps]
        path = scenario(folder, "ladder", stages, {"health": 1, "dashboard": 1, "media": 1}, ("0.1s", "0.3s"))
        print(f"\n2. ladder against a {FIXED_MS:.0f} ms fixed-latency server (health, dashboard, media; think 0.1-0.3 s)")
        held = {}
        for workers in (0, 2):
            run_folder, info = run(path, host, folder / "out", workers)
            seconds = httpx.get(f"{host}/__bench/seconds", timeout=30).json()
            label = "1 process" if workers == 0 else f"{workers} workers"
            print(f"   {label}:")
            first_flagged = None
            for stage in info["stages"]:
                index = stage["index"]
                client = client_p95_ms(run_folder, index)
                own = server_p95_ms(seconds, stage["steady_start"] or 0, stage["steady_end"] or 0)
                rate = steady_samples(run_folder, index) / max((stage["steady_end"] or 0) - (stage["steady_start"] or 0), 1e-9)
                ratio = f"{client / own:5.2f}x" if client and own else "  -  "
                flag = f"FLAGGED ({stage['generator_reason']})" if stage["generator_limited"] else "ok"
                print(f"     {stage['users']:5d} users  {rate:7.0f} req/s  p95 harness {client or 0:8.1f} ms  "
                      f"server {own or 0:6.1f} ms  {ratio}  {flag}")
                if stage["generator_limited"] and first_flagged is None:
                    first_flagged = stage["users"]
            unflagged = [s["users"] for s in info["stages"] if first_flagged is None or s["users"] < first_flagged]
            held[workers] = max(unflagged, default=0)
            print(f"     held before the first flagged step: {held[workers]} users"
                  + ("" if first_flagged else " (never flagged: the ladder ended first)"))
        if held[0]:
            print(f"\n   capacity ratio, 2 workers / 1 process: {held[2] / held[0]:.2f}")
    finally:
        server.kill()
        server.wait()


def main() -> None:
    if sys.argv[1:2] == ["--serve"]:
        serve(int(sys.argv[2]))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hold", type=int, default=8, help="steady seconds per step")
    parser.add_argument("--steps", default="100,200,400,600,800", help="users per ladder step")
    parser.add_argument("--only", choices=["cpu", "ladder"], help="run one of the two measurements")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as temporary:
        folder = Path(temporary)
        if args.only != "ladder":
            cpu_per_sample(folder, args.hold)
        if args.only != "cpu":
            ladder(folder, [int(users) for users in args.steps.split(",")], args.hold)


if __name__ == "__main__":
    main()
