"""Scale-out: one scenario over a master and worker processes (this machine or several), on Locust's own
MasterRunner/WorkerRunner and its message channel (plaintext ZeroMQ: keep it on a trusted network).

The master (medianest_load/run.py) owns the stage shape, the gate, progress and the results folder; workers
only run users. Messages, beside Locust's own:

    master -> worker  medianest_setup     once per worker, before its first spawn: its index, the options, the
                                          target profile's text and its own block of tokens and addresses
    master -> worker  medianest_position  at every stage/phase transition (and to a worker that reports another)
    master -> worker  medianest_finish    at the end: stop the users, send the final report, then medianest_final
    worker -> master  report_to_master    every REPORT_INTERVAL_S: {"medianest": recorder delta, health, counts}
    worker -> master  medianest_final     after the final report: nothing of this worker is still on the way

A sample belongs to the stage and phase the worker last heard of when the sample finished: the attribution
window at a transition is the master -> worker message latency (docs/design.md).
"""

from __future__ import annotations

import locust  # noqa: F401  # isort: skip  (first: gevent monkey-patching)

import logging
import math
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import astuple, dataclass, replace
from typing import Any

import gevent
from hdrh.histogram import HdrHistogram
from locust import runners
from locust.argument_parser import get_parser
from locust.env import Environment

from medianest_load.health_probe import GeneratorLog, LoopProbe, ProbeSample
from medianest_load.host_guard import HostRefused, check_host
from medianest_load.inputs import InputError
from medianest_load.recorder import Position, Recorder
from medianest_load.settings import HarnessOptions, OptionError, TokenPool, hand_to_users, resolve_settings
from medianest_load.target_profile import ProfileError
from medianest_load.vocabulary import RunStatus

log = logging.getLogger(__name__)

DEFAULT_MASTER_PORT = 5557
REPORT_INTERVAL_S = 1.0  # Locust's default is 3 s: 1 s keeps the merged per-second series close to the truth
FINISH_TIMEOUT_S = 15.0  # how long the master waits for each worker's final report
MASTER_SILENT_S = 15.0  # a worker that hears nothing of its master for this long quits (Locust's own: 60 s)
WORKER_TOKENS_ENV = "MEDIANEST_WORKER_TOKENS"  # the master's block of tokens, in this worker's memory only
SETUP, POSITION, FINISH, FINAL = "medianest_setup", "medianest_position", "medianest_finish", "medianest_final"


class DistributedError(InputError):
    """A bad --workers/--master/--master-bind value, or workers that never came: one line."""


def parse_address(text: str, option: str, default_port: int | None = DEFAULT_MASTER_PORT) -> tuple[str, int]:
    """'HOST[:PORT]' -> (host, port); one-line DistributedError otherwise."""
    host, _, port_text = text.rpartition(":") if ":" in text else (text, "", "")
    try:
        port = int(port_text) if port_text else default_port
    except ValueError:
        port = None
    if not host or port is None or not 0 <= port <= 65535:
        raise DistributedError(f"option {option}: got {text!r}, expected HOST:PORT (e.g. 127.0.0.1:{DEFAULT_MASTER_PORT})")
    return host.strip("[]"), port


def worker_count(text: str) -> int:
    """--workers: a number of local worker processes, or `auto` (one per core)."""
    if text == "auto":
        return os.cpu_count() or 1
    if not text.isdigit() or not 0 <= int(text) <= 64:
        raise DistributedError(f"option --workers: got {text!r}, expected a number of processes 0-64 or 'auto'")
    return int(text)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def token_block(tokens: tuple[str, ...], index: int, workers: int) -> tuple[str, ...]:
    """Worker `index`'s own tokens: consecutive blocks, so no token is used by two workers' users."""
    size = math.ceil(len(tokens) / workers)
    return tokens[(index % workers) * size:(index % workers + 1) * size]


def process_name(index: int) -> str:
    return f"worker {index + 1}"


# --- the master side ---------------------------------------------------------------------------------------

