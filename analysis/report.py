"""The run's verdict in four forms: verdict.json (machines), junit.xml (CI, one testcase per criterion),
report.md (reviews) and report.html (a manager opens it: self-contained, plots embedded, works offline);
plus the verdict table printed on the terminal. The HTML pages come from analysis/templates/ (jinja2, autoescaped);
this module prepares their tables and sentences, which the Markdown and terminal forms share."""

from __future__ import annotations

import base64
import json
import xml.etree.ElementTree as ElementTree
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from jinja2 import Environment, PackageLoader, StrictUndefined

from analysis.compare import IMPROVEMENT, INFO, INSUFFICIENT, NOISE, REGRESSION, UNCHANGED, Comparison
from analysis.judging import LAG_ALLOWANCE
from analysis.load import ALL_ENDPOINTS, CENSORED_COLUMNS, RAMP, RunData
from analysis.values import format_value
from analysis.verdict import FAIL, INCONCLUSIVE, NO_DATA, PASS, WARN, CriterionResult, Verdict
from medianest_load.vocabulary import CompareOutcome

STATUS_COLORS: dict[str, str] = {PASS: "#1a7f37", WARN: "#b35900", FAIL: "#c62828", NO_DATA: "#6e6e6e", INCONCLUSIVE: "#5a4fcf"}
STATUS_WORDS: dict[str, str] = {PASS: "meets", WARN: "meets, with warnings,", FAIL: "does not meet",
                                NO_DATA: "could not be judged against",
                                INCONCLUSIVE: "could not be judged (inconclusive) against"}
ENDPOINT_TABLE = {"stage": "stage", "stage_name": "name", "users": "users", "endpoint": "endpoint", "requests": "requests",
                  "error_rate": "errors", "rps": "req/s", "avg_ms": "avg ms", "p50_ms": "p50", "p95_ms": "p95",
                  "p99_ms": "p99", "max_ms": "max"}

# under each plot of plots.py, in report.md and report.html
CAPTIONS = {
    "latency_vs_users": "How each endpoint's p50, p95 and p99 grow with users; dashed lines are the SLO levels, "
                        "grey lines the audit's measured baseline.",
    "throughput_vs_users": "Requests per second each stage sustained; below the dotted line the system stopped scaling linearly.",
    "error_rate_by_stage": "Share of failed requests per stage by failure kind, against the SLO levels.",
    "timeline": "The whole run second by second; ramps are grey bands, steady phases coloured.",
    "latency_spectrum": "Latency at every percentile (from the exact histograms): the tail on the right.",
    "socketio": "Socket.IO: share of successful connects and the delay of server pushes per stage.",
    "server": "The server's own view (its /metrics): resident memory with each steady phase's Theil-Sen slope (solid) "
              "and its 95 % interval (dotted), event-loop lag, CPU, cache hit ratio and DB connections.",
    "user_experience": "What a person sees as users grow: the browser users' first and largest contentful paint "
                       "and time to first byte (p50 dotted, p95 solid), with the audit's UX targets dashed.",
}
COMPARE_CAPTIONS = {
    "compare_latency": "Each endpoint's p95 and p99 at every stage, candidate solid, base dashed.",
    "compare_throughput_errors": "Requests per second against users, and the error rate per stage, for both runs.",
    "compare_timeline": "p95 of all endpoints over time (10-s rolling median of the per-second p95) for both runs.",
}


# --- text pieces shared by every form -----------------------------------------------------------------


def verdict_rows(verdict: Verdict) -> pd.DataFrame:
    """One row per criterion: status, name, measured, limits, where, note."""
    return pd.DataFrame([{"status": result.status, "criterion": result.criterion.name, "measured": result.measured_text,
                          "limits": result.criterion.limits_text, "where": result.worst.where if result.worst else "",
                          "note": result.note} for result in verdict.results],
                        columns=["status", "criterion", "measured", "limits", "where", "note"])


def verdict_table(verdict: Verdict) -> str:
    """The table printed at the end of `analyze` and `run`."""
    rows = verdict_rows(verdict)
    notes = [f"  note: {row.criterion}: {row.note}" for row in rows.itertuples() if row.note]
    generator = [f"INCONCLUSIVE: {note}" for note in verdict.generator_notes]
    return "\n".join([verdict.headline, *generator, plain_table(rows.drop(columns="note")), *notes])


