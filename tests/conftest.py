"""Shared fixtures. Locust is imported first: it monkey-patches gevent, and every test runs under it."""

import locust  # noqa: F401  # isort: skip  (must precede ssl, httpx, socketio)

import time
from pathlib import Path

import gevent
import httpx
import pytest
from gevent import monkey

from medianest_load import secrets
from reference_target.launcher import TargetProcess, start_target

# `make test` runs the suite in three passes (--suite-pass). First every test but the timing-sensitive ones, spread
# over processes (pytest-xdist, -n 4 --dist loadgroup): the tests of one group run in one process, one after
# another, so that a module whose module-scoped fixture makes runs makes them once, not once per process; those
# groups are scheduled first, since each is the longest stretch of work one process gets. Then the timing-sensitive
# tests, whose figures (open-model lateness, calibrated service times) would otherwise measure the other processes:
# the light ones two at a time (-n 2; those of one module share a process, and its fixtures), then those whose load
# takes both cores (marked `alone`) by themselves. Those two passes collect only the modules that hold their tests.
ONE_PROCESS_GROUPS = {
    "test_telemetry.py": "telemetry runs",
    "test_hardening.py": "short run",
    "test_analysis.py": "analysis runs",
}
# The longest single tests (15-60 s, mostly waiting), scheduled right after the groups: the last test to start
# should be a short one, or three processes idle while it runs (the knee ladder, last, ended the pass 20 s late)
LONG_FIRST = {
    "test_a_real_ladder_past_the_reference_targets_knee_is_projected_into_the_report",
    "test_a_larger_bundle_raises_fcp_and_load",
    "test_one_browser_records_ux_samples_in_every_stage_and_never_leaves_loopback",
    "test_smoke_run_writes_every_file_and_counts_match_an_independent_listener",
    "test_a_worker_killed_mid_stage_leaves_complete_results",
    "test_a_run_too_short_to_project_says_so_in_one_line_and_keeps_its_exit_code",
    "test_workers_started_elsewhere_join_a_master_that_waits_for_them",
}
TIMING_SENSITIVE = {  # module -> its timing-sensitive tests (None: all of them)
    "test_open_model.py": None,  # three light runs, beside the calibrated routes' few requests at a time
    "test_generator_health.py": None,  # wake-ups within a second; one process saturated, two workers not
    "test_reference_target.py": {"test_calibrated_route_p95_matches_its_configuration",
                                 "test_latency_rises_past_the_pool_size"},
    # a visit in each 5-s stage: the niced Chromium got too little CPU for one in the first stage beside the
    # parallel pass's four processes (CI, stop 19). xdist's default order (units of most tests first) runs it after
    # the calibrated routes, never beside the open model's fixture, whose 40/s rate it cut to 398 of 400 answers
    "test_browsers.py": {"test_one_browser_records_ux_samples_in_every_stage_and_never_leaves_loopback"},
}
ALONE = {"test_generator_health.py"}  # its load takes both cores: nothing else may run beside it


PASSES = {"parallel": "every test but the timing-sensitive ones", "timing": "the light timing-sensitive tests",
          "alone": "the tests whose load takes both cores"}


def timing_sensitive(module: str, name: str) -> bool:
    tests = TIMING_SENSITIVE.get(module, ())
    return tests is None or name in tests


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--suite-pass", choices=list(PASSES), help="run one of `make test`'s passes: "
                     + "; ".join(f"{name}: {tests}" for name, tests in PASSES.items()))


