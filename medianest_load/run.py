"""The runner: one scenario, headless, stage by stage, into one results folder.

Import this module before ssl, httpx or socketio are imported anywhere: locust monkey-patches gevent.
"""

from __future__ import annotations

import locust  # noqa: F401  # isort: skip  (first: gevent monkey-patching)

import json
import logging
import shutil
import signal
import subprocess
import sys
import time
from argparse import Namespace
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

import gevent
from locust import User
from locust.argument_parser import get_parser
from locust.env import Environment

import medianest_load
from locustfiles.common import backoff_event
from medianest_load.browsers import EXECUTABLE_ENV, BrowserFleet, browser_settings, chromium_executable
from medianest_load.distributed import DistributedError, LocalWorkers, Master, free_port, parse_address, run_status
from medianest_load.health_probe import MASTER, GeneratorLog, LoopProbe, generator_thresholds
from medianest_load.host_guard import check_host
from medianest_load.inputs import InputError, load_named
from medianest_load.open_model import ArrivalSchedule
from medianest_load.paths import REPO_ROOT, RESULTS_DIR, TARGET_PROFILES_DIR, resolve_named_file
from medianest_load.progress import Progress
from medianest_load.recorder import Recorder
from medianest_load.scenario import Scenario
from medianest_load.scraper import Scraper, scrape_config
from medianest_load.secrets import redact
from medianest_load.settings import FRONTEND_SOURCE, HarnessOptions, hand_to_users, resolve_settings
from medianest_load.shape import StagedShape, poll_the_shape_finely
from medianest_load.target_profile import TARGET_PROFILE
from medianest_load.vocabulary import RunStatus

if TYPE_CHECKING:  # at run time it loads inside live_gate(): pandas only once a run is sure to start
    from analysis.gate import LiveGate

log = logging.getLogger(__name__)
FLUSH_EVERY_S = 10.0
# A run may overrun its plan (slow ramps on a saturated generator), never by this much: then it is stopped.
DEADLINE_FACTOR, DEADLINE_SLACK_S = 1.5, 60.0


@dataclass(frozen=True, kw_only=True)
class RunRequest:
    scenario: Scenario
    host: str | None = None
    out_root: Path = RESULTS_DIR
    time_scale: float = 1.0
    tokens_file: str | None = None
    allow_hosts: tuple[str, ...] = ()
    show_progress: bool = True
    gate_stages: bool = True
    slo: str | None = None  # overrides the scenario's SLO set
    target_profile: str | None = None  # overrides the scenario's target profile
    workers: int = 0  # local worker processes; 0 with no expect_workers: one process, no master
    expect_workers: int = 0  # workers (local or remote) to wait for before stage 1; default: `workers`
    master_bind: str | None = None  # HOST:PORT the master listens on; default: loopback, a free port
    worker_timeout_s: float = 60.0
    on_worker_loss: str = "continue"  # or "abort"
    web_port: int | None = None  # Locust's own web UI on loopback, for live charts (the shape still drives)
    scrape: bool = True  # scrape the profile's /metrics during the run (--no-scrape: off)
    scrape_interval_s: float | None = None  # overrides the scenario's and the profile's interval
    scrape_all: bool = False  # keep every sample in telemetry.csv, not only those the analysis uses
    request_timeout_s: float | None = None  # --request-timeout: beats the scenario's, which beats the profile's
    connect_timeout_s: float | None = None


@dataclass
class RunOutcome:
    folder: Path
    status: str
    stop_reason: str


def live_gate(slo: str, stop_on_failed_stage: bool) -> LiveGate:
    """The SLO set's stage gate (analysis/gate.py, the runner's one door into analysis); a mistake in the SLO file
    raises SloError (one line) before any request."""
    from analysis.gate import LiveGate

    return LiveGate.load(slo, stop_on_failed_stage)