@dataclass
class WorkerRecord:
    """What the master knows of one worker: for run.json, the lost-worker rule and the final handshake."""

    index: int
    requests: int = 0  # merged from its deltas
    counted: int = 0  # its own independent count of the samples it recorded, as last reported
    final: bool = False
    last_report_at: float | None = None
    last_report_stage: int = 0
    lost_at: float | None = None  # when the master noticed
    lost_stage: int | None = None  # the stage of its last report: it died after that
    lost_why: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"process": process_name(self.index), "requests": self.requests, "counted": self.counted,
                "final_report": self.final, "last_report_at": self.last_report_at, "lost_at": self.lost_at,
                "lost_stage": self.lost_stage, "lost_why": self.lost_why or None}


class Master:
    """Attaches the harness to a MasterRunner: sets workers up, tells them transitions, merges their reports,
    notices lost ones, and at the stop collects every worker's final report before Locust quits them."""

    def __init__(self, runner: Any, recorder: Recorder, generator: GeneratorLog, setup: dict[str, Any],
                 expected: int) -> None:
        self.runner, self.recorder, self.generator, self.setup, self.expected = runner, recorder, generator, setup, expected
        self.workers: dict[str, WorkerRecord] = {}
        self.finishing = False
        self.locust_requests: int | None = None  # Locust's own count once every final report is in
        self.collecting: gevent.Greenlet | None = None
        events = runner.environment.events
        events.worker_report.add_listener(self.on_report)
        events.test_stopping.add_listener(self.collect_final_reports)
        runner.register_message(FINAL, self.on_final)
        recorder.listeners.append(self.announce)

    def detach(self) -> None:
        events = self.runner.environment.events
        events.worker_report.remove_listener(self.on_report)
        events.test_stopping.remove_listener(self.collect_final_reports)
        self.recorder.listeners.remove(self.announce)

    def wait_for_workers(self, timeout_s: float) -> None:
        """Until `expected` workers have joined, or DistributedError after timeout_s."""
        deadline = time.monotonic() + timeout_s
        while len(self.runner.clients.ready) < self.expected:
            if time.monotonic() > deadline:
                raise DistributedError(f"only {len(self.runner.clients.ready)} of {self.expected} workers joined the "
                                       f"master within --worker-timeout {timeout_s:g} s; start more workers or wait longer")
            gevent.sleep(0.1)
        self.tick()

    def tick(self) -> list[WorkerRecord]:
        """Once a second: set up workers that joined, and return the ones lost since the last tick."""
        for client_id in list(self.runner.clients):
            if client_id not in self.workers:
                index = self.runner.get_worker_index(client_id)
                self.workers[client_id] = WorkerRecord(index)
                self.runner.send_message(SETUP, {**self.setup, "index": index, "workers": self.expected,
                                                 "tokens": token_block(self.setup["tokens"], index, self.expected)},
                                         client_id)
                self.runner.send_message(POSITION, list(astuple(self.recorder.position)), client_id)
        if self.finishing:
            return []
        lost = []
        for client_id, record in self.workers.items():
            node = self.runner.clients.get(client_id)
            if record.lost_at is None and (node is None or node.state == runners.STATE_MISSING):
                self._mark_lost(record, "missed its heartbeats" if node is not None else "left the master")
                lost.append(record)
        return lost

    def _mark_lost(self, record: WorkerRecord, why: str) -> None:
        record.lost_at, record.lost_stage, record.lost_why = time.time(), record.last_report_stage, why
        log.error("%s lost at stage %d: %s; its results up to its last report are kept",
                  process_name(record.index), record.lost_stage, why)

    def announce(self, position: Position) -> None:
        self.runner.send_message(POSITION, list(astuple(position)))

    def on_report(self, client_id: str, data: dict[str, Any], **_: Any) -> None:
        report = data.get("medianest")
        record = self.workers.get(client_id)
        if report is None or record is None:
            return
        record.requests += self.recorder.merge_delta(report["delta"])
        record.counted = report["counted"]
        position = self.recorder.position
        record.last_report_at, record.last_report_stage = time.time(), position.stage
        for at, users, cpu, lag in report["health"]:
            self.generator.add(process_name(record.index), position.stage, position.phase, users,
                               ProbeSample(cpu_pct=cpu, lag=HdrHistogram.decode(lag)), at)
        if report["position"] != list(astuple(position)):
            self.runner.send_message(POSITION, list(astuple(position)), client_id)

    def on_final(self, environment: Environment, msg: Any, **_: Any) -> None:
        if msg.node_id in self.workers:
            self.workers[msg.node_id].final = True

    def collect_final_reports(self, **_: Any) -> None:
        """test_stopping on the master (the shape's end or the runner's quit), and the runner before it quits:
        every live worker stops its users and sends what it still holds; a worker that does not within
        FINISH_TIMEOUT_S is marked lost. The collection runs in a greenlet of its own, so that Locust killing the
        shape greenlet cannot cut it short; every caller waits for it."""
        if self.collecting is None:
            self.finishing = True
            self.collecting = gevent.spawn(self._collect)
        self.collecting.join()

    def _collect(self) -> None:
        live = {client_id for client_id, record in self.workers.items() if record.lost_at is None
                and client_id in self.runner.clients and self.runner.clients[client_id].state != runners.STATE_MISSING}
        for client_id in live:
            self.runner.send_message(FINISH, None, client_id)
        deadline = time.monotonic() + FINISH_TIMEOUT_S
        while any(not self.workers[client_id].final for client_id in live) and time.monotonic() < deadline:
            gevent.sleep(0.05)
        for client_id in live:
            if not self.workers[client_id].final:
                self._mark_lost(self.workers[client_id], f"sent no final report within {FINISH_TIMEOUT_S:g} s")
        # Locust's stats ride in the same reports as the deltas: an independent count of the same samples
        self.locust_requests = self.runner.stats.total.num_requests

    @property
    def lost(self) -> list[WorkerRecord]:
        return [record for record in self.workers.values() if record.lost_at is not None]

    def run_info(self) -> dict[str, Any]:
        return {"workers": [record.to_dict() for record in sorted(self.workers.values(), key=lambda r: r.index)],
                "locust_requests": self.locust_requests}


