"""Keeping a process's own event loop busy on purpose, the way a loaded generator is: the tests of generator
health (flags, the lag allowance, the loop probe) need it at known sizes."""

import time

import gevent


def block_the_loop(seconds: float) -> None:
    """Hold the CPU without yielding: every greenlet, the loop probe's too, waits this long."""
    until = time.perf_counter() + seconds
    while time.perf_counter() < until:
        pass


def busy_spells(busy_s: float, every_s: float) -> None:
    """Forever (spawn it, then kill it): block the loop for busy_s, yield for every_s."""
    while True:
        block_the_loop(busy_s)
        gevent.sleep(every_s)
