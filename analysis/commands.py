"""`medianest-load analyze`, `compare` and `project` (registered by medianest_load/cli.py), and `analyze_run`
and `project_run`, which `medianest-load run` calls at its end. Exit codes: 0 nothing fails / no regression,
1 a criterion fails / a regression, 2 a usage error (one line on stderr, never a traceback), 3 inconclusive."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import click

from analysis.compare import Thresholds, compare_runs
from analysis.judging import judge_run
from analysis.load import RunData, load_run
from analysis.project import RESAMPLES, ProjectionError, ladder_input
from analysis.project import project as fit_projection
from analysis.project_report import saved_sections, summary_text, to_document, write_projection
from analysis.report import (
    comparison_text,
    verdict_table,
    write_comparison,
    write_html,
    write_junit,
    write_markdown,
    write_verdict_json,
)
from analysis.slo import SLO
from analysis.verdict import Verdict
from medianest_load.inputs import InputError, load_named
from medianest_load.one_line_errors import OneLineErrors, UsageProblem
from medianest_load.vocabulary import RunStatus

DEFAULT_SLO = "staging-gate"
DEFAULT_USERS = "3000,5000"  # the audit's 3x and 5x of its 1,000 concurrent users


def analyze_run(run_dir: str | Path, slo: str | Path | None = None, out_dir: str | Path | None = None,
                echo: Callable[[str], None] = click.echo, report: bool = True) -> Verdict:
    """Judge a results folder and write verdict.json, junit.xml, report.md, report.html and plots/*.png into
    out_dir (the run folder by default); prints the verdict table. `slo` defaults to the one run.json names.
    Without `report`, only the verdict (json, junit, table): the plots are most of judging's CPU.
    Raises an InputError (one line) on bad input; exit with `verdict.exit_code`."""
    run = load_run(run_dir)
    slo_set = load_named(SLO, slo or run.info.get("slo") or DEFAULT_SLO)
    verdict = judge_run(run, slo_set)
    folder = Path(out_dir) if out_dir else run.path
    folder.mkdir(parents=True, exist_ok=True)
    plots: dict[str, Path] = {}
    if report:
        from analysis.plots import make_plots  # here: matplotlib's import is a CPU-second a judge-only run never needs

        plots = make_plots(run, slo_set, folder / "plots")
    written = [write_verdict_json(verdict, folder / "verdict.json", plots), write_junit(verdict, folder / "junit.xml")]
    if report:
        projection_md, projection_html = saved_sections(folder)
        written += [write_markdown(verdict, run, plots, folder / "report.md", projection_md),
                    write_html(verdict, run, plots, folder / "report.html", projection_html)]
        rest = f" and {len(plots)} plots in {folder / 'plots'}"
    else:
        rest = f"; no report: `medianest-load analyze {folder}` writes report.md, report.html and the plots"
    echo(verdict_table(verdict))
    echo("wrote " + ", ".join(str(path) for path in written) + rest)
    return verdict


@click.command("analyze", cls=OneLineErrors)
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--slo", "slo", metavar="NAME|FILE",
              help="SLO set: a name in slo/ or a YAML path (default: the run's own, else staging-gate).")
@click.option("--out", "out_dir", type=click.Path(path_type=Path), help="Where to write the reports (default: RUN_DIR).")
@click.option("--no-report", is_flag=True, help="Judge only: verdict.json, junit.xml and the table, without report.md, "
              "report.html and plots.")
def analyze(run_dir: Path, slo: str | None, out_dir: Path | None, no_report: bool) -> None:
    """Judge a results folder against an SLO set; write verdict.json, junit.xml, report.md, report.html, plots/.

    Exit 0 when no criterion fails, 1 when one does, 2 on a usage error."""
    try:
        verdict = analyze_run(run_dir, slo, out_dir, report=not no_report)
    except InputError as error:
        raise UsageProblem(str(error)) from None
    raise SystemExit(verdict.exit_code)


def _window_option(_ctx: click.Context, _param: click.Parameter, value: str) -> int | None:
    """--window: `auto` (None) or whole seconds from 1 to 600."""
    if str(value).strip().lower() == "auto":
        return None
    if not str(value).strip().isdigit() or not 1 <= int(value) <= 600:
        raise click.BadParameter(f"{value!r}: expected auto or whole seconds from 1 to 600")
    return int(value)


@click.command("compare", cls=OneLineErrors)
@click.argument("base_dir", type=click.Path(path_type=Path))
@click.argument("candidate_dir", type=click.Path(path_type=Path))
@click.option("--out", "out_dir", type=click.Path(path_type=Path),
              help="Where to write compare.* (default: CANDIDATE_DIR/compare-<base>).")
@click.option("--window", "window_s", callback=_window_option, default="auto", show_default=True, metavar="auto|SECONDS",
              help="Seconds per window of the 1-second series for the statistical test; auto: per stage, the largest "
                   "window giving enough windows in both runs.")
@click.option("--alpha", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=Thresholds.alpha, show_default=True,
              help="Significance level of the one-sided Mann-Whitney test.")
@click.option("--min-change", "relative_pct", type=click.FloatRange(0), default=Thresholds.relative * 100, show_default=True,
              help="Practical threshold: smallest relative change (%) that counts.")
@click.option("--min-ms", "latency_ms", type=click.FloatRange(0), default=Thresholds.latency_ms, show_default=True,
              help="Practical threshold: smallest latency change (ms) that counts.")
@click.option("--allow-inconclusive", is_flag=True, help="Exit 0 instead of 3 when some rows could not be judged.")
@click.option("--no-report", is_flag=True, help="Decide only: compare.json and the table, without compare.md, "
              "compare.html and plots.")
def compare(base_dir: Path, candidate_dir: Path, out_dir: Path | None, window_s: int | None, alpha: float, relative_pct: float,
            latency_ms: float, allow_inconclusive: bool, no_report: bool) -> None:
    """Per stage x endpoint, the change in p95, p99, error rate and throughput from BASE_DIR to CANDIDATE_DIR.

    Exit 1 REGRESSION (a change statistically clear and practically large), 0 NO REGRESSION (every row judged),
    3 INCONCLUSIVE (no regression, but some rows had too few windows: named, with what would be needed),
    2 on a usage error."""
    thresholds = Thresholds(relative=relative_pct / 100, latency_ms=latency_ms, alpha=alpha, window_s=window_s)
    try:
        base, candidate = load_run(base_dir), load_run(candidate_dir)
        comparison = replace(compare_runs(base, candidate, thresholds), allow_inconclusive=allow_inconclusive)
    except InputError as error:
        raise UsageProblem(str(error)) from None
    folder = out_dir or candidate.path / f"compare-{base.name}"
    plots: dict[str, Path] = {}
    if not no_report:
        from analysis.plots import compare_plots  # here: matplotlib loads only for a command that draws

        plots = compare_plots(base, candidate, folder / "plots")
    written = write_comparison(comparison, plots, folder, report=not no_report)
    click.echo(comparison_text(comparison))
    rest = "; no report: the same command without --no-report writes compare.md, compare.html and the plots" \
        if no_report else ""
    click.echo("wrote " + ", ".join(str(path) for path in written.values()) + rest)
    raise SystemExit(comparison.exit_code)


def project_run(run_dir: str | Path | RunData, users: str = DEFAULT_USERS, slo: str | Path | None = None,
                holdout: int = 0, out_dir: str | Path | None = None, resamples: int = RESAMPLES,
                echo: Callable[[str], None] = click.echo) -> list[Path]:
    """Fit the USL to a results folder's stages and write projection.json, projection.md and
    plots/projection.png into out_dir (the run folder by default); a report.html already there is rewritten with
    the "Capacity projection" section. Raises ProjectionError or an InputError (one line each)."""
    run = run_dir if isinstance(run_dir, RunData) else load_run(run_dir)
    slo_set = load_named(SLO, slo or run.info.get("slo") or DEFAULT_SLO)
    projection = fit_projection(ladder_input(run), slo_set, users, holdout, resamples)
    folder = Path(out_dir) if out_dir else run.path
    document = to_document(projection, run.name, resamples)
    written = write_projection(projection, document, folder)
    echo(summary_text(document))
    if (folder / "report.html").is_file():
        analyze_run(run.path, slo, folder, echo=lambda _: None)
        written.append(folder / "report.html")
    echo("wrote " + ", ".join(str(path) for path in written))
    return written


def planned_projection(run_dir: Path, echo: Callable[[str], None] = click.echo) -> None:
    """At the end of `run`, the projection the scenario's `project:` asks for (run.json holds it), before the
    report is written so that the report shows it. A refusal is one line and leaves the run's exit code alone:
    a projection is not a criterion."""
    run = load_run(run_dir)
    plan = (run.info.get("scenario") or {}).get("project")
    if not plan or run.info.get("status") == RunStatus.INTERRUPTED:
        return
    try:
        project_run(run, str(plan.get("users", DEFAULT_USERS)), holdout=int(plan.get("holdout", 0)), echo=echo)
    except ProjectionError as error:
        click.echo(f"capacity projection refused: {error}", err=True)


@click.command("project", cls=OneLineErrors)
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--users", default=DEFAULT_USERS, show_default=True, metavar="N,N|Kx,Kx",
              help="User counts to project at; '3x,5x' means multiples of the largest measured stage.")
@click.option("--slo", "slo", metavar="NAME|FILE", help="SLO set whose throughput and p95 levels judge the projection "
              "(default: the run's own, else staging-gate).")
@click.option("--holdout", type=click.IntRange(0), default=0, show_default=True, metavar="K",
              help="Also fit without the last K stages and report how well it predicts them.")
@click.option("--resamples", type=click.IntRange(100, 100_000), default=RESAMPLES, show_default=True,
              help="Bootstrap resamples for the 95 % intervals.")
@click.option("--out", "out_dir", type=click.Path(path_type=Path), help="Where to write projection.* (default: RUN_DIR).")
def project(run_dir: Path, users: str, slo: str | None, holdout: int, resamples: int, out_dir: Path | None) -> None:
    """Fit the Universal Scalability Law to a capacity ladder and project throughput, response time and p95 at
    larger user counts, with 95 % intervals. Exit 0 with a projection, 2 when it refuses (one line why)."""
    try:
        project_run(run_dir, users, slo, holdout, out_dir, resamples)
    except InputError as error:
        raise UsageProblem(str(error)) from None
