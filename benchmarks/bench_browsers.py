"""What browser users cost the protocol users: throughput, p95 and the generator's event-loop lag of the same
protocol users without browsers and with BROWSERS real Chromium users beside them, alternating (without, with,
without, ... without) for ROUNDS rounds in one run against the reference target on loopback. Each round's ratio
is its phase with browsers against the mean of the two phases around it, so a drift of the machine cancels; the
median over rounds is the figure. Goal (issue #15): two browsers move the protocol p95 by less than 5 %.

    .venv/bin/python benchmarks/bench_browsers.py [--seconds 10] [--rounds 3] [--users 60] [--browsers 2]
                                                  [--latency-scale 1]

--latency-scale 1 serves the audit's latencies (health p95 about 20 ms); 0.2 makes every route 5x faster, so
that a millisecond of the generator's own delay weighs 5x more.

Prints figures and ratios, asserts nothing: the machines are shared and noisy (and Chromium competes with the
target and the generator for the same cores), so a ratio is read, not gated.
"""

from __future__ import annotations

import locust  # noqa: F401  # isort: skip  (first: gevent monkey-patching)

import argparse
import time

import gevent
import numpy as np
from locust import FastHttpUser, between, task
from locust.env import Environment

from locustfiles.browser import BrowserSettings
from medianest_load.browsers import REQUEST_TYPE, BrowserFleet, chromium_executable
from reference_target.launcher import start_target

LAG_TICK_S = 0.05


class Protocol(FastHttpUser):
    """A protocol user with think time, as the harness's users have: its p95 is what browsers must not move."""

    wait_time = between(0.05, 0.15)

    @task
    def health(self) -> None:
        self.client.get("/api/v1/health", name="/api/v1/health")


def loop_lag(lags: list[float], stop: gevent.event.Event) -> None:
    """How late a 50-ms gevent sleep wakes: the stall a busy (or blocked) generator inflicts on every user."""
    while not stop.is_set():
        started = time.perf_counter()
        gevent.sleep(LAG_TICK_S)
        lags.append((time.perf_counter() - started - LAG_TICK_S) * 1000)


def phase(environment: Environment, seconds: float, fleet: BrowserFleet | None, browsers: int) -> dict[str, float]:
    """Protocol requests/s, p95 and event-loop lag over `seconds`, with `browsers` browser users running."""
    times: list[float] = []
    browser_samples = [0]

    def listen(request_type: str, response_time: float, **_: object) -> None:
        if request_type == REQUEST_TYPE:
            browser_samples[0] += 1
        else:
            times.append(response_time)

    if fleet is not None:
        fleet.warm_up(browsers)
    environment.events.request.add_listener(listen)
    lags: list[float] = []
    stop = gevent.event.Event()
    probe = gevent.spawn(loop_lag, lags, stop)
    gevent.sleep(seconds)
    stop.set()
    probe.join()
    environment.events.request.remove_listener(listen)
    if fleet is not None:
        fleet.close()  # every browser ended before the next phase starts
    return {"rps": len(times) / seconds, "p95_ms": float(np.percentile(times, 95)), "p50_ms": float(np.median(times)),
            "lag_p99_ms": float(np.percentile(lags, 99)), "lag_max_ms": float(max(lags)),
            "browser_samples": browser_samples[0]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="each phase")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--latency-scale", type=float, default=1.0)
    parser.add_argument("--users", type=int, default=60)
    parser.add_argument("--browsers", type=int, default=2)
    parser.add_argument("--bundle-kb", type=int, default=2048)
    args = parser.parse_args()
    executable = chromium_executable()[0]
    if executable is None:
        raise SystemExit("no Chromium on PATH: install Debian's chromium package")
    target = start_target(["--profile", "baseline", "--latency-scale", str(args.latency_scale), "--bundle-kb",
                           str(args.bundle_kb)])
    environment = Environment(user_classes=[Protocol], host=target.url)
    runner = environment.create_local_runner()
    fleet = BrowserFleet(BrowserSettings(page_url=target.url + "/", api_url=target.url + "/api/v1/health",
                                         page_name="/", api_name="/api/v1/health", executable=executable,
                                         think_min=0.5, think_max=1.5), environment.events.request.fire)
    try:
        runner.start(args.users, spawn_rate=args.users)
        gevent.sleep(2.0)  # spawned and warm
        phases = [phase(environment, args.seconds, None, 0)]
        for _ in range(args.rounds):
            phases += [phase(environment, args.seconds, fleet, args.browsers), phase(environment, args.seconds, None, 0)]
    finally:
        runner.quit()
        fleet.close()
        target.stop()
    print(f"protocol users: {args.users}; browsers: {args.browsers}; latency scale {args.latency_scale:g}; "
          f"{args.rounds} rounds of {args.seconds:g} s phases")
    for index, figures in enumerate(phases):
        label = f"with {args.browsers} browsers" if index % 2 else "without browsers"
        print(f"  {label:18} {figures['rps']:7.1f} protocol req/s  p50 {figures['p50_ms']:6.1f} ms  "
              f"p95 {figures['p95_ms']:6.1f} ms  loop lag p99 {figures['lag_p99_ms']:5.1f} ms "
              f"max {figures['lag_max_ms']:5.1f} ms  ({figures['browser_samples']} browser samples)")
    ratios = {key: [] for key in ("rps", "p95_ms", "lag_p99_ms")}
    for index in range(1, len(phases), 2):
        for key, values in ratios.items():
            values.append(phases[index][key] / ((phases[index - 1][key] + phases[index + 1][key]) / 2))
    for key, label in (("rps", "throughput"), ("p95_ms", "p95"), ("lag_p99_ms", "loop lag p99")):
        print(f"{label} with {args.browsers} browsers / without (each round against the phases around it): "
              + ", ".join(f"{ratio:.3f}" for ratio in ratios[key]) + f"; median {float(np.median(ratios[key])):.3f}")
    print(f"per browser user: throughput x{float(np.median(ratios['rps'])) ** (1 / args.browsers):.3f}")


if __name__ == "__main__":
    main()