def plain_table(frame: pd.DataFrame) -> str:
    """A left-aligned text table for the terminal."""
    cells = _text(frame)
    widths = [max(len(column), *(len(cell) for cell in cells[column])) if len(cells) else len(column) for column in cells.columns]
    lines = ["  ".join(column.ljust(width) for column, width in zip(cells.columns, widths, strict=True))]
    lines += ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True))
              for row in cells.itertuples(index=False)]
    return "\n".join(line.rstrip() for line in lines)


def summary_sentence(verdict: Verdict) -> str:
    """One sentence a manager reads first."""
    sentence = f"MediaNest {STATUS_WORDS[verdict.status]} {verdict.slo.name}"
    if verdict.generator_notes:
        sentence = "; ".join(note[0].upper() + note[1:] for note in verdict.generator_notes) + ". " + sentence
    problems = [result for result in verdict.results if result.status in (FAIL, WARN)]
    if problems:
        sentence += ": " + "; ".join(
            f"{result.criterion.name} {result.status} ({result.measured_text}"
            + (f" at {result.worst.where}" if result.worst else "") + f"; {result.criterion.limits_text})"
            for result in problems)
    missing = [result.criterion.name for result in verdict.results if result.status == NO_DATA]
    if missing:
        sentence += ". Not judged for lack of data: " + ", ".join(missing)
    status = verdict.run_info.get("status")
    if status and status != "completed":
        sentence += f". The run did not complete: {status} ({verdict.run_info.get('stop_reason') or 'no reason recorded'})"
    return sentence + "."


def _baseline_note(verdict: Verdict) -> str:
    slo = verdict.slo
    return f"Grey reference lines: {slo.baseline_source or 'the baseline'} for {', '.join(slo.baseline)}." if slo.baseline else ""


def endpoint_table(run: RunData, phase_is_ramp: bool = False) -> pd.DataFrame:
    """Per stage x endpoint: counts, rates, latency (a censored percentile as "≥ value": requests timed out
    there), and the fan-out of relayed pushes (deliveries per publish of the stage)."""
    rows = run.summary[(run.summary["stage"] > 0) & ((run.summary["phase"] == RAMP) == phase_is_ramp)]
    rows = rows.sort_values(["stage", "endpoint"])
    columns = dict(ENDPOINT_TABLE)
    if "p95_corrected_ms" in rows.columns and rows["p95_corrected_ms"].notna().any():  # open-model stages: side by side
        columns = {**{k: v for k, v in columns.items() if k != "max_ms"}, "p95_corrected_ms": "p95 corrected",
                   "p99_corrected_ms": "p99 corrected", "max_ms": "max"}
    table = rows[list(columns)].rename(columns=columns)
    table["errors"] = (rows["error_rate"] * 100).map("{:.2f} %".format)
    table = table.round({"req/s": 1, "avg ms": 1, "p50": 1, "p95": 1, "p99": 1, "max": 1, "p95 corrected": 1,
                         "p99 corrected": 1})
    for column, label in (("p50_ms", "p50"), ("p95_ms", "p95"), ("p99_ms", "p99")):
        censored = rows[CENSORED_COLUMNS[column]].astype(bool)
        table[label] = table[label].astype(object)
        table.loc[censored, label] = "≥ " + table.loc[censored, label].astype(str)
    table["fan-out"] = push_fanout(rows).reindex(rows.index).map(lambda value: "" if pd.isna(value) else f"{value:.1f}")
    return table


def push_fanout(rows: pd.DataFrame) -> pd.Series:
    """Relay mode: per push row, the deliveries per publish of its stage (NaN where nothing was published)."""
    published = rows[rows["endpoint"].str.startswith("SIO publish ")].groupby("stage")["requests"].sum()
    pushes = rows[rows["endpoint"].str.startswith("SIO push ")]
    return pushes["requests"] / pushes["stage"].map(published).where(lambda count: count > 0)