def run_status(status: str, master: Master | None) -> str:
    """A run that completed without part of its generator is `degraded`."""
    return RunStatus.DEGRADED if status == RunStatus.COMPLETED and master is not None and master.lost else status


class LocalWorkers:
    """`--workers N`: N `medianest-load worker` processes on this machine, in their own session (a Ctrl-C at the
    terminal reaches the master, which stops them in order); whatever is left at the end is killed."""

    def __init__(self, count: int, master: str) -> None:
        command = [sys.executable, "-m", "medianest_load.cli", "worker", "--master", master]
        self.processes = [subprocess.Popen(command, start_new_session=True, stdin=subprocess.DEVNULL)
                          for _ in range(count)]

    def stop(self, grace_s: float = 5.0) -> None:
        deadline = time.monotonic() + grace_s
        for process in self.processes:
            try:
                process.wait(timeout=max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=5)


# --- the worker side ---------------------------------------------------------------------------------------

class Worker:
    """One `medianest-load worker` process: users, a recorder of its own, a health probe, and the messages."""

    def __init__(self, runner: Any, tokens_file: str | None = None) -> None:
        self.runner, self.environment = runner, runner.environment
        self.tokens_file = tokens_file
        self.recorder = Recorder()
        self.probe = LoopProbe()
        self.counted = 0
        self.finished = False
        self.deadline: float | None = None
        self.profile_path: str | None = None
        events = self.environment.events
        events.request.add_listener(self.recorder.on_request)
        events.request.add_listener(self.count)
        events.report_to_master.add_listener(self.report)
        runner.register_message(SETUP, self.on_setup)
        runner.register_message(POSITION, self.on_position)
        runner.register_message(FINISH, self.on_finish)

    def count(self, **_: Any) -> None:
        self.counted += 1

    def report(self, client_id: str, data: dict[str, Any], **_: Any) -> None:
        sample = self.probe.sample()
        data["medianest"] = {"delta": self.recorder.take_delta(), "counted": self.counted,
                             "position": list(astuple(self.recorder.position)),
                             "health": [[time.time(), self.runner.user_count, sample.cpu_pct, sample.lag.encode()]]}

    def on_position(self, environment: Environment, msg: Any, **_: Any) -> None:
        self.recorder.position = Position(*msg.data)

    def on_setup(self, environment: Environment, msg: Any, **_: Any) -> None:
        """Settings from the master's setup: no scenario or profile file is needed on this machine. Tokens are
        the master's block for this worker, or this worker's block of its own --tokens file."""
        data = msg.data
        index, workers, block = data["index"], data["workers"], tuple(data["tokens"])
        self.deadline = time.monotonic() + data["deadline_s"]
        try:
            check_host(data["host"], tuple(data["allowed_hosts"]), "the master's host")
            if block and not self.tokens_file:
                os.environ[WORKER_TOKENS_ENV] = "\n".join(block)
            handle, self.profile_path = tempfile.mkstemp(prefix="medianest-profile-", suffix=".yaml")
            with os.fdopen(handle, "w") as profile:
                profile.write(data["profile_yaml"])
            options = HarnessOptions(**data["options"], target_profile=self.profile_path, tokens_file=self.tokens_file or "",
                                     tokens_env=WORKER_TOKENS_ENV if block and not self.tokens_file else "")
            settings = resolve_settings(options, index, workers)
        except (OSError, HostRefused, OptionError, ProfileError) as error:
            log.error("worker setup refused, quitting before any request: %s", error)  # the master records it lost
            gevent.spawn(self.runner.quit)
            return
        if self.tokens_file and settings.tokens is not None:
            settings = replace(settings, tokens=TokenPool(token_block(settings.tokens.tokens, index, workers)))
        hand_to_users(environment, settings)

    def on_finish(self, environment: Environment, msg: Any, **_: Any) -> None:
        """Stop the users, then ship everything recorded (Locust's own final report, as on its `quit`), then
        say so: the master has all of this worker's samples once medianest_final arrives."""
        if not self.finished:
            self.finished = True
            self.runner.stop()
            events = self.environment.events
            events.request.remove_listener(self.recorder.on_request)
            events.request.remove_listener(self.count)
        self.runner._send_stats()
        self.runner.send_message(FINAL)

    def watch(self) -> None:
        """Bounded in time: quit when the master falls silent or the run's deadline passes."""
        while True:
            gevent.sleep(1)
            heard = self.runner.last_heartbeat_timestamp
            if heard and time.time() - heard > MASTER_SILENT_S:
                log.error("no heartbeat from the master for %.0f s: quitting", MASTER_SILENT_S)
                break
            if self.deadline is not None and time.monotonic() > self.deadline:
                log.error("the run's deadline passed: quitting")
                break
        self.runner.quit()

    def close(self) -> None:
        self.probe.stop()
        os.environ.pop(WORKER_TOKENS_ENV, None)
        if self.profile_path:
            os.unlink(self.profile_path)


def run_worker(master_host: str, master_port: int, tokens_file: str | None = None) -> int:
    """`medianest-load worker`: join the master, run users until it quits us. Returns the exit code."""
    from locustfiles.medianest import USER_CLASSES

    runners.WORKER_REPORT_INTERVAL = REPORT_INTERVAL_S
    options = get_parser(default_config_files=[]).parse_args(["--headless"])
    environment = Environment(user_classes=list(USER_CLASSES.values()), parsed_options=options, events=locust.events)
    try:
        runner = environment.create_worker_runner(master_host, master_port)
    except (ConnectionError, OSError) as error:
        print(f"error: --master {master_host}:{master_port}: cannot join ({error})", file=sys.stderr)
        return 2
    worker = Worker(runner, tokens_file)
    watcher = gevent.spawn(worker.watch)
    for signum in (signal.SIGINT, signal.SIGTERM):
        gevent.signal_handler(signum, runner.quit)
    try:
        runner.greenlet.join()
    finally:
        watcher.kill()
        worker.close()
    return 0
