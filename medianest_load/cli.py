"""The `medianest-load` command. Heavy imports stay inside commands: `run` must import locust (gevent
monkey-patching) before anything touches ssl, `target` must never be gevent-patched, and `--help`, `scenarios`
and `target` start without pandas, scipy or matplotlib (the analysis commands load when they run)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from medianest_load.bounds import SCRAPE_INTERVAL_S
from medianest_load.inputs import InputError, load_named
from medianest_load.lazy_commands import LazyCommand, LazyGroup
from medianest_load.one_line_errors import OneLineGroup, UsageProblem
from medianest_load.paths import RESULTS_DIR
from medianest_load.scenario import SCENARIO, ScenarioError, list_scenarios
from medianest_load.vocabulary import ExitCode
from reference_target.command import target

if TYPE_CHECKING:  # at run time these load inside the commands: locust must patch gevent first
    from analysis.verdict import Verdict
    from medianest_load.run import RunOutcome

USAGE_ERROR = ExitCode.USAGE
INTERRUPTED = ExitCode.INTERRUPTED


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="medianest-load")
def main() -> None:
    """Staged load tests for MediaNest on Locust: run scenarios, judge them, compare runs."""


main.add_command(target)
main.add_command(LazyCommand("analyze", "analysis.commands:analyze", "Judge a results folder against an SLO set; "
                             "write verdict.json, junit.xml, report.md, report.html, plots/."))
main.add_command(LazyCommand("compare", "analysis.commands:compare", "Per stage x endpoint, the change in p95, "
                             "p99, error rate and throughput from BASE_DIR to CANDIDATE_DIR."))
main.add_command(LazyCommand("project", "analysis.commands:project", "Fit the Universal Scalability Law to a "
                             "capacity ladder and project throughput, response time and p95 at larger user counts, "
                             "with 95 % intervals. Exit 0 with a projection, 2 when it refuses (one line why)."))


@main.group(cls=OneLineGroup)
def scenarios() -> None:
    """Validate and list scenario files."""


def load_checked_scenario(name: str):
    """The scenario, with its SLO set parsed too: a broken SLO file must not pass `validate`."""
    from analysis.slo import SLO

    scenario = load_named(SCENARIO, name)
    try:
        load_named(SLO, scenario.slo)
    except InputError as error:
        raise ScenarioError.nested(scenario.source, "slo", error) from None
    return scenario


@scenarios.command("validate")
@click.argument("files", nargs=-1, required=True)
def scenarios_validate(files: tuple[str, ...]) -> None:
    """Check scenario FILES (paths or names in scenarios/); one line per mistake, exit 2 if any."""
    mistakes = 0
    for name in files:
        try:
            scenario = load_checked_scenario(name)
        except InputError as error:
            click.echo(f"error: {error}", err=True)
            mistakes += 1
        else:
            click.echo(f"ok: {scenario.source}: {len(scenario.stages)} stages, peak {scenario.peak_users} users")
    if mistakes:
        raise SystemExit(USAGE_ERROR)


@scenarios.command("list")
def scenarios_list() -> None:
    """Every scenario in scenarios/ with its stages, peak users and total duration."""
    for path in list_scenarios():
        try:
            scenario = load_checked_scenario(str(path))
        except InputError as error:
            click.echo(f"{path.stem:18} INVALID: {error}")
            continue
        stages = " -> ".join(f"{stage.rate:g}/s ({stage.users} max)" if stage.is_open else str(stage.users)
                             for stage in scenario.stages)
        click.echo(f"{scenario.name:18} peak {scenario.peak_users:>5} users  "
                   f"{_duration(scenario.planned_duration_s()):>8}  stages {stages}")
        click.echo(f"{'':18} {scenario.description}")


def _duration(seconds: float) -> str:
    hours, rest = divmod(int(round(seconds)), 3600)
    return f"{hours}h{rest // 60:02d}m" if hours else f"{rest // 60}m{rest % 60:02d}s"


@main.command()
@click.argument("scenario")
@click.option("--host", help="Base URL of the target; overrides the scenario's host.")
@click.option("--out", "out_root", type=click.Path(file_okay=False, path_type=Path), default=RESULTS_DIR,
              show_default=True, help="Folder that receives the run's results folder.")
@click.option("--time-scale", type=float, default=1.0, show_default=True,
              help="Multiply every ramp and hold (0.1 for a rehearsal at a tenth of the time); 0.001 to 1000.")
@click.option("--tokens", "tokens_file", type=click.Path(exists=True, dir_okay=False),
              help="File of bearer tokens, one per line, handed to users round-robin.")
@click.option("--allow-host", "allow_hosts", multiple=True,
              help="Allow this non-loopback host name (repeatable). Without it only loopback is loaded.")
@click.option("--slo", help="SLO set to judge the run with (a name in slo/ or a path); default: the scenario's.")
@click.option("--target-profile", help="Target profile (a name in target_profiles/ or a path); default: the scenario's.")
@click.option("--no-gate", is_flag=True, help="Run every stage whatever the stage verdicts (no abort).")
@click.option("--quiet", is_flag=True, help="No progress line.")
@click.option("--workers", "workers", default="0", show_default=True, metavar="N|auto",
              help="Local worker processes under a master (auto: one per core); 0: one process.")
@click.option("--expect-workers", type=click.IntRange(0, 1000), default=0,
              help="Workers (local or from other machines) to wait for before stage 1; default: --workers.")
@click.option("--master-bind", metavar="HOST:PORT", help="Where the master listens for workers (default: loopback, a free port).")
@click.option("--worker-timeout", "worker_timeout_s", type=click.FloatRange(min=0, min_open=True), default=60.0,
              show_default=True, help="Seconds to wait for the expected workers; with fewer the run does not start.")
@click.option("--on-worker-loss", type=click.Choice(["continue", "abort"]), default="continue", show_default=True,
              help="A worker lost mid-run: go on with the rest (run `degraded`) or stop the run (`aborted`).")
@click.option("--web", is_flag=True, help="Serve Locust's own web UI on loopback for live charts (the stages still drive).")
@click.option("--scrape-interval", "scrape_interval_s",
              type=click.FloatRange(min=SCRAPE_INTERVAL_S.low, max=SCRAPE_INTERVAL_S.high),
              help="Seconds between scrapes of the target's /metrics (default: the scenario's, the profile's, else 5).")
@click.option("--no-scrape", is_flag=True, help="Do not scrape the target's /metrics (no server telemetry).")
@click.option("--scrape-all", is_flag=True, help="Keep every scraped sample in telemetry.csv, not only those the analysis uses.")
@click.option("--web-port", type=click.IntRange(1, 65535), default=8089, show_default=True, help="Port of --web.")
@click.option("--request-timeout", type=float, default=None,
              help="Seconds without an answer before a request fails as timeout; beats the scenario's, which beats "
                   "the target profile's.")
@click.option("--connect-timeout", type=float, default=None,
              help="Seconds to open a connection (HTTP or Socket.IO); same precedence as --request-timeout.")
@click.option("--no-report", is_flag=True,
              help="Judge only: verdict.json, junit.xml and the table, without report.md, report.html and plots (a "
                   "CI gate's few seconds of CPU); `analyze RUN_DIR` writes them later.")
def run(scenario: str, host: str | None, out_root: Path, time_scale: float, tokens_file: str | None,
        allow_hosts: tuple[str, ...], slo: str | None, target_profile: str | None, no_gate: bool, quiet: bool,
        workers: str, expect_workers: int, master_bind: str | None, worker_timeout_s: float, on_worker_loss: str,
        web: bool, web_port: int, scrape_interval_s: float | None, no_scrape: bool, scrape_all: bool,
        request_timeout: float | None, connect_timeout: float | None, no_report: bool) -> None:
    """Run SCENARIO (a path or a name in scenarios/) headless, stage by stage, into a results folder, then
    judge it. Exit 0 when no criterion fails, 1 when one does, 2 on a usage error, 3 when nothing fails but a
    judged stage is inconclusive (the load generator was the bottleneck), 130 when interrupted."""
    scale_out = {"workers": workers, "expect_workers": expect_workers, "master_bind": master_bind,
                 "worker_timeout_s": worker_timeout_s, "on_worker_loss": on_worker_loss,
                 "web_port": web_port if web else None}
    outcome = execute_run(scenario, host, out_root, time_scale, tokens_file, allow_hosts, not no_gate, not quiet,
                          slo, target_profile, scale_out, scrape=not no_scrape,
                          scrape_interval_s=scrape_interval_s, scrape_all=scrape_all, request_timeout=request_timeout,
                          connect_timeout=connect_timeout)
    verdict = judge_outcome(outcome, report=not no_report)
    raise SystemExit(run_exit_code(outcome, verdict))


def execute_run(scenario: str, host: str | None, out_root: Path, time_scale: float = 1.0,
                tokens_file: str | None = None, allow_hosts: tuple[str, ...] = (), gate_stages: bool = True,
                show_progress: bool = True, slo: str | None = None, target_profile: str | None = None,
                scale_out: dict | None = None, scrape: bool = True, scrape_interval_s: float | None = None,
                scrape_all: bool = False, request_timeout: float | None = None, connect_timeout: float | None = None):
    """Validate everything, then run: a user mistake stops here with one line, before any request."""
    from medianest_load.run import RunRequest, ScenarioRun  # isort: skip  (first: locust patches gevent)

    from medianest_load.distributed import worker_count

    scale_out = dict(scale_out or {})
    try:
        scale_out["workers"] = worker_count(str(scale_out.get("workers", "0")))
        request = RunRequest(scenario=load_named(SCENARIO, scenario), host=host, out_root=out_root, time_scale=time_scale,
                             tokens_file=tokens_file, allow_hosts=allow_hosts, show_progress=show_progress,
                             gate_stages=gate_stages, slo=slo, target_profile=target_profile, **scale_out, scrape=scrape,
                             scrape_interval_s=scrape_interval_s, scrape_all=scrape_all,
                             request_timeout_s=request_timeout, connect_timeout_s=connect_timeout)
        scenario_run = ScenarioRun(request)
    except InputError as error:
        raise UsageProblem(str(error)) from None
    try:
        outcome = scenario_run.execute()
    except InputError as error:
        raise UsageProblem(str(error)) from None
    click.echo(f"run {outcome.status} ({outcome.stop_reason}): {outcome.folder}")
    if scenario_run.scraper is not None:
        click.echo(scenario_run.scraper.outcome_line())
    return outcome


def run_exit_code(outcome: RunOutcome, verdict: Verdict) -> int:
    """130 when interrupted; a run that stopped before its plan ended (gate, deadline) never exits 0."""
    if outcome.status == "interrupted":
        return INTERRUPTED
    if outcome.status == "aborted":
        return max(1, verdict.exit_code)
    return verdict.exit_code


def judge_outcome(outcome, report: bool = True):
    """Analyse the finished run with the SLO set it recorded (after the capacity projection its scenario may ask
    for, so that the report shows it); Ctrl-C here still leaves the results intact."""
    from analysis.commands import analyze_run, planned_projection

    try:
        planned_projection(outcome.folder)
        return analyze_run(outcome.folder, report=report)
    except InputError as error:
        raise UsageProblem(str(error)) from None
    except KeyboardInterrupt:
        click.echo(f"analysis interrupted; the results are complete in {outcome.folder}", err=True)
        raise SystemExit(INTERRUPTED) from None


@main.command()
@click.option("--master", "master", required=True, metavar="HOST[:PORT]",
              help="The master to join (`run --expect-workers N --master-bind HOST:PORT` elsewhere); port 5557 by default.")
@click.option("--tokens", "tokens_file", type=click.Path(exists=True, dir_okay=False),
              help="Read tokens here instead of receiving them from the master; this worker uses only its own block.")
def worker(master: str, tokens_file: str | None) -> None:
    """Join a master and run the users it assigns; needs no scenario file (the master sends what users need).
    The master-worker channel is plaintext: keep it on a trusted network."""
    from medianest_load.distributed import parse_address, run_worker  # first: locust patches gevent

    try:
        host, port = parse_address(master, "--master")
    except InputError as error:
        raise UsageProblem(str(error)) from None
    raise SystemExit(run_worker(host, port, tokens_file))


@main.command()
@click.option("--profile", default="baseline", show_default=True, help="Reference target behaviour profile.")
@click.option("--out", "out_root", type=click.Path(file_okay=False, path_type=Path), default=RESULTS_DIR,
              show_default=True, help="Folder that receives the run's results folder.")
def demo(profile: str, out_root: Path) -> None:
    """Start the reference target on a free loopback port, run the demo scenario, write the report."""
    from medianest_load.run import RunRequest  # noqa: F401  # isort: skip  (first: locust patches gevent)

    from reference_target.launcher import TargetStartError, start_target

    try:
        target = start_target(["--profile", profile])
    except TargetStartError as error:
        raise UsageProblem(str(error).strip().splitlines()[-1]) from None
    try:
        click.echo(f"reference target ({profile}) on {target.url}")
        outcome = execute_run("demo", target.url, out_root)
    finally:
        target.stop()
    verdict = judge_outcome(outcome)
    click.echo(f"\nreport: {outcome.folder / 'report.html'}")
    raise SystemExit(run_exit_code(outcome, verdict))


if __name__ == "__main__":
    main()