def open_model_table(run: RunData) -> pd.DataFrame:
    """Per open-model stage (steady phase): the schedule, what the generator achieved (late starts and dropped
    iterations are its or its pool's limits, never MediaNest's), and raw against corrected latency of every
    endpoint together (exact merged histograms)."""
    if "open_model" not in run.stages.columns:
        return pd.DataFrame()
    stages = run.stages[run.stages["open_model"].map(lambda counts: isinstance(counts, dict) and bool(counts))]
    if stages.empty:
        return pd.DataFrame()
    counts = pd.DataFrame(list(stages["open_model"]), index=stages.index)
    steady_s = stages["steady_end"] - stages["steady_start"]
    steady = run.steady[run.steady["stage"].isin(stages.index)]
    percentiles = {"p50_ms": 50.0, "p95_ms": 95.0, "p99_ms": 99.0}
    raw = run.histograms.group_percentiles(steady, ["stage"], percentiles)
    corrected = run.corrected.group_percentiles(steady[steady["p95_corrected_ms"].notna()], ["stage"], percentiles)
    table = pd.DataFrame({
        "stage": stages.index.astype(str) + " " + stages["name"].astype(str), "arrivals": counts["arrivals"],
        "rate/s": counts["rate"], "achieved/s": (counts["iterations"] / steady_s).round(1), "pool": counts["max_users"],
        "started": counts["iterations"], "late": counts["late"], "dropped": counts["dropped"],
        "max late ms": counts["max_lateness_ms"].round(0)}, index=stages.index)
    for column, label in (("p50_ms", "p50"), ("p95_ms", "p95"), ("p99_ms", "p99")):
        table[f"{label} raw"] = raw[column].reindex(table.index).round(1)
        table[f"{label} corrected"] = corrected[column].reindex(table.index).round(1) if len(corrected) else np.nan
    return table.reset_index(drop=True)


OPEN_MODEL_NOTE = ("Open-model stages start iterations on a schedule (rate/s, constant or poisson arrivals) from a pool "
                   "of users. Corrected latency counts from each iteration's intended start, raw from its actual send: "
                   "a gap between them is time the generator could not send on schedule (a stall seen by arriving "
                   "users, hidden from closed-loop ones). Late starts (over 50 ms) and dropped iterations (10 s behind "
                   "the schedule) are limits of the generator or its pool, not of MediaNest.")


UX_PLOT = "user_experience"  # drawn in the User experience section, not among the other plots
UX_TABLE = {"stage": "stage", "users": "users", "endpoint": "figure", "requests": "samples", "failures": "failed",
            "p50_ms": "p50 ms", "p95_ms": "p95 ms", "max_ms": "max ms", "avg_bytes": "avg per load"}


def ux_table(run: RunData) -> pd.DataFrame:
    """Per stage, each browser figure and the protocol users' PAGE TTFB; `avg per load` is the transferred bytes
    (BROWSER load) or the request count (BROWSER requests) of an average page load."""
    steady = run.steady
    rows = steady[(steady["kind"] == "browser") | steady["endpoint"].str.startswith("PAGE ttfb")]
    table = rows.sort_values(["stage", "endpoint"])[list(UX_TABLE)].rename(columns=UX_TABLE)
    timed = ~table["figure"].str.startswith("BROWSER requests")
    table[["p50 ms", "p95 ms", "max ms"]] = table[["p50 ms", "p95 ms", "max ms"]].where(timed, np.nan)
    per_load = table["figure"].str.startswith(("BROWSER load", "BROWSER requests"))
    table["avg per load"] = table["avg per load"].where(per_load, np.nan)
    table["avg per load"] = table["avg per load"].round().astype("Int64")
    return table.round({"p50 ms": 1, "p95 ms": 1, "max ms": 1})


def transactions_table(run: RunData) -> pd.DataFrame:
    """Per stage and transaction: how many, the share that succeeded, latency, and the most frequent failure kind."""
    rows = run.steady[run.steady["kind"] == "txn"].sort_values(["stage", "endpoint"])
    kinds = rows.filter(like="fail_")
    worst = kinds.idxmax(axis=1).str.removeprefix("fail_").where(kinds.max(axis=1) > 0, "") if len(rows) else ""
    return pd.DataFrame({"stage": rows["stage"], "users": rows["users"], "transaction": rows["name"],
                         "count": rows["requests"], "succeeded": (1 - rows["error_rate"]).map("{:.2%}".format),
                         "p50 ms": rows["p50_ms"].round(1), "p95 ms": rows["p95_ms"].round(1),
                         "most frequent failure": worst})


def ux_note(run: RunData) -> str:
    """Why the browser figures are missing, when they are, or what the browsers were kept from: from run.json."""
    browsers = run.info.get("browsers") or {}
    if browsers.get("skipped"):
        return str(browsers["skipped"]) + "."
    if not browsers:
        return "No browser users in this run (a stage's `browsers:` in the scenario adds them)."
    blocked = browsers.get("blocked_requests") or {}
    return ("Requests the browsers made to other hosts were blocked: "
            + ", ".join(f"{host} x{count}" for host, count in blocked.items()) + ".") if blocked else ""


