"""The runner: one scenario, headless, stage by stage, into one results folder.

Import this module before ssl, httpx or socketio are imported anywhere: locust monkey-patches gevent.
"""

from __future__ import annotations

import locust  # noqa: F401  (first: gevent monkey-patching)

import json
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import gevent
from locust import User
from locust.argument_parser import get_parser
from locust.env import Environment

import medianest_load
from locustfiles.common import resolve_settings
from medianest_load.host_guard import check_host
from medianest_load.paths import REPO_ROOT, RESULTS_DIR
from medianest_load.progress import Progress
from medianest_load.recorder import Recorder
from medianest_load.scenario import Scenario
from medianest_load.shape import StageGate, StagedShape

FLUSH_EVERY_S = 10.0


def slo_stage_gate(scenario: Scenario, recorder: Recorder) -> StageGate:
    """Judge each finished stage against the scenario's SLO set: a failed criterion marked `abort` always stops
    the run; with `stop_on_failed_stage` any failed criterion does (the audit moves on only after a pass)."""
    import pandas as pd

    from analysis.criteria import FAIL, abort_reason, judge_stage
    from analysis.slo import load_slo

    slo = load_slo(scenario.slo)

    def gate(stage: int) -> str | None:
        summary = pd.DataFrame(recorder.summary_rows())
        if summary.empty:
            return None
        histograms = {(position.stage, position.phase, endpoint): cell.histogram
                      for (position, endpoint), cell in recorder.cells.items()}
        results = judge_stage(summary, slo, stage, histograms)
        if scenario.stop_on_failed_stage:
            failed = [result.criterion.name for result in results if result.status == FAIL]
            if failed:
                return f"stage {stage} failed {', '.join(failed)} (stop_on_failed_stage)"
        return abort_reason(results)

    return gate


@dataclass(frozen=True)
class RunRequest:
    scenario: Scenario
    host: str | None = None
    out_root: Path = RESULTS_DIR
    time_scale: float = 1.0
    tokens_file: str | None = None
    allow_hosts: tuple[str, ...] = ()
    show_progress: bool = True
    gate_stages: bool = True


@dataclass
class RunOutcome:
    folder: Path
    status: str
    stop_reason: str
    run_info: dict[str, Any] = field(default_factory=dict)


def user_classes_for(mix: dict[str, float]) -> list[type[User]]:
    """The entry locustfile's classes weighted by the scenario's mix. Each run gets subclasses of its own, so
    one run's weights never leak into the next (or into plain `locust -f` in the same process)."""
    from locustfiles.medianest import USER_CLASSES

    total = sum(mix.values())
    return [type(USER_CLASSES[kind].__name__, (USER_CLASSES[kind],), {"weight": max(1, round(1000 * weight / total))})
            for kind, weight in mix.items() if weight > 0]


def locust_options(scenario: Scenario, host: str, tokens_file: str | None) -> Any:
    """Parsed options as `locust -f` would build them, with the harness's own options from the scenario."""
    parser = get_parser(default_config_files=[])
    args = ["--headless", "-H", host, "--target-profile", scenario.target_profile,
            "--think-min", str(scenario.think_time.min_s), "--think-max", str(scenario.think_time.max_s),
            "--request-timeout", str(scenario.timeouts.request_s), "--connect-timeout", str(scenario.timeouts.connect_s)]
    if tokens_file:
        args += ["--tokens-file", tokens_file]
    return parser.parse_args(args)


def results_folder(out_root: Path, scenario_name: str) -> Path:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    folder = out_root / f"{stamp}-{scenario_name}"
    suffix = 1
    while folder.exists():
        suffix += 1
        folder = out_root / f"{stamp}-{scenario_name}-{suffix}"
    folder.mkdir(parents=True)
    return folder


def without_credentials(url: str) -> str:
    parts = urlsplit(url)
    if parts.username or parts.password:
        netloc = parts.hostname + (f":{parts.port}" if parts.port else "")
        return urlunsplit(parts._replace(netloc=netloc))
    return url


