"""Analysis of results folders: load (tidy frames), criteria (judge), slo (SLO sets), plots, report, compare.

For the runner: `judge_run(run_dir, load_slo(name))`, `judge_stage(...)` + `abort_reason(...)` per finished
stage, and `analysis.commands.analyze_run(run_dir)` to write every report at the end (docs/analysis.md)."""

from analysis.criteria import Verdict, abort_reason, judge_run, judge_stage
from analysis.slo import load_slo

__all__ = ["Verdict", "abort_reason", "judge_run", "judge_stage", "load_slo"]
