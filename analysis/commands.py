"""`medianest-load analyze` and `medianest-load compare` (registered by medianest_load/cli.py), and
`analyze_run`, which `medianest-load run` calls at its end. Exit codes: 0 nothing fails / no regression,
1 a criterion fails / a regression, 2 a usage error (one line on stderr, never a traceback), 3 (compare) inconclusive."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import click

from analysis.compare import CompareError, Thresholds, compare_runs
from analysis.criteria import Verdict, judge_run
from analysis.load import ResultsError, load_run
from analysis.plots import compare_plots, make_plots
from analysis.report import comparison_text, verdict_table, write_comparison, write_html, write_junit, write_markdown, write_verdict_json
from analysis.slo import SloError, load_slo
from medianest_load.one_line_errors import OneLineErrors, UsageProblem

DEFAULT_SLO = "staging-gate"
USER_MISTAKES = (ResultsError, SloError, CompareError)



def analyze_run(run_dir: str | Path, slo: str | Path | None = None, out_dir: str | Path | None = None,
                echo: Callable[[str], None] = click.echo) -> Verdict:
    """Judge a results folder and write verdict.json, junit.xml, report.md, report.html and plots/*.png into
    out_dir (the run folder by default); prints the verdict table. `slo` defaults to the one run.json names.
    Raises ResultsError / SloError (one-line messages) on bad input; exit with `verdict.exit_code`."""
    run = load_run(run_dir)
    slo_set = load_slo(slo or run.info.get("slo") or DEFAULT_SLO)
    verdict = judge_run(run, slo_set)
    folder = Path(out_dir) if out_dir else run.path
    folder.mkdir(parents=True, exist_ok=True)
    plots = make_plots(run, slo_set, folder / "plots")
    written = [write_verdict_json(verdict, folder / "verdict.json", plots), write_junit(verdict, folder / "junit.xml"),
               write_markdown(verdict, run, plots, folder / "report.md"), write_html(verdict, run, plots, folder / "report.html")]
    echo(verdict_table(verdict))
    echo("wrote " + ", ".join(str(path) for path in written) + f" and {len(plots)} plots in {folder / 'plots'}")
    return verdict


@click.command("analyze", cls=OneLineErrors)
@click.argument("run_dir", type=click.Path(path_type=Path))
@click.option("--slo", "slo", metavar="NAME|FILE", help="SLO set: a name in slo/ or a YAML path (default: the run's own, else staging-gate).")
@click.option("--out", "out_dir", type=click.Path(path_type=Path), help="Where to write the reports (default: RUN_DIR).")
def analyze(run_dir: Path, slo: str | None, out_dir: Path | None) -> None:
    """Judge a results folder against an SLO set; write verdict.json, junit.xml, report.md, report.html, plots/.

    Exit 0 when no criterion fails, 1 when one does, 2 on a usage error."""
    try:
        verdict = analyze_run(run_dir, slo, out_dir)
    except USER_MISTAKES as error:
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
@click.option("--out", "out_dir", type=click.Path(path_type=Path), help="Where to write compare.* (default: CANDIDATE_DIR/compare-<base>).")
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
def compare(base_dir: Path, candidate_dir: Path, out_dir: Path | None, window_s: int | None, alpha: float, relative_pct: float,
            latency_ms: float, allow_inconclusive: bool) -> None:
    """Per stage x endpoint, the change in p95, p99, error rate and throughput from BASE_DIR to CANDIDATE_DIR.

    Exit 1 REGRESSION (a change statistically clear and practically large), 0 NO REGRESSION (every row judged),
    3 INCONCLUSIVE (no regression, but some rows had too few windows: named, with what would be needed),
    2 on a usage error."""
    thresholds = Thresholds(relative=relative_pct / 100, latency_ms=latency_ms, alpha=alpha, window_s=window_s)
    try:
        base, candidate = load_run(base_dir), load_run(candidate_dir)
        comparison = replace(compare_runs(base, candidate, thresholds), allow_inconclusive=allow_inconclusive)
    except USER_MISTAKES as error:
        raise UsageProblem(str(error)) from None
    folder = out_dir or candidate.path / f"compare-{base.name}"
    plots = compare_plots(base, candidate, folder / "plots")
    written = write_comparison(comparison, plots, folder)
    click.echo(comparison_text(comparison))
    click.echo("wrote " + ", ".join(str(path) for path in written.values()))
    raise SystemExit(comparison.exit_code)
