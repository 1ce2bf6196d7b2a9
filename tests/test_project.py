"""The capacity projection: the USL fit on synthetic ladders drawn from known sigma, kappa and lambda (written
through the recorder's own writer), its refusals as one line with exit 2, and a real ladder against the
reference target's knee profile end to end (run -> projection -> report)."""

import csv
import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import yaml
from click.testing import CliRunner, Result
from verdicts import assert_exit_is_the_verdicts

from analysis.load import load_run
from analysis.project import ProjectionError, ladder_input, project, usl
from analysis.project_report import to_document
from analysis.slo import SLO
from medianest_load.cli import main
from medianest_load.failures import HttpServerError
from medianest_load.inputs import load_named
from medianest_load.recorder import Recorder
from medianest_load.results_format import SCRAPE_METRIC, TELEMETRY_COLUMNS

MEDIANEST_LOAD = str(Path(sys.executable).with_name("medianest-load"))
REPO_ROOT = Path(__file__).resolve().parents[1]
THINK_S = 0.5
TRUE = np.array([5.0, 0.03, 0.0008])  # lambda, sigma, kappa: N* = sqrt(0.97 / 0.0008) = 34.8 users
LADDER = (4, 8, 16, 24, 32, 40, 48, 56, 64)


class Clock:
    def __init__(self, start: float) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now


def write_ladder(folder: Path, params: np.ndarray, users=LADDER, hold_s: int = 40, seed: int = 0,
                 error_rates: dict[int, float] | None = None, stage_extra: dict[int, dict] | None = None,
                 steady: bool = True, **run_info) -> Path:
    """A results folder of a closed-loop ladder whose throughput follows the USL exactly, plus Poisson noise
    per second; response times are gamma-distributed around Little's R(N) = N / X(N) - Z."""
    rng = np.random.default_rng(seed)
    clock = Clock(1_760_000_000.0)
    recorder = Recorder(clock=clock)
    stages = []
    for index, n in enumerate(users, start=1):
        rate = float(usl(n, params))
        mean_ms = max(n / rate - THINK_S, 0.001) * 1000
        phase = "steady" if steady else "ramp"
        recorder.enter(index, f"users-{n}", n, phase)
        start = clock.now
        for _ in range(hold_s):
            for value in rng.gamma(4.0, mean_ms / 4, rng.poisson(rate)):
                failed = rng.random() < (error_rates or {}).get(index, 0.0)
                recorder.on_request("GET", "/api/v1/dashboard/stats", value, 500, HttpServerError("HTTP 503") if failed else None)
            clock.now += 1.0
            recorder.close_second(n)
        stages.append({"index": index, "name": f"users-{n}", "users": n, "spawn_rate": float(n), "ramp_start": start,
                       "steady_start": start if steady else None, "steady_end": clock.now if steady else None,
                       "planned_hold_s": hold_s, **(stage_extra or {}).get(index, {})})
    recorder.finish()
    folder.mkdir(parents=True)
    recorder.write(folder)
    info = {"scenario": {"name": "synthetic", "think_time": {"min_s": THINK_S, "max_s": THINK_S}},
            "scenario_name": "synthetic", "slo": "staging-gate", "status": "completed", "stop_reason": "completed",
            "generator_cpu_saturated": False, "time_scale": 1.0, "stages": stages, **run_info}
    (folder / "run.json").write_text(json.dumps(info))
    return folder


MB_PER_USER, BASE_MB, LIMIT_MB = 2.5, 120.0, 1200.0  # the limit is reached at (1200 - 120) / 2.5 = 432 users