def checks_table(result: CriterionResult) -> pd.DataFrame:
    return pd.DataFrame([{"status": check.status, "stage": "all" if check.stage is None else f"{check.stage} {check.stage_name}",
                          "users": check.users, "endpoint": check.endpoint,
                          "measured": ("≥ " if check.censored else "")
                          + format_value(check.value, result.criterion.metric.unit),
                          "requests": check.requests,
                          **({"longest run over a level": f"{check.sustained_s:g} s" if check.sustained_s is not None else ""}
                             if result.criterion.window_s else {}),
                          "note": check.note} for check in result.checks])


SERVER_COLUMNS = {  # quantity -> (column title, unit for format_value; "" for a count)
    "memory_mb": ("memory (max)", "MB"), "memory_growth_mb_per_h": ("memory growth [95 % interval]", "MB/h"),
    "heap_mb": ("heap (max)", "MB"), "cpu_pct": ("CPU (of a core)", "ratio"),
    "event_loop_lag_p95_ms": ("loop lag p95", "ms"), "loop_lag_p50_ms": ("lag p50 gauge", "ms"),
    "loop_lag_p90_ms": ("lag p90 gauge", "ms"), "loop_lag_p99_ms": ("lag p99 gauge", "ms"), "gc_share": ("GC time", "ratio"),
    "connected_sockets": ("sockets (max)", ""), "db_connections_active": ("DB connections (max)", ""),
    "cache_hit_ratio": ("cache hit ratio", "ratio"), "db_connection_failures": ("DB connection failures", "ratio"),
    "scrape_success": ("scrapes answered", "ratio"),
}


def server_table_text(verdict: Verdict) -> pd.DataFrame:
    """verdict.json's server numbers per stage (steady phase) and for all stages, as readable text."""
    rows = pd.DataFrame(verdict.server.get("stages", []), columns=["stage", "quantity", "value", "low", "high"])
    if rows.empty:
        return rows
    units = rows["quantity"].map(lambda quantity: SERVER_COLUMNS[quantity][1])
    text = [("" if pd.isna(value) else f"{value:.0f}") if unit == "" else format_value(value, unit)
            for value, unit in zip(rows["value"], units, strict=True)]
    interval = [f" [{format_value(low, unit)}, {format_value(high, unit)}]" if pd.notna(low) else ""
                for low, high, unit in zip(rows["low"], rows["high"], units, strict=True)]
    rows = rows.assign(text=[a + b for a, b in zip(text, interval, strict=True)],
                       stage=rows["stage"].map(lambda stage: "all" if stage == 0 else str(stage)))
    table = rows.pivot(index="stage", columns="quantity", values="text")
    table = table[[quantity for quantity in SERVER_COLUMNS if quantity in table]].rename(
        columns={quantity: title for quantity, (title, _) in SERVER_COLUMNS.items()})
    return table.reset_index()


def server_facts(verdict: Verdict) -> list[str]:
    """What was scraped and how it went; the reason when nothing is known of the server."""
    server = verdict.server
    if not server:
        return ["No server telemetry."]
    if server.get("why_none"):
        return [f"{server['why_none']}: the server criteria are NO_DATA, which says nothing about MediaNest."]
    facts = [f"Scraped {server['url']}: {server['scrapes']}."]
    if server.get("failures"):
        facts.append("Failed scrapes by reason: " + ", ".join(f"{reason} {count}" for reason, count in server["failures"].items())
                     + ". Criteria without enough scrapes are NO_DATA: missing telemetry is never read as MediaNest's.")
    per_socket = server.get("memory_mb_per_socket") or {}
    if per_socket.get("value") is not None:
        facts.append(f"Memory per connected socket (Theil-Sen over the run): {per_socket['value']:.3f} MB "
                     f"[{per_socket['low']:.3f}, {per_socket['high']:.3f}].")
    elif per_socket.get("note"):
        facts.append(f"Memory per connected socket: not estimated ({per_socket['note']}).")
    if server.get("container_limit_mb"):
        facts.append(f"Container memory limit (target profile): {server['container_limit_mb']:g} MB.")
    return facts


GENERATOR_NOTE = ("Each generator process during each steady phase: a response that arrives while its event loop is "
                  f"busy is timed late, so latencies there may carry up to {LAG_ALLOWANCE:g} x its loop-lag p95 of the "
                  "generator's own time; a latency failing by less than that is INCONCLUSIVE. A stage a process kept "
                  "past the CPU or lag limits is flagged: its latencies and rates are INCONCLUSIVE.")