def user_classes_for(mix: dict[str, float]) -> list[type[User]]:
    """The entry locustfile's classes weighted by the scenario's mix. Each run gets subclasses of its own, so
    one run's weights never leak into the next (or into plain `locust -f` in the same process)."""
    from locustfiles.medianest import USER_CLASSES

    total = sum(mix.values())
    return [type(USER_CLASSES[kind].__name__, (USER_CLASSES[kind],), {"weight": max(1, round(1000 * weight / total))})
            for kind, weight in mix.items() if weight > 0]


def timeout_layers(flag_s: float | None, scenario_s: float | None) -> tuple[float, str]:
    """One timeout's value and where it comes from, by the one precedence rule: the command-line flag, then the
    scenario, then (0 here) the target profile's, which resolve_settings applies for `run` and `locust -f` alike.
    A flag of 0 means the layers below, as the option's 0 does."""
    if flag_s:
        return flag_s, "flag"
    if scenario_s:
        return scenario_s, "scenario"
    return 0.0, "target profile"


def harness_options(scenario: Scenario, tokens_file: str | None, allowed_hosts: tuple[str, ...],
                    request_timeout_s: float | None = None, connect_timeout_s: float | None = None) -> HarnessOptions:
    """The users' options from the scenario and the command line; what neither sets comes from the options'
    environment variables or defaults, as for plain `locust -f`. A timeout neither flag nor scenario sets stays 0:
    the target profile's then applies."""
    options = HarnessOptions.given()
    return replace(
        options,
        target_profile=scenario.target_profile,
        think_min=scenario.think_time.min_s,
        think_max=scenario.think_time.max_s,
        request_timeout=timeout_layers(request_timeout_s, scenario.timeouts.request_s)[0],
        connect_timeout=timeout_layers(connect_timeout_s, scenario.timeouts.connect_s)[0],
        socket_session_s=scenario.socket_session_s or options.socket_session_s,
        api_ttfb=options.api_ttfb if scenario.api_ttfb is None else scenario.api_ttfb,
        allow_host=",".join(allowed_hosts) or options.allow_host,
        tokens_file=tokens_file or options.tokens_file,
    )


def locust_options(host: str, options: HarnessOptions) -> Namespace:
    """Locust's parsed options for a headless run of `host` (the shape's end then quits the runner). The users
    take their settings from the runner (hand_to_users), not from here: the harness's options are copied in only
    so that what Locust shows (its web UI) and forwards to workers says the same."""
    parsed = get_parser(default_config_files=[]).parse_args(["--headless", "-H", host])
    vars(parsed).update(asdict(options))
    return parsed


class ResultsFolderError(InputError):
    """The results folder cannot be made where the user asked: one line, before any request."""


def results_folder(out_root: Path, scenario_name: str) -> Path:
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    folder = out_root / f"{stamp}-{scenario_name}"
    suffix = 1
    while folder.exists():
        suffix += 1
        folder = out_root / f"{stamp}-{scenario_name}-{suffix}"
    try:
        folder.mkdir(parents=True)
    except OSError as error:
        raise ResultsFolderError(f"--out {out_root}: cannot create {folder.name} in it ({error.strerror or error}); "
                                 "expected a writable folder") from None
    return folder