def write_telemetry(folder: Path, mb_per_user: float = MB_PER_USER, base_mb: float = BASE_MB,
                    limit_mb: float | None = LIMIT_MB, scraped_stages: int | None = None, seed: int = 0) -> Path:
    """telemetry.csv as the scraper writes it (one row per sample, one outcome row per scrape, every 5 s) for the
    steady phases of a ladder's first `scraped_stages` (all by default): resident memory base_mb + mb_per_user *
    users, plus noise; run.json gains the scrape's summary with the target profile's container limit."""
    rng = np.random.default_rng(seed)
    info = json.loads((folder / "run.json").read_text())
    started = info["stages"][0]["ramp_start"]
    with (folder / "telemetry.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(TELEMETRY_COLUMNS)
        for stage in info["stages"][:scraped_stages]:
            for now in np.arange(stage["steady_start"] + 1, stage["steady_end"], 5.0):
                prefix = [round(now, 3), round(now - started, 3), stage["index"], "steady"]
                memory_mb = base_mb + mb_per_user * stage["users"] + rng.normal(0, 8)
                writer.writerow([*prefix, "process_resident_memory_bytes", "", memory_mb * 1e6])
                writer.writerow([*prefix, SCRAPE_METRIC, 'outcome="ok"', 0.004])
    info["telemetry"] = {"enabled": True, "url": "http://127.0.0.1:9/metrics", "container_limit_mb": limit_mb}
    (folder / "run.json").write_text(json.dumps(info))
    return folder


def cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    """The console script in its own process: for whole runs."""
    return subprocess.run([MEDIANEST_LOAD, *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout)


def invoke(*args: str) -> Result:
    """The command in this process (quicker than a new interpreter): for `project` and `scenarios validate`."""
    return CliRunner().invoke(main, list(args))


def test_fit_recovers_known_sigma_kappa_and_lambda_inside_their_intervals(tmp_path):
    """Each 95 % interval misses its truth about 1 time in 20, so the noise is seeded to keep the test stable."""
    folder = write_ladder(tmp_path / "usl", TRUE, seed=3)
    projection = project(ladder_input(load_run(folder)), load_named(SLO, "staging-gate"), "3x,5x", resamples=400)

    for name, estimate, truth in (("lambda", projection.lam, TRUE[0]), ("sigma", projection.sigma, TRUE[1]),
                                  ("kappa", projection.kappa, TRUE[2])):
        assert estimate.low <= estimate.value <= estimate.high, name
        assert estimate.includes(truth), f"{name}: {truth} outside {estimate}"
    true_peak = np.sqrt((1 - TRUE[1]) / TRUE[2])
    assert projection.peak_reached and projection.peak_users.includes(true_peak)
    assert projection.max_throughput.includes(float(usl(true_peak, TRUE)))
    assert projection.fit.r_squared > 0.98
    at_3x, at_5x = projection.projected
    assert (at_3x.users, at_5x.users) == (192, 320)
    assert at_3x.beyond_peak and at_3x.extrapolation == pytest.approx(3.0)
    assert at_3x.throughput.includes(float(usl(192, TRUE)))
    # Little's law for a closed loop, R(N) = N / X(N) - Z, and the p95 estimate scaled from the last stage
    assert at_5x.response_ms.value == pytest.approx((320 / at_5x.throughput.value - THINK_S) * 1000)
    assert at_5x.p95_estimate_ms.value == pytest.approx(at_5x.response_ms.value * projection.p95_ratio)
    assert any(v["criterion"] == "API p95" and v["status"] == "FAIL" for v in at_5x.verdicts)
    # an HTTP projection speaks for HTTP criteria only: never for browser timings (FCP, TTFB) or transactions
    slo = load_named(SLO, "staging-gate")
    judged = {v["criterion"] for v in at_5x.verdicts}
    browser = {c.name for c in slo.criteria if any(e.startswith(("BROWSER", "TXN", "PAGE", "SIO")) for e in c.endpoint)}
    assert browser and not judged & browser, judged & browser


def test_memory_per_user_and_the_users_at_the_container_limit_are_recovered_inside_their_intervals(tmp_path):
    folder = write_telemetry(write_ladder(tmp_path / "memory", TRUE, seed=3))
    result = invoke("project", str(folder), "--users", "200,600", "--resamples", "400")
    assert result.exit_code == 0, result.output

    document = json.loads((folder / "projection.json").read_text())
    memory = document["memory"]
    assert memory["projected"] and len(memory["stages"]) == len(LADDER) and memory["limit_mb"] == LIMIT_MB
    for name, truth in (("mb_per_user", MB_PER_USER), ("base_mb", BASE_MB),
                        ("limit_users", (LIMIT_MB - BASE_MB) / MB_PER_USER)):
        value = memory[name]
        assert value["low"] <= truth <= value["high"] and value["low"] <= value["value"] <= value["high"], name
    at_200, at_600 = document["projections"]
    for projected in (at_200, at_600):
        value = projected["memory_mb"]
        assert value["low"] <= BASE_MB + MB_PER_USER * projected["users"] <= value["high"]
    assert not any("container limit" in label for label in at_200["labels"])
    assert "resident memory beyond the container limit (1,200 MB)" in at_600["labels"]
    markdown = (folder / "projection.md").read_text()
    reach = f"reaches the 1,200 MB container limit at {memory['limit_users']['value']:,.0f} users"
    assert "MB per user" in markdown and reach in markdown and "| memory MB |" in markdown
    assert "Resident memory per stage" in markdown and "MB per user" in result.output


def test_without_telemetry_memory_is_not_projected_and_the_projection_says_so_in_one_line(tmp_path):
    folder = write_ladder(tmp_path / "no-telemetry", TRUE, seed=1)
    projection = project(ladder_input(load_run(folder)), load_named(SLO, "staging-gate"), "3x", resamples=200)

    assert projection.memory is None and projection.projected[0].memory_mb is None
    document = to_document(projection, "no-telemetry")
    assert document["memory"] == {"projected": False, "text": "memory not projected: no server telemetry: the results "
                                                               "folder has no telemetry.csv"}
    assert document["projections"][0]["memory_mb"] is None

    few = write_telemetry(write_ladder(tmp_path / "scraped-late", TRUE, hold_s=20), scraped_stages=2)
    partial = project(ladder_input(load_run(few)), load_named(SLO, "staging-gate"), "3x", resamples=200)
    text = to_document(partial, "few")["memory"]["text"]
    assert text.startswith("memory not projected: 2 of the 9 fitted stages have resident memory scraped in their "
                           "steady phase; MB per user needs 3"), text


def test_a_fit_that_does_not_converge_is_refused_in_one_line(tmp_path):
    """A stage without throughput leaves the relative residuals undefined: the fit refuses rather than guess."""
    ladder = ladder_input(load_run(write_ladder(tmp_path / "usl", TRUE, seed=2)))
    stalled = replace(ladder, stages=ladder.stages.assign(throughput=ladder.stages["throughput"].where(
        ladder.stages["stage"] != 5, 0.0)))

    with pytest.raises(ProjectionError) as refusal:
        project(stalled, load_named(SLO, "staging-gate"), "3x", resamples=200)
    message = str(refusal.value)
    assert message.startswith("no convergence: the USL fit to 9 stages (4, 8, 16, 24, 32, 40, 48, 56, 64 users) did "
                              "not converge") and "\n" not in message


def test_a_ladder_that_never_bends_reports_the_peak_as_not_reached(tmp_path):
    amdahl = np.array([5.0, 0.05, 0.0])
    folder = write_ladder(tmp_path / "amdahl", amdahl, seed=1)
    projection = project(ladder_input(load_run(folder)), load_named(SLO, "staging-gate"), "3x", resamples=400)

    assert not projection.peak_reached
    assert projection.kappa.low == 0.0, "kappa's interval includes 0"
    assert projection.sigma.includes(0.05) and projection.lam.includes(5.0)
    document = to_document(projection, "amdahl")
    assert "not reached within the measured range" in document["peak"]["text"]
    assert document["peak"]["users"]["high"] is None, "an unbounded N* is null in JSON, never Infinity"
    at_3x = projection.projected[0]
    assert not at_3x.beyond_peak and not any(label.startswith("beyond the peak") for label in at_3x.labels)


def test_three_stages_are_refused_in_one_line_with_exit_2(tmp_path):
    folder = write_ladder(tmp_path / "three", TRUE, users=(8, 16, 32), hold_s=20)
    result = invoke("project", str(folder))

    assert result.exit_code == 2, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
    assert "3 usable stages" in result.stderr and "at least 4" in result.stderr and "6 or more" in result.stderr
    assert not (folder / "projection.json").exists()


def test_no_steady_data_is_refused_in_one_line_with_exit_2(tmp_path):
    folder = write_ladder(tmp_path / "ramps", TRUE, hold_s=5, steady=False)
    result = invoke("project", str(folder))

    assert result.exit_code == 2
    assert result.stderr.strip().startswith("error: no steady data") and len(result.stderr.strip().splitlines()) == 1


def test_generator_flagged_and_collapsed_stages_are_left_out_with_a_note(tmp_path):
    flagged = {"generator_limited": True, "generator_reason": "local: CPU 99 %, loop lag p99 240 ms (5 s in a row)"}
    folder = write_ladder(tmp_path / "flagged", TRUE, error_rates={9: 0.3}, stage_extra={2: flagged})
    ladder = ladder_input(load_run(folder))
    projection = project(ladder, load_named(SLO, "staging-gate"), "100", resamples=200)

    assert ladder.usable["stage"].tolist() == [1, 3, 4, 5, 6, 7, 8]
    notes = " | ".join(projection.notes)
    assert "stage 2 (8 users): left out: the load generator was the bottleneck at this stage (local: CPU 99 %" in notes
    assert "stage 9 (64 users): collapsed: error rate" in notes
    assert sorted(projection.fit.users.tolist()) == [4, 16, 24, 32, 40, 48, 56]

    # before per-stage generator health exists, the run-level flag cannot say which stage: none is trusted
    saturated = write_ladder(tmp_path / "saturated", TRUE, generator_cpu_saturated=True)
    result = invoke("project", str(saturated))
    assert result.exit_code == 2 and "0 usable stages" in result.stderr and "generator_cpu_saturated" in result.stderr


def test_holdout_that_leaves_too_few_stages_is_refused(tmp_path):
    folder = write_ladder(tmp_path / "short", TRUE, users=(4, 8, 16, 24, 32), hold_s=20)
    result = invoke("project", str(folder), "--holdout", "2", "--users", "100")

    assert result.exit_code == 2 and "--holdout 2: leaves 3 of 5 usable stages" in result.stderr
    result = invoke("project", str(folder), "--users", "0,3x")
    assert result.exit_code == 2 and result.stderr.startswith("error: --users: bad value '0,3x'")


@pytest.mark.parametrize("value, expected", [("[1, 2]", "project: got [1, 2]"), ("{users: lots}", "project.users: got 'lots'"),
                                             ("{holdout: -1}", "project.holdout: got -1")])
def test_scenario_project_key_mistakes_are_one_line(tmp_path, value, expected):
    scenario = yaml.safe_load((REPO_ROOT / "scenarios" / "smoke.yaml").read_text())
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(scenario) + f"project: {value}\n")
    result = invoke("scenarios", "validate", str(path))

    assert result.exit_code == 2 and expected in result.stderr and len(result.stderr.strip().splitlines()) == 1


KNEE_LADDER = (4, 8, 16, 24, 32, 40, 48, 56)


def test_a_real_ladder_past_the_reference_targets_knee_is_projected_into_the_report(reference_target, tmp_path):
    """Eight 7-s steps against the knee profile (pool 4, crosstalk): the fit, its intervals, the holdout and the
    report section come from a real run on this shared machine, so the bounds are loose (the benchmark prints
    the figures). The target keeps 32 KB per request and is scraped every second, so resident memory grows with
    the users' requests, and a copy of the target profile sets a container limit for it to reach."""
    target = reference_target("--profile", "knee", "--seed", "5", "--leak-kb-per-request", "32")
    profile = (REPO_ROOT / "target_profiles" / "reference.yaml").read_text()
    (tmp_path / "limited.yaml").write_text(profile.replace("metrics:\n", "metrics:\n  container_limit_mb: 1000\n", 1))
    scenario = yaml.safe_load((REPO_ROOT / "scenarios" / "capacity-ladder-knee.yaml").read_text())
    # 7-s holds: 6 s (which Locust's once-a-second shape made 6.5-7 s) left the holdout's error at 31 % once
    scenario["stages"] = [{"name": f"users-{n}", "users": n, "ramp": "1s", "hold": "7s"} for n in KNEE_LADDER]
    scenario.update(target_profile=str(tmp_path / "limited.yaml"), scrape_interval="1s")
    path = tmp_path / "knee-ladder.yaml"
    path.write_text(yaml.safe_dump(scenario))
    result = cli("run", str(path), "--host", target.url, "--out", str(tmp_path / "results"), "--quiet", "--no-gate")

    assert result.returncode == 1, "staging-gate fails past the knee (API p95 above 500 ms)"
    assert "Traceback" not in result.stderr and "capacity projection refused" not in result.stderr
    folder = next((tmp_path / "results").iterdir())
    document = json.loads((folder / "projection.json").read_text())
    for name in ("lambda", "sigma", "kappa"):
        value = document["parameters"][name]
        # a noisy ladder on a loaded machine can put a point estimate outside its bootstrap interval: then the
        # projection must say so, never show the figure as if it were sound
        assert value["low"] <= value["high"], name
        assert value["low"] <= value["value"] <= value["high"] or any(
            note.startswith("unstable fit:") and name in note for note in document["notes"]), (name, document["notes"])
    assert document["parameters"]["kappa"]["low"] > 0, "the knee profile bends the ladder down"
    assert document["peak"]["reached"] and 16 <= document["peak"]["users"]["value"] <= 56
    assert [p["users"] for p in document["projections"]] == [168, 280]
    assert all(p["beyond_peak"] and "beyond the peak" in p["labels"][0] for p in document["projections"])
    # the fit without the last two stages predicts them within 40 %: 12-19 % on a quiet machine (docs/analysis.md),
    # 33 % beside the parallel pass once this machine ran at half its speed
    assert document["holdout"]["k"] == 2 and document["holdout"]["max_throughput_error_pct"] < 40
    assert len(document["stages"]) == len(KNEE_LADDER) and document["fit"]["r_squared"] > 0.7
    memory = document["memory"]
    assert memory["projected"] and memory["limit_mb"] == 1000, memory["text"]
    assert memory["mb_per_user"]["low"] > 0, "the leak grows resident memory with the users' requests"
    assert memory["limit_users"]["value"] > 0 and all(p["memory_mb"]["value"] > 0 for p in document["projections"])
    assert "Resident memory grows" in (folder / "projection.md").read_text()
    report = (folder / "report.html").read_text()
    assert "Capacity projection" in report and 'id="projection"' in report and "data:image/png;base64," in report
    assert "Resident memory per stage" in report
    assert "## Capacity projection" in (folder / "report.md").read_text()
    assert (folder / "plots" / "projection.png").stat().st_size > 10_000

    again = invoke("project", str(folder), "--users", "30,100", "--resamples", "200")
    assert again.exit_code == 0, again.stderr
    rerun = json.loads((folder / "projection.json").read_text())
    assert [p["users"] for p in rerun["projections"]] == [30, 100] and rerun["holdout"] is None
    assert "capacity projection" in again.stdout and "report.html" in again.stdout
    assert "| 100 | 1.8 |" in (folder / "report.md").read_text(), "the report was rewritten with the new projection"


def test_a_run_too_short_to_project_says_so_in_one_line_and_keeps_its_exit_code(reference_target, tmp_path):
    target = reference_target("--profile", "baseline", "--seed", "2")
    scenario = yaml.safe_load((REPO_ROOT / "scenarios" / "smoke.yaml").read_text())
    scenario.update(mix={"health": 1}, project=True,
                    stages=[{"name": "one", "users": 2, "ramp": "1s", "hold": "4s"},
                            {"name": "two", "users": 4, "ramp": "1s", "hold": "4s"}])
    path = tmp_path / "two-stages.yaml"
    path.write_text(yaml.safe_dump(scenario))
    result = cli("run", str(path), "--host", target.url, "--out", str(tmp_path / "results"), "--quiet")

    refusals = [line for line in result.stderr.splitlines() if "capacity projection refused" in line]
    assert len(refusals) == 1 and "2 usable stages" in refusals[0] and "Traceback" not in result.stderr
    folder = next((tmp_path / "results").iterdir())
    # the refusal leaves the exit code to the verdict (0 here; 3 when a busy machine flagged the generator)
    assert_exit_is_the_verdicts(result.returncode, folder, result.stderr)
    assert (folder / "report.html").exists() and not (folder / "projection.json").exists()