def generator_table(run: RunData) -> pd.DataFrame:
    """Per stage and generator process (steady phase), from run.json: CPU, loop lag, the flag, and what its lag may
    have added to the stage's latencies (empty for a folder from before per-stage generator health)."""
    if "generator" not in run.stages:
        return pd.DataFrame()
    health = pd.DataFrame([{"stage": stage, "process": process, **figures}
                           for stage, processes in run.stages["generator"].dropna().items()
                           for process, figures in processes.items()])
    if health.empty:
        return health
    lag = health["loop_lag_p95_ms"] if "loop_lag_p95_ms" in health else pd.Series(np.nan, index=health.index)
    return pd.DataFrame({"stage": health["stage"], "users": health["stage"].map(run.stages["users"]),
                         "process": health["process"], "peak CPU %": health["peak_cpu_pct"].round(0),
                         "loop lag p95 ms": lag.round(1), "worst second's lag p99 ms": health["peak_loop_lag_p99_ms"].round(1),
                         "may add to latencies, ms": (lag * LAG_ALLOWANCE).round(1),
                         "flagged": health["limited"].map({True: "yes", False: ""})})


def server_verdict_rows(verdict: Verdict) -> pd.DataFrame:
    rows = verdict_rows(verdict)
    return rows[[result.criterion.metric.family == "server" for result in verdict.results]]


def run_facts(run: RunData) -> dict[str, str]:
    info = run.info
    return {"scenario": str(info.get("scenario_name", "")), "host": str(info.get("host", "")),
            "target profile": str(info.get("target_profile", "")), "started": str(info.get("started_at", "")),
            "ended": str(info.get("ended_at", "")), "status": f"{info.get('status', '')} ({info.get('stop_reason', '')})",
            "time scale": str(info.get("time_scale", "")), "stages": str(len(run.stages)),
            "requests": f"{int(run.summary['requests'].sum()):,}", "harness": str(info.get("harness_version", "")),
            "git commit": str(info.get("git_commit") or "")}


def top_failures(run: RunData, limit: int = 15) -> pd.DataFrame:
    failures = run.failures
    if failures.empty:
        return failures
    return (failures.groupby(["endpoint", "kind", "message"], as_index=False)["count"].sum()
            .sort_values("count", ascending=False).head(limit))


# --- files --------------------------------------------------------------------------------------------


def write_verdict_json(verdict: Verdict, path: Path, plots: Mapping[str, Path]) -> Path:
    document = {**verdict.to_dict(), "generated_at": datetime.now(UTC).isoformat(),
                "plots": {name: f"plots/{plot.name}" for name, plot in plots.items()}}
    path.write_text(json.dumps(document, indent=2, default=_json_default))
    return path


