"""Locust user classes run headless in the test's own process for a bounded time: the mechanics the traffic
tests share; each test keeps its own request listener (what it records of a sample)."""

import time
from collections.abc import Callable

import gevent
from locust.argument_parser import parse_options
from locust.env import Environment


def run_headless(host: str, user_classes: list, args: list[str], users: int, seconds: float,
                 listener: Callable[..., None], until: Callable[[], bool] | None = None) -> None:
    """Start `users` users of the classes with the harness's command-line `args`, let them run `seconds` (or, given
    `until`, until it holds, at most `seconds`), stop them (at most 15 s); `listener` hears every request event
    meanwhile."""
    env = Environment(user_classes=user_classes, host=host, parsed_options=parse_options(args))
    env.events.request.add_listener(listener)
    runner = env.create_local_runner()
    runner.start(users, spawn_rate=users)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and not (until is not None and until()):
        gevent.sleep(min(0.05, max(deadline - time.monotonic(), 0)))
    with gevent.Timeout(15):
        runner.quit()
