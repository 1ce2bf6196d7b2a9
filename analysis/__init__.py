"""Analysis of results folders: load (tidy frames), criteria (the language's definitions), slo (SLO files), selection,
measure and judging (a verdict), verdict (its types), values (formatting), plots, report, compare, project.

For the runner: `judging.judge_run(run_dir, load_named(SLO, name))`, `judging.judge_stage(...)` +
`judging.abort_reason(...)` per finished stage, and `analysis.commands.analyze_run(run_dir)` to write every report at
the end (docs/analysis.md). Nothing is imported here: `import analysis.slo` must not load pandas."""
