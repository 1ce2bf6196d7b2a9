"""What the recorder costs on the hot path: requests per CPU-second of the load generator, bare Locust against
Locust with the harness's recorder listening, in the same run against the reference target on loopback.

    .venv/bin/python benchmarks/bench_recorder_overhead.py [--seconds 10] [--users 50]

Prints figures, asserts nothing: the machines are shared and noisy, so a ratio is read, not gated.
"""

from __future__ import annotations

import locust  # noqa: F401  # isort: skip  (first: gevent monkey-patching)

import argparse
import resource
import time

import gevent
from locust import FastHttpUser, constant, task
from locust.env import Environment

from medianest_load.recorder import Recorder
from reference_target.launcher import start_target


class HealthProbe(FastHttpUser):
    wait_time = constant(0)

    @task
    def health(self) -> None:
        self.client.get("/api/v1/health", name="/api/v1/health")


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def measure(host: str, users: int, seconds: float, recorder: Recorder | None) -> tuple[int, float]:
    """Requests sent and generator CPU-seconds spent in a bounded run."""
    environment = Environment(user_classes=[HealthProbe], host=host)
    if recorder is not None:
        environment.events.request.add_listener(recorder.on_request)
    runner = environment.create_local_runner()
    runner.start(users, spawn_rate=users)
    gevent.sleep(1.0)  # spawned and warm
    requests_before, cpu_before = runner.stats.total.num_requests, cpu_seconds()
    started = time.monotonic()
    while time.monotonic() - started < seconds:
        gevent.sleep(0.5)
        if recorder is not None:
            recorder.close_second(runner.user_count)
    requests, cpu = runner.stats.total.num_requests - requests_before, cpu_seconds() - cpu_before
    runner.quit()
    return requests, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--users", type=int, default=50)
    args = parser.parse_args()
    target = start_target(["--profile", "baseline", "--latency-scale", "0.01"])
    try:
        bare = measure(target.url, args.users, args.seconds, None)
        recorded = measure(target.url, args.users, args.seconds, Recorder())
    finally:
        target.stop()
    rates = {}
    for label, (requests, cpu) in (("bare locust", bare), ("with recorder", recorded)):
        rates[label] = requests / cpu if cpu else float("nan")
        print(f"{label:14} {requests:8d} requests  {cpu:6.2f} CPU-s  {rates[label]:8.0f} requests per CPU-second")
    print(f"ratio (with recorder / bare): {rates['with recorder'] / rates['bare locust']:.3f}")


if __name__ == "__main__":
    main()