def git_commit() -> str | None:
    try:
        result = subprocess.run(["git", "rev-parse", "--verify", "-q", "HEAD"], cwd=REPO_ROOT, capture_output=True,
                                text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip() if result.returncode == 0 else None


def _iso(epoch: float | None) -> str | None:
    return datetime.fromtimestamp(epoch, timezone.utc).isoformat() if epoch else None


class ScenarioRun:
    """Owns one run: the Locust environment, the recorder, the shape, the results folder and its flushing."""

    def __init__(self, request: RunRequest):
        self.request = request
        self.scenario = request.scenario.scaled(request.time_scale)
        self.host = (request.host or self.scenario.host).rstrip("/")
        check_host(self.host, self.scenario.allowed_hosts + request.allow_hosts,
                   self.scenario.source or self.scenario.name)
        self.recorder = Recorder()
        gate = slo_stage_gate(self.scenario, self.recorder) if request.gate_stages else None
        self.shape = StagedShape(self.scenario.stages, self.recorder, gate)
        self.folder = results_folder(request.out_root, self.scenario.name)
        self.status, self.interrupted_by = "running", ""
        self.progress = Progress(self.scenario, enabled=request.show_progress)
        self.commit = git_commit()

        self.user_classes = user_classes_for(self.scenario.mix)
        self.options = locust_options(self.scenario, self.host, request.tokens_file)
        resolve_settings(self.options)  # a bad option or target profile stops here, before any request

    def execute(self) -> RunOutcome:
        user_classes, options = self.user_classes, self.options
        environment = Environment(user_classes=user_classes, shape_class=self.shape, host=self.host,
                                  parsed_options=options, events=locust.events)
        runner = environment.create_local_runner()
        events = environment.events
        events.request.add_listener(self.recorder.on_request)
        events.spawning_complete.add_listener(self.shape.mark_steady_if_reached)
        handlers = [gevent.signal_handler(signum, self._interrupt, signum) for signum in (signal.SIGINT, signal.SIGTERM)]
        ticker = gevent.spawn(self._tick_every_second, runner)
        try:
            self._write_run_info()
            events.init.fire(environment=environment, runner=runner, web_ui=None)
            runner.start_shape()
            # the shape's last tick quits the runner (greenlets included), so watch the shape, not the runner
            while self.shape.stop_reason is None and not self.interrupted_by:
                gevent.sleep(0.2)
        finally:
            runner.quit()
            ticker.kill()
            for handler in handlers:
                handler.cancel()
            events.request.remove_listener(self.recorder.on_request)
            events.spawning_complete.remove_listener(self.shape.mark_steady_if_reached)
            self._finish(runner.user_count)
        return RunOutcome(self.folder, self.status, self._stop_reason(), self._run_info())

    def _interrupt(self, signum: int) -> None:
        self.interrupted_by = signal.Signals(signum).name

    def _tick_every_second(self, runner: Any) -> None:
        next_flush = time.monotonic() + FLUSH_EVERY_S
        while True:
            gevent.sleep(1.0)
            self.recorder.close_second(runner.user_count)
            self.progress.update(self.recorder, self.shape, runner.user_count)
            if time.monotonic() >= next_flush:
                self.recorder.write(self.folder)
                self._write_run_info()
                next_flush = time.monotonic() + FLUSH_EVERY_S

    def _finish(self, users: int) -> None:
        self.recorder.close_second(users)
        self.recorder.finish()
        if self.interrupted_by:
            self.status = "interrupted"
        elif self.shape.stop_reason == "completed":
            self.status = "completed"
        else:
            self.status = "aborted"
        self.recorder.write(self.folder)
        self._write_run_info()
        self.progress.close()

    def _stop_reason(self) -> str:
        if self.interrupted_by:
            return f"interrupted by {self.interrupted_by}"
        return self.shape.stop_reason or "stopped before the shape finished"

    def _run_info(self) -> dict[str, Any]:
        scenario = self.scenario.to_dict()
        scenario["host"] = without_credentials(scenario["host"])
        return {
            "scenario": scenario,
            "scenario_name": self.scenario.name,
            "scenario_file": self.scenario.source,
            "host": without_credentials(self.host),
            "target_profile": self.scenario.target_profile,
            "slo": self.scenario.slo,
            "time_scale": self.request.time_scale,
            "harness_version": medianest_load.__version__,
            "locust_version": locust.__version__,
            "python_version": sys.version.split()[0],
            "git_commit": self.commit,
            "status": self.status,
            "stop_reason": self._stop_reason() if self.status != "running" else None,
            "started_at": _iso(self.recorder.started_at),
            "ended_at": _iso(self.recorder.spans[-1].end),
            "stages": [
                {**stage, "spawn_rate": self.shape.spawn_rates[stage["index"] - 1],
                 "planned_hold_s": self.scenario.stages[stage["index"] - 1].hold_s}
                for stage in self.recorder.stage_boundaries()
            ],
        }

    def _write_run_info(self) -> None:
        path = self.folder / "run.json"
        path.with_suffix(".tmp").write_text(json.dumps(self._run_info(), indent=2))
        path.with_suffix(".tmp").replace(path)
