"""How much load one generator process carries, and whether workers add to it: figures for the README's
"how many workers for N users" table.

    .venv/bin/python benchmarks/bench_generator_capacity.py [--hold 8] [--steps 100,200,400,600,800]

1. CPU microseconds per sample for each user class and the default mix (one process, against the reference
   target, which serves every route and Socket.IO).
2. A ladder of steps against a fixed-latency server (reference_target/fixed_latency_server.c, compiled
   with the system C compiler: every request is answered FIXED_MS after it was read, and the server logs its
   own time for each answer). It is written in C so that it costs tens of microseconds a request: a Python
   server on the same 2 cores costs about what the generator does and saturates first. Per step: the
   harness's p95 against the server's own p95, the server's and the machine's CPU, and whether the step was
   flagged generator-limited, and what the harness says its own loop lag may have added there (LAG_ALLOWANCE x
   the stage's loop-lag p95); once in one process, once over 2 local workers. Users per process before the first
   flagged step, the capacity ratio of 2 workers to 1, whether each unflagged step's excess over the server's p95
   stayed within that allowance, and the reported / server p95 where the allowance was under 10 % of the p95.

Prints figures, asserts nothing: the machine is shared, so figures move between runs.
"""

from __future__ import annotations

import locust  # noqa: F401  # isort: skip  (first: gevent monkey-patching)

# isort: split
import argparse
import json
import resource
import tempfile
import threading
import time
from pathlib import Path

import pandas as pd
import psutil
import yaml
from hdrh.histogram import HdrHistogram

from analysis.judging import LAG_ALLOWANCE
from medianest_load.inputs import load_named
from medianest_load.paths import SCENARIOS_DIR
from medianest_load.results_format import NOT_REQUESTS
from medianest_load.run import RunRequest, ScenarioRun
from medianest_load.scenario import SCENARIO
from reference_target.fixed_latency import FixedLatencyServer
from reference_target.launcher import start_target

FIXED_MS = 20.0
CLASSES = ("health", "auth", "dashboard", "media", "upload", "frontend", "sockets")


# --- the fixed-latency server (benchmarks/fixed_latency_server.c) and the CPU it and the machine use -----------

class CpuSampler:
    """The server's CPU and the machine's busy share, sampled once a second in a thread of its own."""

    def __init__(self, pid: int) -> None:
        self.rows: list[tuple[float, float, float]] = []  # (epoch s, server CPU s, machine busy %)
        self._server = psutil.Process(pid)
        self._stop = threading.Event()
        psutil.cpu_percent(None)
        threading.Thread(target=self._sample, daemon=True).start()

    def _sample(self) -> None:
        while not self._stop.wait(1.0):
            times = self._server.cpu_times()
            self.rows.append((time.time(), times.user + times.system, psutil.cpu_percent(None)))

    def cpu_in(self, start: float, end: float) -> tuple[float | None, float | None]:
        """(server CPU %, machine busy % of all cores) over [start, end)."""
        inside = [row for row in self.rows if start <= row[0] < end]
        if len(inside) < 2:
            return None, None
        server_pct = 100 * (inside[-1][1] - inside[0][1]) / (inside[-1][0] - inside[0][0])
        return server_pct, sum(row[2] for row in inside[1:]) / (len(inside) - 1)

    def stop(self) -> None:
        self._stop.set()


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
    request = RunRequest(scenario=load_named(SCENARIO, str(path)), host=host, out_root=out, show_progress=False,
                         gate_stages=False, workers=workers)
    outcome = ScenarioRun(request).execute()
    return outcome.folder, json.loads((outcome.folder / "run.json").read_text())


def steady_samples(folder: Path, stage: int) -> int:
    summary = pd.read_csv(folder / "summary.csv")
    return int(summary[(summary.stage == stage) & (summary.phase == "steady")].requests.sum())


def client_p95_ms(folder: Path, stage: int) -> float | None:
    """The p95 of the stage's HTTP requests, as the harness measured them (transactions left out: a flow of
    several requests is not one answer of the server's)."""
    merged = HdrHistogram(1, 3_600_000_000, 3)
    for entry in json.loads((folder / "histograms.json").read_text())["histograms"]:
        if entry["stage"] == stage and entry["phase"] == "steady" and entry["endpoint"].split(" ")[0] not in NOT_REQUESTS:
            merged.add(HdrHistogram.decode(entry["encoded"]))
    return merged.get_value_at_percentile(95) / 1000 if merged.get_total_count() else None