def suite_pass(module: str, name: str) -> str:
    if not timing_sensitive(module, name):
        return "parallel"
    return "alone" if module in ALONE else "timing"


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    """The timing and alone passes skip importing the modules that hold none of their tests (4 s a process)."""
    chosen = config.getoption("suite_pass")
    if chosen not in ("timing", "alone") or not collection_path.name.startswith("test_"):
        return None
    holders = ALONE if chosen == "alone" else set(TIMING_SENSITIVE) - ALONE
    return collection_path.name not in holders or None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Mark the timing-sensitive tests; keep those of the --suite-pass; put the grouped modules first, then the
    longest tests (in every process alike: xdist checks that they all collect the same order)."""
    passes = {item: suite_pass(item.path.name, getattr(item, "originalname", item.name)) for item in items}
    for item, where in passes.items():
        if where != "parallel":
            item.add_marker(pytest.mark.timing)
        if where == "alone":
            item.add_marker(pytest.mark.alone)
    chosen = config.getoption("suite_pass")
    if chosen is not None:
        config.hook.pytest_deselected(items=[item for item in items if passes[item] != chosen])
        items[:] = [item for item in items if passes[item] == chosen]
    order = list(ONE_PROCESS_GROUPS)

    def rank(item: pytest.Item) -> int:
        if item.path.name in order:
            return order.index(item.path.name)
        return len(order) + (getattr(item, "originalname", item.name) not in LONG_FIRST)

    items.sort(key=rank)


def pytest_xdist_make_scheduler(config: pytest.Config, log):
    """--dist loadgroup by ONE_PROCESS_GROUPS, and the timing-sensitive tests of one module together; every other
    test is a unit of its own. (xdist 3.8 marks a group by rewriting the test's node id, which pytest 9 no longer
    lets it do, so its own loadgroup groups nothing.)"""
    if config.getvalue("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class ByGroup(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            path, _, name = nodeid.partition("::")
            module = Path(path).name
            if module in ONE_PROCESS_GROUPS:
                return ONE_PROCESS_GROUPS[module]
            return f"timing: {module}" if timing_sensitive(module, name.split("[", 1)[0]) else nodeid

    return ByGroup(config, log)


class PolledEvent:
    """A threading.Event for a process that gevent patched, which another OS thread may set: the waiting greenlet
    polls the flag. A gevent Event cannot be woken from another thread: with nothing else scheduled, its wait ends
    in LoopExit at once."""

    def __init__(self) -> None:
        self._flag = False

    def set(self) -> None:
        self._flag = True

    def clear(self) -> None:
        self._flag = False

    def is_set(self) -> bool:
        return self._flag

    def wait(self, timeout: float | None = None) -> bool:
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self._flag and (deadline is None or time.monotonic() < deadline):
            gevent.sleep(0.005)
        return self._flag


def pytest_configure(config: pytest.Config) -> None:
    """In a pytest-xdist worker, the queue of tests to run is filled by execnet's receiver thread (a real OS thread)
    and read by the main one; its Event and RLock come from `threading`, which Locust's import above patched.
    Give that queue primitives that work across OS threads (xdist 3.8's TestQueue, pinned in pyproject.toml)."""
    if not hasattr(config, "workerinput"):
        return
    for plugin in config.pluginmanager.get_plugins():
        queue = getattr(plugin, "torun", None)
        if queue is not None and hasattr(queue, "_has_items_event"):
            queue._has_items_event = PolledEvent()
            queue._lock = monkey.get_original("_thread", "RLock")()


@pytest.fixture(autouse=True)
def own_secret_registry():
    """Secrets registered by one test (tokens like "bad") must not mask words in the next test's messages."""
    registered = set(secrets._SECRETS)
    yield
    secrets._SECRETS.clear()
    secrets._SECRETS.update(registered)


@pytest.fixture
def reference_target():
    """Factory: start the reference target on an ephemeral loopback port; every one is stopped at teardown."""
    started: list[TargetProcess] = []

    def start(*args: str) -> TargetProcess:
        target = start_target(list(args))
        started.append(target)
        return target

    yield start
    for target in started:
        target.stop()


@pytest.fixture
def issue_tokens(tmp_path):
    """Factory: log `count` users in on a target through its pin/verify flow; returns the tokens and a tokens file."""

    def issue(url: str, count: int) -> tuple[list[str], Path]:
        tokens = []
        with httpx.Client(base_url=url, timeout=5) as client:
            for _ in range(count):
                pin = client.post("/api/v1/auth/plex/pin", json={}).json()["data"]["id"]
                tokens.append(client.post("/api/v1/auth/plex/verify", json={"pinId": pin}).json()["data"]["token"])
        path = tmp_path / "tokens.txt"
        path.write_text("\n".join(tokens) + "\n")
        return tokens, path

    return issue