def _json_default(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def write_junit(verdict: Verdict, path: Path) -> Path:
    """A testcase per criterion: FAIL is a failure, NO_DATA and INCONCLUSIVE are skipped (with the reason in words),
    WARN passes with its message in system-out."""
    counts = verdict.counts()
    tests, failures = str(len(verdict.results)), str(counts[FAIL])
    suite = ElementTree.Element("testsuite", name=f"medianest-load {verdict.slo.name}", tests=tests,
                                failures=failures, errors="0", skipped=str(counts[NO_DATA] + counts[INCONCLUSIVE]),
                                time="0")
    for result in verdict.results:
        case = ElementTree.SubElement(suite, "testcase", classname=f"{verdict.slo.name}.{verdict.run_name}",
                                      name=result.criterion.name, time="0")
        message = f"{result.status}: measured {result.measured_text}; {result.criterion.limits_text}" + (
            f"; at {result.worst.where}" if result.worst else "") + (f"; {result.note}" if result.note else "")
        if result.status == FAIL:
            failure = ElementTree.SubElement(case, "failure", message=message, type="FAIL")
            failure.text = checks_table(result).to_string(index=False)
        elif result.status in (NO_DATA, INCONCLUSIVE):
            ElementTree.SubElement(case, "skipped", message=message)
        ElementTree.SubElement(case, "system-out").text = message
    root = ElementTree.Element("testsuites", name="medianest-load", tests=tests, failures=failures)
    root.append(suite)
    ElementTree.indent(root)
    ElementTree.ElementTree(root).write(path, encoding="utf-8", xml_declaration=True)
    return path


def _text(frame: pd.DataFrame) -> pd.DataFrame:
    """Every cell as text, missing values as empty cells."""
    return frame.astype(object).where(frame.notna(), "").astype(str)


def _markdown_table(frame: pd.DataFrame) -> str:
    if frame.empty:
        return "_none_\n"
    cells = _text(frame).map(lambda text: text.replace("|", "\\|").replace("\n", " "))
    lines = ["| " + " | ".join(cells.columns) + " |", "|" + "---|" * len(cells.columns)]
    lines += ["| " + " | ".join(row) + " |" for row in cells.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def write_markdown(verdict: Verdict, run: RunData, plots: Mapping[str, Path], path: Path, extra: str = "") -> Path:
    """`extra`: further sections (the capacity projection), placed after the plots."""
    parts = [f"# Load test report: {run.info.get('scenario_name', run.name)}", "",
             f"**Verdict: {verdict.status}** ({verdict.slo.name}). {summary_sentence(verdict)}", "",
             "| run | |", "|---|---|", *(f"| {key} | {value} |" for key, value in run_facts(run).items()), "",
             "## Criteria", "", f"SLO set `{verdict.slo.name}`: {verdict.slo.description} (source: {verdict.slo.source}). "
             f"Steady phases are judged; ramps are reported only. {_baseline_note(verdict)}", "",
             _markdown_table(verdict_rows(verdict)),
             "## Server", "", *server_facts(verdict), "", _markdown_table(server_verdict_rows(verdict)),
             _markdown_table(server_table_text(verdict)),
             "## Load generator", "", GENERATOR_NOTE, "", _markdown_table(generator_table(run)),
             "## Plots", ""]
    parts += [f"![{name}](plots/{plot.name})\n\n{CAPTIONS[name]}\n" for name, plot in plots.items() if name != UX_PLOT]
    parts += ["## User experience", "", ux_note(run), ""]
    if UX_PLOT in plots:
        parts += [f"![{UX_PLOT}](plots/{plots[UX_PLOT].name})\n\n{CAPTIONS[UX_PLOT]}\n"]
    parts += [_markdown_table(ux_table(run)), "### Transactions", "", _markdown_table(transactions_table(run))]
    parts += [extra, "## Every check", ""]
    for result in verdict.results:
        parts += [f"### {result.criterion.name}: {result.status}", "", _markdown_table(checks_table(result))]
    open_model = open_model_table(run)
    if len(open_model):
        parts += ["## Open-model stages: raw and corrected latency", "", OPEN_MODEL_NOTE, "", _markdown_table(open_model)]
    parts += ["## Stages x endpoints (steady phases)", "", _markdown_table(endpoint_table(run)),
              "## Ramps (reported, not judged)", "", _markdown_table(endpoint_table(run, phase_is_ramp=True)),
              "## Most frequent failures", "", _markdown_table(top_failures(run))]
    path.write_text("\n".join(parts))
    return path


def _cells(frame: pd.DataFrame) -> list[list[tuple[str, str]]]:
    """A table's rows as (column, text) pairs: the template colours the status column's cells."""
    return [list(zip(frame.columns, row, strict=True)) for row in _text(frame).itertuples(index=False)]


def _base64(path: Path) -> str:
    """A plot inlined as a data: URI, so that the page needs no other file."""
    return base64.b64encode(Path(path).read_bytes()).decode("ascii")


TEMPLATES = Environment(loader=PackageLoader("analysis", "templates"), autoescape=True, undefined=StrictUndefined,
                        trim_blocks=True, lstrip_blocks=True)
TEMPLATES.filters.update(cells=_cells, base64=_base64)
TEMPLATES.globals["status_colors"] = STATUS_COLORS


def render_html(template: str, **context: Any) -> str:
    """A page or section from analysis/templates/, every value autoescaped: endpoint names, notes and failure
    messages come from the target and the user, and must never become markup."""
    return TEMPLATES.get_template(template).render(**context)


def write_html(verdict: Verdict, run: RunData, plots: Mapping[str, Path], path: Path, extra: str = "") -> Path:
    """`extra`: the HTML of further sections (the capacity projection, rendered by render_html), placed after the
    plots."""
    figures = [(name, plot, CAPTIONS[name]) for name, plot in plots.items()]
    path.write_text(render_html(
        "report.html.j2", title=f"Load test report: {run.info.get('scenario_name', run.name)}", run_name=run.name,
        verdict=verdict, summary=summary_sentence(verdict), baseline_note=_baseline_note(verdict),
        criteria=verdict_rows(verdict), server_facts=server_facts(verdict), server_criteria=server_verdict_rows(verdict),
        server_stages=server_table_text(verdict), generator_note=GENERATOR_NOTE, generator=generator_table(run),
        plots=[figure for figure in figures if figure[0] != UX_PLOT],
        ux_note=ux_note(run), ux_plot=next((figure for figure in figures if figure[0] == UX_PLOT), None), ux=ux_table(run),
        transactions=transactions_table(run), extra=extra,
        every_check=[(result.criterion.name, result.status, checks_table(result)) for result in verdict.results],
        open_model=open_model_table(run), open_model_note=OPEN_MODEL_NOTE, endpoints=endpoint_table(run),
        ramps=endpoint_table(run, phase_is_ramp=True), failures=top_failures(run), facts=run_facts(run)), encoding="utf-8")
    return path


# --- comparing two runs -------------------------------------------------------------------------------

COMPARE_UNITS = {"p95_ms": "ms", "p99_ms": "ms", "error_rate": "ratio", "rps": "req/s"}
OUTCOME_STATUS = {CompareOutcome.REGRESSION: FAIL, CompareOutcome.NO_REGRESSION: PASS, CompareOutcome.INCONCLUSIVE: NO_DATA}


def comparison_rows(comparison: Comparison, everything: bool = False) -> pd.DataFrame:
    """The readable comparison table (by default only what moved enough to matter)."""
    table = comparison.table if everything else comparison.table[~comparison.table["verdict"].isin([UNCHANGED, INFO])]
    units = table["metric"].map(COMPARE_UNITS)
    readable = pd.DataFrame({
        "verdict": table["verdict"], "stage": table["stage"].astype(str) + " " + table["stage_name"].astype(str),
        "users": table["users"], "endpoint": table["endpoint"], "metric": table["metric"],
        "base": [format_value(value, unit) for value, unit in zip(table["value_base"], units, strict=True)],
        "candidate": [format_value(value, unit) for value, unit in zip(table["value_candidate"], units, strict=True)],
        "change": table["change_pct"].map(lambda pct: "" if pd.isna(pct) else f"{pct:+.1f} %"),
        "p (worse, Holm)": table["p_worse"].map(lambda p: "" if pd.isna(p) else f"{p:.2g}"),
        "windows": table["windows_base"].astype(str) + " / " + table["windows_candidate"].astype(str)
        + " of " + table["window_s"].astype(str) + " s"})
    order = {REGRESSION: 0, IMPROVEMENT: 1, NOISE: 2, INSUFFICIENT: 3, UNCHANGED: 4, INFO: 5}
    return readable.iloc[np.argsort(readable["verdict"].map(order).to_numpy(), kind="stable")]


def server_comparison_rows(comparison: Comparison) -> pd.DataFrame:
    """The server's memory growth and loop lag in both runs, readable (empty without telemetry in both)."""
    table = comparison.server
    if table is None or table.empty:
        return pd.DataFrame()
    units = table["quantity"].map({"memory_growth_mb_per_h": "MB/h", "event_loop_lag_p95_ms": "ms"})

    def shown(side: str) -> list[str]:
        return [format_value(value, unit) + (f" [{format_value(low, unit)}, {format_value(high, unit)}]" if pd.notna(low) else "")
                for value, low, high, unit in zip(table[f"value_{side}"], table[f"low_{side}"], table[f"high_{side}"], units,
                                                  strict=True)]

    return pd.DataFrame({"stage": table["stage"].map(lambda stage: "all" if stage == 0 else str(stage)),
                         "server metric": table["quantity"], "base": shown("base"), "candidate": shown("candidate"),
                         "verdict": table["verdict"]})
def undecided_rows(comparison: Comparison) -> pd.DataFrame:
    """The rows that could not be judged (stage-level ones first), and what would let them be."""
    table = comparison.undecided
    table = table.iloc[np.argsort((table["endpoint"] != ALL_ENDPOINTS).to_numpy(), kind="stable")]
    return pd.DataFrame({"stage": table["stage"].astype(str) + " " + table["stage_name"].astype(str),
                         "endpoint": table["endpoint"], "metric": table["metric"], "needs": table["needs"]})


def comparison_text(comparison: Comparison) -> str:
    rows = comparison_rows(comparison)
    clear = rows[rows["verdict"].isin([REGRESSION, IMPROVEMENT])]
    body = plain_table(clear) if len(clear) else "no statistically clear change beyond the practical thresholds"
    unclear, undecided = (rows["verdict"] == NOISE).sum(), undecided_rows(comparison)
    tail = ([f"  {unclear} changes beyond the practical thresholds were not statistically clear (compare.md lists them)"]
            if unclear else [])
    if len(undecided):
        tail += [f"  {len(undecided)} rows could not be judged (too few windows): nothing is claimed for them",
                 *(f"    {row.stage} {row.endpoint} {row.metric}: {row.needs}" for row in undecided.head(12).itertuples()),
                 *([f"    ... and {len(undecided) - 12} more (compare.md lists them)"] if len(undecided) > 12 else [])]
    server = server_comparison_rows(comparison)
    server_lines = ["server (shown only, not part of the exit code):", plain_table(server)] if len(server) else []
    return "\n".join([*(f"note: {note}" for note in comparison.notes), comparison.headline, body, *tail, *server_lines])


def _compare_rule(comparison: Comparison) -> str:
    t = comparison.thresholds
    window = (f"{t.window_s}-s windows" if t.window_s else "windows (per stage, the largest length giving "
              f"{t.min_windows} in both runs; column window_s)")
    return (f"A regression is a change that is both statistically clear (one-sided Mann-Whitney U on {window} "
            f"of the 1-second series, and for the error rate also Fisher's exact test on the totals, Holm-adjusted "
            f"p < {t.alpha:g} over every test, at least {t.min_windows} windows per run) and practically "
            f"large (at least {t.relative * 100:g} %, and {t.latency_ms:g} ms for latency or {t.error_points * 100:g} "
            "percentage points for the error rate). Values are exact run-level steady-phase figures. NO REGRESSION "
            "needs every stage-level row judged, and every row that moved beyond the thresholds towards worse; "
            "otherwise the outcome is INCONCLUSIVE.")


def write_comparison(comparison: Comparison, plots: Mapping[str, Path], folder: Path,
                     report: bool = True) -> dict[str, Path]:
    """compare.json, and unless `report` is off compare.md and compare.html."""
    folder.mkdir(parents=True, exist_ok=True)
    document = {"verdict": comparison.outcome, "exit_code": comparison.exit_code,
                "allow_inconclusive": comparison.allow_inconclusive,
                "base": str(comparison.base.path), "candidate": str(comparison.candidate.path),
                "thresholds": comparison.thresholds.__dict__, "notes": list(comparison.notes),
                "rows": json.loads(comparison.table.to_json(orient="records")),
                "server": json.loads(comparison.server.to_json(orient="records")) if comparison.server is not None else [],
                "plots": {name: f"plots/{plot.name}" for name, plot in plots.items()}}
    paths = {"json": folder / "compare.json", "md": folder / "compare.md", "html": folder / "compare.html"}
    paths["json"].write_text(json.dumps(document, indent=2))
    if not report:
        return {"json": paths["json"]}
    title = f"Comparison: {comparison.candidate.name} against {comparison.base.name}"
    status = OUTCOME_STATUS[comparison.outcome]
    moved, everything = comparison_rows(comparison), comparison_rows(comparison, everything=True)
    undecided = undecided_rows(comparison)
    paths["md"].write_text("\n".join([
        f"# {title}", "", *(f"- **note:** {note}" for note in comparison.notes), "",
        f"**{comparison.headline}**", "", _compare_rule(comparison), "", "## What moved", "", _markdown_table(moved),
        *(["## Could not be judged", "", _markdown_table(undecided)] if len(undecided) else []), 
        "## Server (memory growth with its 95 % interval, loop lag; shown only)", "",
        _markdown_table(server_comparison_rows(comparison)), "## Plots", "",
        *(f"![{name}](plots/{plot.name})\n\n{COMPARE_CAPTIONS[name]}\n" for name, plot in plots.items()),
        "## Every stage x endpoint x metric", "", _markdown_table(everything)]))
    paths["html"].write_text(render_html(
        "compare.html.j2", title=title, notes=comparison.notes, status=status, outcome=document["verdict"],
        headline=comparison.headline, rule=_compare_rule(comparison), moved=moved, undecided=undecided,
        server=server_comparison_rows(comparison), everything=everything,
        plots=[(name, plot, COMPARE_CAPTIONS[name]) for name, plot in plots.items()]), encoding="utf-8")
    return paths
