"""What the recorder costs on the hot path: requests per CPU-second of the load generator, bare Locust against
Locust with the harness's recorder listening, in the same run against the reference target on loopback. And what
time to first byte would cost if every API request recorded it too (issue #15), as the frontend user times its
page: a streamed response timed at its headers, read, and a second sample.

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


class HealthWithTtfb(FastHttpUser):
    wait_time = constant(0)

    @task
    def health(self) -> None:
        started = time.perf_counter()
        with self.client.get("/api/v1/health", name="/api/v1/health", stream=True, catch_response=True) as response:
            ttfb_ms = response.request_meta["response_time"]  # geventhttpclient: the status line and headers are in
            response.request_meta["response_length"] = len(response.content or b"")
            response.request_meta["response_time"] = (time.perf_counter() - started) * 1000
        self.environment.events.request.fire(request_type="GET", name="ttfb /api/v1/health", response_time=ttfb_ms,
                                             response_length=0, exception=None, context={}, response=None, url=None,
                                             start_time=time.time() - ttfb_ms / 1000)


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def measure(host: str, users: int, seconds: float, recorder: Recorder | None,
            user_class: type[FastHttpUser] = HealthProbe) -> tuple[int, float]:
    """HTTP requests sent and generator CPU-seconds spent in a bounded run."""
    environment = Environment(user_classes=[user_class], host=host)
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
    if user_class is HealthWithTtfb:
        requests //= 2  # two samples per HTTP request
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
        with_ttfb = measure(target.url, args.users, args.seconds, Recorder(), HealthWithTtfb)
    finally:
        target.stop()
    rates = {}
    for label, (requests, cpu) in (("bare locust", bare), ("with recorder", recorded), ("recorder + TTFB", with_ttfb)):
        rates[label] = requests / cpu if cpu else float("nan")
        print(f"{label:16} {requests:8d} requests  {cpu:6.2f} CPU-s  {rates[label]:8.0f} requests per CPU-second")
    print(f"ratio (with recorder / bare): {rates['with recorder'] / rates['bare locust']:.3f}")
    print(f"ratio (recorder + TTFB of every API request / recorder): {rates['recorder + TTFB'] / rates['with recorder']:.3f}")


if __name__ == "__main__":
    main()
