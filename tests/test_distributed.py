"""Scale-out end to end: a real Locust master with real worker processes against the reference target, exact
merged results, lost workers, Ctrl-C at the master, workers joining from "elsewhere" (loopback), and a starved
generator that must never be blamed on MediaNest."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from xml.etree import ElementTree

import gevent
import httpx
import pandas as pd
import psutil
import pytest
import yaml
from busy_loop import busy_spells
from click.testing import CliRunner
from verdicts import assert_exit_is_the_verdicts

from medianest_load.cli import main, run_exit_code
from medianest_load.distributed import free_port, token_block
from medianest_load.inputs import load_named
from medianest_load.paths import SCENARIOS_DIR
from medianest_load.results_format import GENERATOR_COLUMNS, NOT_REQUESTS, SUMMARY_COLUMNS, TIMESERIES_COLUMNS
from medianest_load.run import RunRequest, ScenarioRun
from medianest_load.scenario import SCENARIO
from reference_target.launcher import start_target

MEDIANEST_LOAD = str(Path(sys.executable).with_name("medianest-load"))
RESULT_FILES = {"run.json", "summary.csv", "timeseries.csv", "histograms.json", "failures.csv", "generator.csv"}


@pytest.fixture(scope="module")
def target():
    started = start_target(["--profile", "baseline", "--seed", "9"])
    yield started
    started.stop()


def scenario_file(folder: Path, stages: list[dict], **changes) -> Path:
    scenario = yaml.safe_load((SCENARIOS_DIR / "smoke.yaml").read_text())
    scenario.update({"stages": stages, "mix": {"health": 1, "dashboard": 1, "media": 1, "auth": 1}, **changes})
    path = folder / "scenario.yaml"
    path.write_text(yaml.safe_dump(scenario))
    return path


def read_run(folder: Path) -> tuple[dict, pd.DataFrame]:
    return json.loads((folder / "run.json").read_text()), pd.read_csv(folder / "summary.csv")


def wait_for(condition, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def workers_of(master: subprocess.Popen) -> list[psutil.Process]:
    return [child for child in psutil.Process(master.pid).children(recursive=True) if "worker" in child.cmdline()]


def gone(process: psutil.Process) -> bool:
    try:
        return process.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def steady_in_stage(out: Path, stage: int) -> bool:
    found = list(out.glob("*/run.json"))
    if not found:
        return False
    try:
        stages = json.loads(found[0].read_text())["stages"]
    except (ValueError, KeyError):
        return False
    return len(stages) >= stage and stages[stage - 1]["steady_start"] is not None


def test_two_local_workers_merge_exactly_into_the_usual_results_folder(target, tmp_path):
    request = RunRequest(scenario=load_named(SCENARIO, "smoke"), host=target.url, out_root=tmp_path, time_scale=0.3,
                         show_progress=False, workers=2)
    outcome = ScenarioRun(request).execute()

    assert outcome.status == "completed", outcome.stop_reason
    assert RESULT_FILES <= {path.name for path in outcome.folder.iterdir()}
    run, summary = read_run(outcome.folder)
    series = pd.read_csv(outcome.folder / "timeseries.csv")
    assert list(summary.columns) == list(SUMMARY_COLUMNS) and list(series.columns) == list(TIMESERIES_COLUMNS)
    # three independent counts of the same samples: each worker's own listener, Locust's stats pipeline, and
    # the merged deltas (summary and the per-second series)
    workers = run["workers"]
    assert [worker["process"] for worker in workers] == ["worker 1", "worker 2"]
    assert all(worker["counted"] > 0 and worker["final_report"] for worker in workers), workers
    total = summary.requests.sum()
    assert total == sum(worker["counted"] for worker in workers) == sum(worker["requests"] for worker in workers)
    assert total == run["locust_requests"]
    # the ALL row counts requests, not the transactions that span them
    assert series[series.endpoint == "ALL"].requests.sum() == summary[~summary.request_type.isin(NOT_REQUESTS)].requests.sum()
    # attributed to the stages the master declared, with exact merged percentiles
    steady = summary[summary.phase == "steady"]
    assert set(steady.stage) == {1, 2} and set(steady.users) == {6, 12}
    assert (steady.p50_ms <= steady.p95_ms).all()
    assert (steady.max_ms >= steady.p99_ms * 0.999 - 0.001).all()  # histogram floor: 1 us
    assert {"GET", "POST", "SIO", "PAGE"} <= {endpoint.split(" ", 1)[0] for endpoint in summary.endpoint}
    # generator health of every process, per second and per stage
    generator = pd.read_csv(outcome.folder / "generator.csv")
    assert list(generator.columns) == list(GENERATOR_COLUMNS)
    assert set(generator.process) == {"master", "worker 1", "worker 2"}
    assert (generator.cpu_pct >= 0).all() and (generator.loop_lag_p99_ms >= generator.loop_lag_p50_ms).all()
    for stage in run["stages"]:
        assert isinstance(stage["generator_limited"], bool) and stage["lost_workers"] == []
        assert {"master", "worker 1", "worker 2"} == set(stage["generator"])
        # each worker's whole loop-lag histogram reached the master: the stage's figure is the worse worker's
        worker_lags = [stage["generator"][name]["loop_lag_p95_ms"] for name in ("worker 1", "worker 2")]
        assert all(lag > 0 for lag in worker_lags) and stage["generator_lag_p95_ms"] == max(worker_lags), stage


def test_a_starved_generator_is_inconclusive_and_never_blamed_on_medianest(target, tmp_path):
    scenario = scenario_file(tmp_path, [{"name": "flood", "users": 40, "ramp": "1s", "hold": "7s"}],
                             think_time={"min": "0s", "max": "0s"}, mix={"health": 1})
    hogging = gevent.spawn(busy_spells, 0.2, 0.01)  # starved: the CPU kept, yielded rarely
    try:
        outcome = ScenarioRun(RunRequest(scenario=load_named(SCENARIO, str(scenario)), host=target.url, out_root=tmp_path / "out",
                                         show_progress=False)).execute()
    finally:
        hogging.kill()
    run, summary = read_run(outcome.folder)
    (stage,) = run["stages"]
    assert stage["generator_limited"] is True and stage["generator_reason"].startswith("local: CPU ")
    assert run["generator_cpu_saturated"] is True and summary.requests.sum() > 0

    done = CliRunner().invoke(main, ["analyze", str(outcome.folder)])
    assert done.exit_code == 3, done.output
    banner = "the load generator was the bottleneck at stage 1 (local: CPU"
    assert done.stdout.splitlines()[1].startswith(f"INCONCLUSIVE: {banner}")
    verdict = json.loads((outcome.folder / "verdict.json").read_text())
    statuses = {criterion["name"]: criterion["status"] for criterion in verdict["criteria"]}
    assert verdict["verdict"] == "INCONCLUSIVE" and verdict["exit_code"] == 3
    assert statuses["API p95"] == statuses["API average response"] == "INCONCLUSIVE"
    assert statuses["API error rate"] in ("PASS", "WARN"), "errors are still MediaNest's"
    assert banner in (outcome.folder / "report.html").read_text()
    cases = {case.get("name"): case for case in ElementTree.parse(outcome.folder / "junit.xml").iter("testcase")}
    assert banner in cases["API p95"].find("skipped").get("message")
    assert run_exit_code(outcome, type("V", (), {"exit_code": verdict["exit_code"]})()) == 3


def workers_reported(out: Path) -> bool:
    """run.json (rewritten as each phase begins) shows samples from every worker."""
    run = json.loads(next(out.glob("*/run.json")).read_text())
    return len(run.get("workers", [])) == 2 and all(worker["requests"] > 0 for worker in run["workers"])


@pytest.mark.parametrize("on_loss", ["continue", "abort"])
def test_a_worker_killed_mid_stage_leaves_complete_results(target, tmp_path, on_loss):
    # run.json, rewritten as each phase begins, shows stage 2's steady phase and samples of both workers; by then
    # each worker has reported (every second) during stage 2's 2-s ramp, so the victim's last report is of stage 2.
    # The kill lands there. The master learns of it from missed heartbeats (about 3 s): to abort in stage 2, stage
    # 2 outlasts them; to go on, what is left of the run does (the lost stage is the last report's either way).
    scenario = scenario_file(tmp_path, [{"name": "warm", "users": 6, "ramp": "1s", "hold": "1s"},
                                        {"name": "first", "users": 8, "ramp": "2s",
                                         "hold": "8s" if on_loss == "abort" else "3s"},
                                        {"name": "second", "users": 8, "ramp": "1s", "hold": "3s"}])
    out = tmp_path / "out"
    master = subprocess.Popen([MEDIANEST_LOAD, "run", str(scenario), "--host", target.url, "--out", str(out),
                               "--workers", "2", "--on-worker-loss", on_loss, "--quiet", "--no-report"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: steady_in_stage(out, 2) and workers_reported(out), 60, "stage 2 with samples of both workers")
        victim = workers_of(master)[1]
        victim.send_signal(signal.SIGKILL)
        killed_at = time.time()
        stdout, stderr = master.communicate(timeout=90)
    finally:
        master.kill()
    (folder,) = list(out.iterdir())
    assert_exit_is_the_verdicts(master.returncode, folder, stderr)
    run, summary = read_run(folder)
    lost = [worker for worker in run["workers"] if worker["lost_at"]]
    assert len(lost) == 1 and lost[0]["lost_stage"] == 2 and lost[0]["lost_at"] >= killed_at
    assert run["stages"][1]["lost_workers"] == [lost[0]["process"]] and run["stages"][0]["lost_workers"] == []
    assert lost[0]["requests"] > 0, "what the lost worker reported before it died is kept"
    assert summary.requests.sum() == sum(worker["requests"] for worker in run["workers"])
    if on_loss == "abort":
        assert run["status"] == "aborted" and "--on-worker-loss abort" in run["stop_reason"]
        assert [stage["index"] for stage in run["stages"]] == [1, 2]
    else:
        assert run["status"] == "degraded" and [stage["index"] for stage in run["stages"]] == [1, 2, 3]
        assert run["stop_reason"] == f"completed; lost {lost[0]['process']} at stage 2 (missed its heartbeats)"
        survivor = next(worker for worker in run["workers"] if not worker["lost_at"])
        assert survivor["final_report"] and summary[summary.stage == 3].requests.sum() > 0
    assert (folder / "verdict.json").exists()


def test_ctrl_c_at_the_master_stops_every_worker_and_keeps_their_samples(target, tmp_path):
    # a short first stage: stage 2's start rewrites run.json, with what each worker has reported by then
    scenario = scenario_file(tmp_path, [{"name": "short", "users": 6, "ramp": "1s", "hold": "2s"},
                                        {"name": "long", "users": 6, "ramp": "1s", "hold": "60s"}])
    out = tmp_path / "out"
    master = subprocess.Popen([MEDIANEST_LOAD, "run", str(scenario), "--host", target.url, "--out", str(out),
                               "--workers", "2", "--quiet", "--no-report"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True)
    try:
        wait_for(lambda: steady_in_stage(out, 1) and workers_reported(out), 60, "samples of both workers")
        workers = workers_of(master)
        assert len(workers) == 2
        master.send_signal(signal.SIGINT)
        stopped = time.monotonic()
        wait_for(lambda: all(gone(worker) for worker in workers), 10, "every worker to exit")
        assert time.monotonic() - stopped <= 10
        stdout, stderr = master.communicate(timeout=90)
    finally:
        master.kill()
    assert master.returncode == 130, stderr
    (folder,) = list(out.iterdir())
    run, summary = read_run(folder)
    assert run["status"] == "interrupted" and run["stop_reason"] == "interrupted by SIGINT"
    assert all(worker["final_report"] and worker["requests"] > 0 for worker in run["workers"])
    assert summary.requests.sum() == sum(worker["counted"] for worker in run["workers"]) == run["locust_requests"]


def test_workers_started_elsewhere_join_a_master_that_waits_for_them(target, issue_tokens, tmp_path):
    tokens, tokens_file = issue_tokens(target.url, 4)
    scenario = scenario_file(tmp_path, [{"name": "only", "users": 6, "ramp": "1s", "hold": "3s"}])
    port, out = free_port(), tmp_path / "out"
    master = subprocess.Popen([MEDIANEST_LOAD, "run", str(scenario), "--host", target.url, "--out", str(out),
                               "--expect-workers", "2", "--master-bind", f"127.0.0.1:{port}", "--worker-timeout", "60",
                               "--tokens", str(tokens_file), "--quiet"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # run from another folder with no scenario: everything the users need comes from the master
    workers = [subprocess.Popen([MEDIANEST_LOAD, "worker", "--master", f"127.0.0.1:{port}"], cwd=tmp_path,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    try:
        stdout, stderr = master.communicate(timeout=120)
        for worker in workers:
            worker.communicate(timeout=20)
    finally:
        for process in (master, *workers):
            process.kill()
    assert all(worker.returncode == 0 for worker in workers)
    (folder,) = list(out.iterdir())
    assert_exit_is_the_verdicts(master.returncode, folder, stderr)
    run, summary = read_run(folder)
    assert run["status"] == "completed" and len(run["workers"]) == 2
    assert all(worker["requests"] > 0 for worker in run["workers"])
    assert summary.requests.sum() == sum(worker["requests"] for worker in run["workers"]) == run["locust_requests"]
    session = summary[summary.endpoint == "GET /api/v1/auth/session"]
    assert session.requests.sum() > 0 and session.failures.sum() == 0, "each worker's users used its tokens"
    for path in [*folder.rglob("*.csv"), *folder.rglob("*.json"), *folder.rglob("*.html")]:
        text = path.read_text()
        assert not any(token in text for token in tokens), path
    assert not any(token in stdout + stderr for token in tokens)


def test_too_few_workers_refuse_to_start_in_one_line(tmp_path):
    done = subprocess.run([MEDIANEST_LOAD, "run", "smoke", "--host", "http://127.0.0.1:9", "--out", str(tmp_path),
                           "--expect-workers", "2", "--worker-timeout", "1"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "error: only 0 of 2 workers joined the master within --worker-timeout 1 s; start more workers or wait longer"]
    assert list(tmp_path.iterdir()) == [], "no results folder for a run that never started"


def test_token_blocks_never_share_a_token():
    tokens = tuple(f"t{i}" for i in range(10))
    blocks = [token_block(tokens, index, 3) for index in range(3)]
    assert [len(block) for block in blocks] == [4, 4, 2]
    assert sum(blocks, ()) == tokens


def test_web_shows_locusts_own_live_view_on_loopback_while_the_stages_drive(target, tmp_path):
    port, out = free_port(), tmp_path / "out"
    # two short stages: the live view is seen in the first, and the shape still ends the run
    scenario = scenario_file(tmp_path, [{"name": "first", "users": 4, "ramp": "1s", "hold": "3s"},
                                        {"name": "second", "users": 6, "ramp": "1s", "hold": "1s"}])
    run = subprocess.Popen([MEDIANEST_LOAD, "run", str(scenario), "--host", target.url, "--out", str(out),
                            "--web", "--web-port", str(port), "--quiet", "--no-report"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen = {}

    def live() -> bool:
        try:
            stats = httpx.get(f"http://127.0.0.1:{port}/stats/requests", timeout=2).json()
        except (httpx.HTTPError, ValueError):
            return False
        seen.update(stats)
        return stats["user_count"] > 0 and any(row["num_requests"] > 0 for row in stats["stats"])

    try:
        wait_for(live, 60, "the web UI's live stats")
        page = httpx.get(f"http://127.0.0.1:{port}/", timeout=5)
        stdout, stderr = run.communicate(timeout=90)
    finally:
        run.kill()
    assert page.status_code == 200 and "locust" in page.text.lower()
    assert seen["state"] in ("spawning", "running"), stderr
    (folder,) = list(out.iterdir())
    assert_exit_is_the_verdicts(run.returncode, folder, stderr)
    assert json.loads((folder / "run.json").read_text())["status"] == "completed"


@pytest.mark.parametrize("args, expected", [
    (["run", "smoke", "--workers", "many"], "error: option --workers: got 'many', expected a number of processes 0-64 or 'auto'"),
    (["run", "smoke", "--workers", "2", "--master-bind", "127.0.0.1:http"],
     "error: option --master-bind: got '127.0.0.1:http', expected HOST:PORT (e.g. 127.0.0.1:5557)"),
    (["worker", "--master", "127.0.0.1:99999"],
     "error: option --master: got '127.0.0.1:99999', expected HOST:PORT (e.g. 127.0.0.1:5557)"),
], ids=["workers", "master-bind", "master"])
def test_bad_scale_out_options_get_one_line_and_exit_2(tmp_path, args, expected):
    # in process: each is refused while the command line is read, before a runner, a worker or a folder exists
    done = CliRunner().invoke(main, [*args, "--out", str(tmp_path)] if args[0] == "run" else args)
    assert done.exit_code == 2 and done.stderr.strip().splitlines() == [expected], done.output
    assert list(tmp_path.iterdir()) == []
