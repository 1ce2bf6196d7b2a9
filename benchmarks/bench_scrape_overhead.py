"""What scraping /metrics costs the load generator: requests per CPU-second of the generator with the recorder
only, against the recorder plus the scraper greenlet (at --interval), in the same run against the reference
target on loopback. Rounds alternate (without, with, without, ...) so that drift on a shared machine hits both.

    .venv/bin/python benchmarks/bench_scrape_overhead.py [--seconds 10] [--users 50] [--interval 5] [--rounds 2]

Prints figures, asserts nothing: the machines are shared and noisy, so a ratio is read, not gated. The goal is a
cost under 1 % (a ratio above 0.99) at the default 5-s interval.
"""

from __future__ import annotations

import locust  # noqa: F401  # isort: skip  (first: gevent monkey-patching)

import argparse
import time

import gevent
from bench_recorder_overhead import HealthProbe, cpu_seconds  # the same generator workload
from locust.env import Environment

from medianest_load.recorder import Recorder
from medianest_load.scraper import ScrapeConfig, Scraper
from medianest_load.target_profile import DEFAULT_METRIC_NAMES
from reference_target.launcher import start_target


def measure(host: str, users: int, seconds: float, interval_s: float | None) -> tuple[int, float, int]:
    """Requests sent, generator CPU-seconds and scrapes made in a bounded run (no scraper when interval_s is None)."""
    recorder = Recorder()
    environment = Environment(user_classes=[HealthProbe], host=host)
    environment.events.request.add_listener(recorder.on_request)
    runner = environment.create_local_runner()
    runner.start(users, spawn_rate=users)
    gevent.sleep(1.0)  # spawned and warm
    scraper = None
    if interval_s is not None:
        keep = frozenset(name for names in DEFAULT_METRIC_NAMES.values() for name in names)
        scraper = Scraper(ScrapeConfig(url=f"{host}/metrics", interval_s=interval_s, keep=keep), recorder)
    scraping = gevent.spawn(scraper.run) if scraper else None
    requests_before, cpu_before = runner.stats.total.num_requests, cpu_seconds()
    started = time.monotonic()
    while time.monotonic() - started < seconds:
        gevent.sleep(1.0)
        recorder.close_second(runner.user_count)
    requests, cpu = runner.stats.total.num_requests - requests_before, cpu_seconds() - cpu_before
    if scraping is not None:
        scraping.kill()
    runner.quit()
    return requests, cpu, sum(scraper.outcomes.values()) if scraper else 0


def cpu_per_scrape(host: str, scrapes: int = 30) -> float:
    """Generator CPU-seconds one scrape costs (request, parse, rows), measured on its own: steadier than the
    difference of two noisy load runs."""
    keep = frozenset(name for names in DEFAULT_METRIC_NAMES.values() for name in names)
    scraper = Scraper(ScrapeConfig(url=f"{host}/metrics", interval_s=5.0, keep=keep), Recorder())
    scraper.scrape_once()  # connection and first parse
    before = cpu_seconds()
    for _ in range(scrapes):
        scraper.scrape_once()
    return (cpu_seconds() - before) / scrapes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--users", type=int, default=50)
    parser.add_argument("--interval", type=float, default=5.0)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    target = start_target(["--profile", "baseline", "--latency-scale", "0.01"])
    totals = {"without scraping": [0, 0.0, 0], "with scraping": [0, 0.0, 0]}
    try:
        for _ in range(args.rounds):
            for label, interval in (("without scraping", None), ("with scraping", args.interval)):
                measured = measure(target.url, args.users, args.seconds, interval)
                totals[label] = [total + part for total, part in zip(totals[label], measured, strict=True)]
        per_scrape = cpu_per_scrape(target.url)
    finally:
        target.stop()
    rates = {}
    for label, (requests, cpu, scrapes) in totals.items():
        rates[label] = requests / cpu if cpu else float("nan")
        print(f"{label:17} {requests:8d} requests  {cpu:6.2f} CPU-s  {rates[label]:8.0f} requests per CPU-second"
              f"  ({scrapes} scrapes)")
    ratio = rates["with scraping"] / rates["without scraping"]
    print(f"ratio (with scraping every {args.interval:g} s / without): {ratio:.3f}  (cost {(1 - ratio) * 100:+.1f} %)")
    requests, cpu, _ = totals["without scraping"]
    busy = cpu / (args.rounds * args.seconds)  # generator CPU-seconds per second without scraping
    print(f"one scrape costs {per_scrape * 1000:.2f} ms of generator CPU: every {args.interval:g} s that is "
          f"{per_scrape / args.interval / busy * 100:.2f} % of the generator's CPU in this run")


if __name__ == "__main__":
    main()
