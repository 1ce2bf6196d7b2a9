"""The generator's loop probe measures what a response arriving at any moment would wait, not what the probe
itself waited: one long stall counts for every moment of it (HdrHistogram's coordinated-omission correction)."""

import locust  # noqa: F401  # isort: skip  (first: gevent monkey-patching)

import time

import gevent

from medianest_load.health_probe import LoopProbe


def block_the_loop(seconds: float) -> None:
    until = time.perf_counter() + seconds
    while time.perf_counter() < until:
        pass


def test_one_stall_weighs_as_long_as_it_lasted():
    probe = LoopProbe()
    try:
        gevent.sleep(0.5)  # ~50 punctual wake-ups
        probe.sample()  # start a fresh interval
        gevent.sleep(0.3)
        block_the_loop(0.3)  # one wake-up 300 ms late ...
        gevent.sleep(0.3)
        # ... stands for the ~30 moments of the stall a response could have arrived in (300, 290, ... 10 ms) among
        # ~60 punctual ones: a fifth of the distribution is above 100 ms, not one sample in 60
        assert probe.histogram.get_total_count() >= 80
        assert probe.histogram.get_value_at_percentile(80) >= 100_000, probe.histogram.get_value_at_percentile(80)
        _, _, p99 = probe.sample()
        assert p99 >= 250, p99
    finally:
        probe.stop()