# --- the two measurements ----------------------------------------------------------------------------------

def cpu_per_sample(folder: Path, hold_s: int) -> None:
    target = start_target(["--profile", "baseline", "--latency-scale", "0.2"])
    print(f"1. generator CPU per sample, one process, 20 users with 0-50 ms think time (so that per-sample work, not "
          f"the per-second housekeeping, dominates), against the reference target ({hold_s} s steady)")
    try:
        default_mix = dict.fromkeys(CLASSES, 1) | {"auth": 2, "dashboard": 4}
        for label, mix in [*((kind, {kind: 1}) for kind in CLASSES), ("default mix", default_mix)]:
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


def ladder(folder: Path, steps: list[int], hold_s: int, think: tuple[str, str]) -> None:
    server = FixedLatencyServer(FIXED_MS, folder)
    cpu = CpuSampler(server.process.pid)
    try:
        stages = [{"name": f"u{users}", "users": users, "ramp": "3s", "hold": f"{hold_s}s"} for users in steps]
        path = scenario(folder, "ladder", stages, {"health": 1, "dashboard": 1, "media": 1}, think)
        print(f"\n2. ladder against a {FIXED_MS:.0f} ms fixed-latency server in C (health, dashboard, media; think "
              f"{think[0]}-{think[1]}); CPU: the server's own, and the machine's busy share of all its cores")
        held, bound_held, close = {}, [], []
        for workers in (0, 2):
            run_folder, info = run(path, server.url, folder / "out", workers)
            label = "1 process" if workers == 0 else f"{workers} workers"
            print(f"   {label}:")
            first_flagged = None
            for stage in info["stages"]:
                index, start, end = stage["index"], stage["steady_start"] or 0, stage["steady_end"] or 0
                client, own = client_p95_ms(run_folder, index), server.own_p95_ms(start, end)
                server_cpu, machine_cpu = cpu.cpu_in(start, end)
                rate = steady_samples(run_folder, index) / max(end - start, 1e-9)
                ratio = f"{client / own:5.2f}x" if client and own else "  -  "
                allowance = LAG_ALLOWANCE * (stage["generator_lag_p95_ms"] or 0)
                flag = f"FLAGGED ({stage['generator_reason']})" if stage["generator_limited"] else "ok"
                print(f"     {stage['users']:5d} users  {rate:7.0f} req/s  p95 harness {client or 0:8.1f} ms  "
                      f"server {own or 0:6.1f} ms  {ratio}  may add {allowance:6.1f} ms  CPU server "
                      f"{server_cpu or 0:3.0f} %  machine {machine_cpu or 0:3.0f} %  {flag}")
                if stage["generator_limited"] and first_flagged is None:
                    first_flagged = stage["users"]
                if client and own and not stage["generator_limited"]:
                    bound_held.append(client - own <= allowance)
                    if allowance <= 0.1 * client:  # the harness itself says: within 10 % of its own p95
                        close.append(client / own)
            unflagged = [s["users"] for s in info["stages"] if first_flagged is None or s["users"] < first_flagged]
            held[workers] = max(unflagged, default=0)
            print(f"     held before the first flagged step: {held[workers]} users"
                  + ("" if first_flagged else " (never flagged: the ladder ended first)"))
        print(f"\n   unflagged steps whose excess over the server's p95 stayed within what the harness said its lag may "
              f"add: {sum(bound_held)} of {len(bound_held)}")
        print(f"   steps where that bound was under 10 % of the reported p95: {len(close)}"
              + (f", reported / server p95 at most {max(close):.2f}x" if close else ""))
        if held[0]:
            print(f"\n   capacity ratio, 2 workers / 1 process: {held[2] / held[0]:.2f}")
    finally:
        cpu.stop()
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hold", type=int, default=8, help="steady seconds per step")
    parser.add_argument("--steps", default="100,200,400,600,800", help="users per ladder step")
    parser.add_argument("--think", default="0.1s,0.3s", help="the ladder's think time, MIN,MAX")
    parser.add_argument("--only", choices=["cpu", "ladder"], help="run one of the two measurements")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as temporary:
        folder = Path(temporary)
        if args.only != "ladder":
            cpu_per_sample(folder, args.hold)
        if args.only != "cpu":
            low, high = args.think.split(",")
            ladder(folder, [int(users) for users in args.steps.split(",")], args.hold, (low, high))


if __name__ == "__main__":
    main()