def without_credentials(url: str) -> str:
    """The URL as it may be written down: no user, password, query or fragment."""
    parts = urlsplit(url)
    netloc = parts.netloc.rsplit("@", 1)[-1]
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def git_commit() -> str | None:
    try:
        result = subprocess.run(["git", "rev-parse", "--verify", "-q", "HEAD"], cwd=REPO_ROOT, capture_output=True,
                                text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip() if result.returncode == 0 else None


def internal_error(where: str, error: BaseException) -> str:
    """The stop reason of a run ended by a harness bug: one line, redacted, never blamed on the target."""
    message = redact(" ".join(str(error).split()))[:300]
    return f"internal error in {where}: {type(error).__name__}: {message}" if message else \
        f"internal error in {where}: {type(error).__name__}"


def _iso(epoch: float | None) -> str | None:
    return datetime.fromtimestamp(epoch, UTC).isoformat() if epoch else None


class ScenarioRun:
    """Owns one run: the Locust environment, the recorder, the shape, the results folder and its flushing.
    Everything a user can get wrong is checked in the constructor, before a folder or a request exists."""

    def __init__(self, request: RunRequest):
        self.request = request
        scenario = request.scenario.scaled(request.time_scale)
        if request.target_profile:
            load_named(TARGET_PROFILE, request.target_profile)
            scenario = replace(scenario, target_profile=request.target_profile)
        self.scenario = replace(scenario, slo=request.slo or scenario.slo)
        self.gate = live_gate(self.scenario.slo, self.scenario.stop_on_failed_stage)
        self.host = (request.host or self.scenario.host).rstrip("/")
        self.allowed_hosts = self.scenario.allowed_hosts + request.allow_hosts
        check_host(self.host, self.allowed_hosts, "--host" if request.host else self.scenario.source)
        self.user_classes = user_classes_for(self.scenario.mix)
        self.options = harness_options(self.scenario, request.tokens_file, self.allowed_hosts,
                                       request.request_timeout_s, request.connect_timeout_s)
        self.settings = resolve_settings(self.options)  # a bad option, token file or target profile stops here
        if self.settings.profile.frontend_url:
            check_host(self.settings.profile.frontend_url, self.allowed_hosts, FRONTEND_SOURCE)
        scrape = scrape_config(self.settings.profile, self.host, self.allowed_hosts,
                               request.scrape_interval_s or self.scenario.scrape_interval_s,
                               request.scrape_all) if request.scrape else None
        self.browsers: BrowserFleet | None = None
        self.browsers_skipped = ""

        self.expected_workers = request.expect_workers or request.workers
        if self.expected_workers and any(stage.is_open for stage in self.scenario.stages):
            raise DistributedError(f"{self.scenario.source}: stages: open-model stages (rate:) run on one process; "
                                   "expected no --workers/--expect-workers with them (their arrival schedule is not "
                                   "shared between workers yet)")
        self.master_bind = parse_address(request.master_bind or "127.0.0.1:0", "--master-bind") if self.expected_workers else None
        self.master: Master | None = None
        self.generator = GeneratorLog()
        self.recorder = Recorder()
        self.scraper = Scraper(scrape, self.recorder) if scrape else None
        self.arrivals = ArrivalSchedule()
        self.shape = StagedShape(self.scenario.stages, self.recorder, self._judge_stage if request.gate_stages else None,
                                 self.arrivals)
        self.progress = Progress(self.scenario, enabled=request.show_progress)
        self.deadline_s = self.scenario.planned_duration_s() * DEADLINE_FACTOR + DEADLINE_SLACK_S
        self.commit = git_commit()
        self.status, self.interrupted_by, self.generator_saturated = "running", "", False
        self.locust_requests: int | None = None
        self.folder = results_folder(request.out_root, self.scenario.name)

    def execute(self) -> RunOutcome:
        environment = Environment(user_classes=self.user_classes, shape_class=self.shape, host=self.host,
                                  parsed_options=locust_options(self.host, self.options), events=locust.events)
        hand_to_users(environment, self.settings)
        vars(environment)["arrivals"] = self.arrivals  # open-model stages' users take their pace from it
        runner, local_workers = self._runner(environment), None
        events = environment.events
        events.request.add_listener(self.recorder.on_request)
        backoff_event(events).add_listener(self.recorder.on_backoff)
        events.spawning_complete.add_listener(self.shape.mark_steady_if_reached)
        self.recorder.listeners.append(self._phase_began)
        handlers = [gevent.signal_handler(signum, self._interrupt, signum) for signum in (signal.SIGINT, signal.SIGTERM)]
        probe = LoopProbe()
        ticker = web_ui = scraping = None
        try:
            if self.master is not None:
                local_workers = self._join_workers(runner)
            if self.request.web_port is not None:
                # Locust's UI re-parses sys.argv as a `locust` command line on every page; ours is not one
                argv, sys.argv = sys.argv, sys.argv[:1]
                web_ui = environment.create_web_ui("127.0.0.1", self.request.web_port)
            ticker = gevent.spawn(self._tick_every_second, runner, probe)
            scraping = gevent.spawn(self.scraper.run) if self.scraper else None  # the master only: workers never scrape
            self._write_run_info()
            events.init.fire(environment=environment, runner=runner, web_ui=web_ui)
            self.browsers = self._browser_fleet(environment)
            if self.browsers is not None:
                self.browsers.warm_up(self.scenario.stages[0].browsers)
            poll_the_shape_finely(runner)
            runner.start_shape()
            self._wait_for_the_end(runner)
        finally:
            if self.master is not None:
                self.master.collect_final_reports()
            runner.quit()
            if web_ui is not None:
                web_ui.stop()
                sys.argv = argv
            if ticker is not None:
                ticker.kill()
            probe.stop()
            if scraping is not None:
                scraping.kill()
            if self.browsers is not None:
                self.browsers.close()
            for handler in handlers:
                handler.cancel()
            events.request.remove_listener(self.recorder.on_request)
            backoff_event(events).remove_listener(self.recorder.on_backoff)
            events.spawning_complete.remove_listener(self.shape.mark_steady_if_reached)
            self.recorder.listeners.remove(self._phase_began)
            if self.master is not None:
                self.master.detach()
            if local_workers is not None:
                local_workers.stop()
            if ticker is not None:
                self._finish(runner)
        return RunOutcome(self.folder, self.status, self._stop_reason())

    def _browser_fleet(self, environment: Environment) -> BrowserFleet | None:
        """Browser users when a stage asks for them and Chromium is there; without Chromium one line says
        they were skipped, and the run goes on (their criteria are then NO_DATA)."""
        if not any(stage.browsers for stage in self.scenario.stages):
            return None
        executable, setting = chromium_executable()
        if executable is None:
            self.browsers_skipped = (f"browsers skipped: no Chromium executable {setting!r} on this machine "
                                     f"(install Debian's chromium package, or set {EXECUTABLE_ENV})")
            print(self.browsers_skipped, file=sys.stderr, flush=True)
            return None
        settings = browser_settings(self.settings, self.host, self.allowed_hosts, executable)
        return BrowserFleet(settings, environment.events.request.fire)

    def _stage_browsers(self) -> int:
        """The current stage's browsers; before the first stage (setup), the first stage's, warming up."""
        return self.scenario.stages[max(self.recorder.position.stage, 1) - 1].browsers

    def _runner(self, environment: Environment) -> Any:
        if self.master_bind is None:
            return environment.create_local_runner()
        host, port = self.master_bind
        runner = environment.create_master_runner(host, port or free_port(host))
        self.master = Master(runner, self.recorder, self.generator, self._worker_setup(), self.expected_workers)
        return runner

    def _join_workers(self, runner: Any) -> LocalWorkers | None:
        """Start the local workers and wait for every expected one; with fewer the run does not start (the empty
        results folder goes) and DistributedError says so in one line."""
        local = LocalWorkers(self.request.workers, f"127.0.0.1:{runner.master_bind_port}") if self.request.workers else None
        assert self.master is not None
        try:
            self.master.wait_for_workers(self.request.worker_timeout_s)
        except DistributedError:
            if local is not None:
                local.stop(grace_s=0)
            shutil.rmtree(self.folder, ignore_errors=True)
            raise
        return local

    def _worker_setup(self) -> dict[str, Any]:
        """What workers' users need, sent by the master (tokens: each worker gets only its own block)."""
        profile = resolve_named_file(self.scenario.target_profile, TARGET_PROFILES_DIR)
        options = {name: value for name, value in asdict(self.options).items()
                   if name not in ("target_profile", "tokens_file", "tokens_env")}
        return {"options": options, "profile_yaml": profile.read_text(), "host": self.host,
                "allowed_hosts": list(self.allowed_hosts), "deadline_s": self.deadline_s + 60,
                "tokens": self.settings.tokens.tokens if self.settings.tokens is not None else ()}

    def _wait_for_the_end(self, runner: Any) -> None:
        """Until the shape ends, a signal arrives, the shape dies or the deadline passes: never forever.
        (The shape's last tick quits the runner, greenlets included, so the shape is watched, not the runner.)"""
        started = time.monotonic()
        while self.shape.stop_reason is None and not self.interrupted_by:
            gevent.sleep(0.2)
            if runner.shape_greenlet is None or runner.shape_greenlet.dead:
                error = getattr(runner.shape_greenlet, "exception", None)
                self.shape.stop(self.shape.stop_reason or (internal_error("the stage shape", error) if error else
                                                           "the stage shape stopped unexpectedly (see the log)"))
            elif time.monotonic() - started > self.deadline_s:
                self.shape.stop(f"deadline: still running {self.deadline_s:.0f} s after the start "
                                f"(plan {self.scenario.planned_duration_s():.0f} s)")

    def _judge_stage(self, stage: int) -> str | None:
        """The shape's gate after each stage: why the run must stop, or None. For `for:` criteria the series is
        flushed first, so the gate reads every second of the stage from timeseries.csv."""
        timeseries = None
        if self.gate.needs_series:
            self.recorder.write(self.folder)
            timeseries = self.folder / "timeseries.csv"
        return self.gate.decide(stage, self.recorder.live_snapshot(stage), timeseries,
                                self.generator.limited_reason(stage), self.generator.lag_p95_ms(stage))

    def _phase_began(self, _position: object) -> None:
        """A stage's ramp or steady phase began: run.json says so at once, not at the next flush (up to
        FLUSH_EVERY_S later), so that a results folder always names the stage and phase running. Only run.json,
        which is small; the other files wait for the flush. A failed write is logged: the next flush retries,
        and fails the run if it fails too."""
        try:
            self._write_run_info()
        except Exception:  # noqa: BLE001 - a listener of the shape's transition must not break the transition
            log.exception("run.json could not be rewritten at the start of a phase")

    def _interrupt(self, signum: int) -> None:
        self.interrupted_by = signal.Signals(signum).name

    def _tick_every_second(self, runner: Any, probe: LoopProbe) -> None:
        """The ticker must not die alone: a run that no longer records or flushes would go on loading until
        killed. Any error stops the run (aborted, the error in stop_reason); _finish writes complete results."""
        try:
            self._tick_forever(runner, probe)
        except Exception as error:  # noqa: BLE001 - whatever it is, the run must end, not hang
            log.exception("the once-a-second ticker failed")
            self.shape.stop(internal_error("the once-a-second ticker", error))

    def _tick_forever(self, runner: Any, probe: LoopProbe) -> None:
        next_tick = time.monotonic()
        next_flush = next_tick + FLUSH_EVERY_S
        while True:
            # on a fixed grid, so that a tick's own work does not push the next one later; a loop that fell
            # behind ticks at once and goes on from there (the row then records its longer interval_s)
            next_tick = max(next_tick + 1.0, time.monotonic())
            gevent.sleep(next_tick - time.monotonic())
            self.recorder.close_second(runner.user_count)
            if self.browsers is not None:
                self.browsers.scale(self._stage_browsers())
            self._sample_health(runner, probe)
            if self.master is not None:
                self._check_workers()
            self.progress.update(self.recorder, self.shape, runner.user_count, self.arrivals)
            if time.monotonic() >= next_flush:
                self._write_results()
                next_flush = time.monotonic() + FLUSH_EVERY_S

    def _sample_health(self, runner: Any, probe: LoopProbe) -> None:
        position = self.recorder.position
        self.generator.add(MASTER if self.master is not None else "local", position.stage, position.phase,
                           runner.user_count, probe.sample())
        self.generator_saturated = self.generator_saturated or any(
            bool(getattr(runner, flag, False)) for flag in ("cpu_warning_emitted", "worker_cpu_warning_emitted"))

    def _check_workers(self) -> None:
        assert self.master is not None
        lost = self.master.tick()
        if lost and self.request.on_worker_loss == "abort":
            names = ", ".join(f"worker {record.index + 1}" for record in lost)
            self.shape.stop(f"lost {names} at stage {lost[0].lost_stage} (--on-worker-loss abort)")

    def _write_results(self) -> None:
        self.recorder.write(self.folder)
        self.generator.write(self.folder)
        if self.scraper:
            self.scraper.write(self.folder)
        self._write_run_info()

    def _finish(self, runner: Any) -> None:
        self.recorder.close_second(runner.user_count)
        self.recorder.finish()
        if self.interrupted_by:
            self.status = RunStatus.INTERRUPTED
        elif self.shape.stop_reason == "completed":
            self.status = run_status(RunStatus.COMPLETED, self.master)
        else:
            self.status = RunStatus.ABORTED
        self.locust_requests = runner.stats.total.num_requests
        self._write_results()
        self.progress.close()

    def _stop_reason(self) -> str:
        if self.interrupted_by:
            return f"interrupted by {self.interrupted_by}"
        reason = self.shape.stop_reason or "stopped before the shape finished"
        if self.status == RunStatus.DEGRADED and self.master is not None:
            reason += "; lost " + ", ".join(f"worker {record.index + 1} at stage {record.lost_stage} ({record.lost_why})"
                                            for record in self.master.lost)
        return reason

    def _run_info(self) -> dict[str, Any]:
        scenario = self.scenario.to_dict()
        scenario["host"] = without_credentials(self.host)  # as run: the host every client connected to
        return {
            "scenario": scenario,
            "scenario_name": self.scenario.name,
            "scenario_file": self.scenario.source,
            "host": without_credentials(self.host),
            "target_profile": self.scenario.target_profile,
            "frontend_url": without_credentials(self.settings.profile.frontend_url or self.host),
            "timeouts": self._timeouts_in_force(),
            "slo": self.scenario.slo,
            "time_scale": self.request.time_scale,
            "harness_version": medianest_load.__version__,
            "locust_version": locust.__version__,
            "python_version": sys.version.split()[0],
            "git_commit": self.commit,
            "status": self.status,
            "stop_reason": self._stop_reason() if self.status != "running" else None,
            "generator_cpu_saturated": self.generator_saturated or any(
                self.generator.limited_reason(stage["index"]) for stage in self.recorder.stage_boundaries()),
            "generator_thresholds": generator_thresholds(),
            "locust_requests": self.locust_requests,
            **(self.master.run_info() if self.master is not None else {}),
            "telemetry": ({**self.scraper.summary(), "url": without_credentials(self.scraper.config.url)}
                          if self.scraper else {"enabled": False}),
            "browsers": (self.browsers.info() if self.browsers is not None
                         else {"skipped": self.browsers_skipped} if self.browsers_skipped else None),
            "started_at": _iso(self.recorder.started_at),
            "ended_at": _iso(self.recorder.spans[-1].end),
            "stages": [
                {**stage, "spawn_rate": self.shape.spawn_rates[stage["index"] - 1],
                 "planned_hold_s": self.scenario.stages[stage["index"] - 1].hold_s,
                 **self.generator.stage_summary(stage["index"]),
                 "lost_workers": [f"worker {record.index + 1}" for record in (self.master.lost if self.master else [])
                                  if record.lost_stage == stage["index"]],
                 **({"open_model": self.arrivals.stage_counts(stage["index"])}
                    if self.scenario.stages[stage["index"] - 1].is_open else {})}
                for stage in self.recorder.stage_boundaries()
            ],
        }

    def _timeouts_in_force(self) -> dict[str, Any]:
        """The timeouts the users applied and which layer set each (flag, scenario or target profile)."""
        request_from = timeout_layers(self.request.request_timeout_s, self.scenario.timeouts.request_s)[1]
        connect_from = timeout_layers(self.request.connect_timeout_s, self.scenario.timeouts.connect_s)[1]
        return {"request_s": self.settings.request_timeout, "request_from": request_from,
                "connect_s": self.settings.connect_timeout, "connect_from": connect_from}

    def _write_run_info(self) -> None:
        path = self.folder / "run.json"
        path.with_suffix(".tmp").write_text(json.dumps(self._run_info(), indent=2))
        path.with_suffix(".tmp").replace(path)
