"""The capacity projection's outputs: projection.json (the source of truth), projection.md, plots/projection.png,
and the "Capacity projection" section report.md and report.html embed when a projection exists. Every text
form is rendered from the JSON document, so `analyze` shows a saved projection without refitting."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd

from analysis.load import ResultsError
from analysis.project import CONFIDENCE, RESAMPLES, Interval, MemoryProjection, Projection, usl
from analysis.report import _markdown_table, plain_table, render_html

JSON_NAME, MARKDOWN_NAME, PLOT_NAME = "projection.json", "projection.md", "projection.png"
MODEL = "X(N) = lambda N / (1 + sigma (N - 1) + kappa N (N - 1)); R(N) = N / X(N) - Z"
TITLES = {"projections": "Projected", "verdicts": "Against the SLO set", "parameters": "Parameters",
          "fit": "Fit per stage", "holdout": "Holdout validation", "memory": "Resident memory per stage"}
CAPTION = ("Left: steady HTTP throughput per stage (95 % bootstrap intervals), the USL fit and its 95 % band, the "
           "peak N* and the projected user counts. Right: measured mean and p95 response time, Little's-law R(N) "
           "with its band, and the p95 estimates at the projected user counts (log scale). Where the server's memory was "
           "scraped, a third panel: each stage's steady resident memory, the fitted MB per user with its 95 % band, "
           "the container limit and the users at which memory reaches it.")


def _number(value: float) -> float | None:
    """JSON has no infinity: an unbounded figure (N* when kappa = 0) is null."""
    return float(value) if math.isfinite(value) else None


def _interval(value: Interval) -> dict[str, float | None]:
    return {"value": _number(value.value), "low": _number(value.low), "high": _number(value.high)}


def peak_text(projection: Projection) -> str:
    """One sentence on the peak: where it is, or that the measured ladder never bent."""
    peak, x_max, top = projection.peak_users, projection.max_throughput, int(projection.fit.users.max())
    if projection.peak_reached:
        return (f"Peak N* = {peak.value:,.0f} users ({_range(peak, '{:,.0f}')}), X_max = {x_max.value:,.1f} req/s "
                f"({_range(x_max, '{:,.1f}')}).")
    sentence = f"N* is not reached within the measured range (up to {top:,} users)"
    if projection.kappa.low <= 0:
        sentence += "; kappa's interval includes 0: the ladder never bent down"
    if math.isfinite(peak.value):
        sentence += f"; the model would put it at {peak.value:,.0f} users ({_range(peak, '{:,.0f}')}), an extrapolation"
    return sentence + "."


def _range(value: Interval, style: str) -> str:
    shown = [style.format(bound) if math.isfinite(bound) else "unbounded" for bound in (value.low, value.high)]
    return f"95 % interval {shown[0]} to {shown[1]}"


def memory_text(memory: MemoryProjection) -> str:
    """What the memory fit says: MB per user, and where memory meets the container limit."""
    sentence = (f"Resident memory grows {memory.mb_per_user.value:,.3f} MB per user ({_range(memory.mb_per_user, '{:,.3f}')}) "
                f"from {memory.base_mb.value:,.0f} MB ({_range(memory.base_mb, '{:,.0f}')}): least squares on the "
                f"steady memory of {len(memory.stages)} stages, R^2 = {memory.r_squared:.3f}; intervals from "
                "resampling the stages")
    reach = memory.limit_users
    if memory.limit_mb is None or reach is None:
        return sentence + ". The target profile sets no metrics.container_limit_mb: no users at the limit."
    if not math.isfinite(reach.value):
        return sentence + f". It does not grow with users: it never reaches the {memory.limit_mb:,.0f} MB container limit."
    return sentence + (f". It reaches the {memory.limit_mb:,.0f} MB container limit at {reach.value:,.0f} users "
                       f"({_range(reach, '{:,.0f}')}).")


def _memory_document(projection: Projection) -> dict[str, Any]:
    memory = projection.memory
    if memory is None:
        return {"projected": False, "text": projection.memory_note}
    stages = memory.stages.assign(fitted=memory.at(memory.stages["users"]))
    return {"projected": True, "text": memory_text(memory), "model": "memory_mb = base_mb + mb_per_user N",
            "mb_per_user": _interval(memory.mb_per_user), "base_mb": _interval(memory.base_mb),
            "r_squared": memory.r_squared, "limit_mb": memory.limit_mb,
            "limit_users": None if memory.limit_users is None else _interval(memory.limit_users),
            "stages": json.loads(stages.to_json(orient="records"))}


def to_document(projection: Projection, run_name: str, resamples: int = RESAMPLES) -> dict[str, Any]:
    ladder, fit = projection.ladder, projection.fit
    stages = ladder.stages.copy()
    stages["fitted"] = usl(stages["users"].to_numpy(dtype=float), fit.params)
    stages["residual_pct"] = (stages["throughput"] / stages["fitted"] - 1) * 100
    holdout = projection.holdout
    return {
        "run": run_name, "generated_at": datetime.now(UTC).isoformat(), "slo": projection.slo_name,
        "model": MODEL, "think_time_s": ladder.think_s, "window_s": ladder.window_s, "resamples": resamples,
        "confidence": CONFIDENCE,
        "parameters": {"lambda": _interval(projection.lam), "sigma": _interval(projection.sigma),
                       "kappa": _interval(projection.kappa)},
        "peak": {"reached": projection.peak_reached, "users": _interval(projection.peak_users),
                 "throughput": _interval(projection.max_throughput), "text": peak_text(projection)},
        "fit": {"r_squared": fit.r_squared, "stages_used": len(fit.users), "failed_resamples": fit.failed_resamples},
        "p95_ratio": {"value": projection.p95_ratio, "stage": projection.p95_ratio_stage},
        "stages": json.loads(stages.drop(columns=["requests", "failures"]).to_json(orient="records")),
        "projections": [{
            "users": p.users, "extrapolation": p.extrapolation, "beyond_peak": p.beyond_peak, "status": str(p.status),
            "labels": list(p.labels), "throughput": _interval(p.throughput), "response_ms": _interval(p.response_ms),
            "p95_estimate_ms": _interval(p.p95_estimate_ms),
            "memory_mb": None if p.memory_mb is None else _interval(p.memory_mb),
            "verdicts": [{**v, "status": str(v["status"])} for v in p.verdicts]} for p in projection.projected],
        "holdout": None if holdout is None else {
            "k": holdout.k, "parameters": dict(zip(("lambda", "sigma", "kappa"), map(float, holdout.params), strict=True)),
            "max_throughput_error_pct": holdout.max_throughput_error_pct,
            "max_response_error_pct": float(holdout.table["response_error_pct"].abs().max()),
            "stages": json.loads(holdout.table.to_json(orient="records"))},
        "memory": _memory_document(projection),
        "notes": list(projection.notes),
        "plot": f"plots/{PLOT_NAME}",
    }


def _figure(value: dict[str, float | None], style: str = "{:,.1f}") -> str:
    """'73.2 (70.4 to 75.6)'; 'not reached' for an unbounded figure."""
    def shown(number: float | None) -> str:
        return "unbounded" if number is None else style.format(number)
    return f"{shown(value['value'])} ({shown(value['low'])} to {shown(value['high'])})"


def _milliseconds(value: dict[str, float | None]) -> str:
    return _figure(value, "{:,.0f}") + " ms"


def tables(document: dict[str, Any]) -> dict[str, pd.DataFrame]:
    """The projection's tables, as every text form shows them."""
    parameters = pd.DataFrame([{"parameter": name, "value (95 % interval)": _figure(value, "{:.4g}")}
                               for name, value in document["parameters"].items()])
    projections = pd.DataFrame([{
        "users": f"{p['users']:,}", "x measured": f"{p['extrapolation']:.1f}",
        "throughput req/s": _figure(p["throughput"]), "response time (Little)": _milliseconds(p["response_ms"]),
        "p95 (estimate)": _milliseconds(p["p95_estimate_ms"]),
        "peak": document["peak"]["text"].split(";")[0].rstrip(".") if not p["beyond_peak"] else "beyond the peak",
        **({"memory MB": _figure(p["memory_mb"], "{:,.0f}")} if p.get("memory_mb") else {}),
        "status": p["status"], "verdict": "; ".join(p["labels"]) or "within the measured range"}
        for p in document["projections"]])
    verdicts = pd.DataFrame([{"users": f"{p['users']:,}", "status": v["status"], "criterion": v["criterion"],
                              "projected": _figure({k: v[k] for k in ("value", "low", "high")}), "limits": v["limits"],
                              "note": v["note"]} for p in document["projections"] for v in p["verdicts"]])
    stages = pd.DataFrame(document["stages"])
    fit_table = pd.DataFrame({
        "stage": stages["stage"], "users": stages["users"], "used": stages["usable"].map({True: "yes", False: "no"}),
        "req/s": stages["throughput"].round(1), "fitted": stages["fitted"].round(1),
        "residual": stages["residual_pct"].map(lambda v: "" if pd.isna(v) else f"{v:+.1f} %"),
        "mean ms": stages["mean_ms"].round(1), "Little R ms": stages["little_ms"].round(1),
        "p95 ms": stages["p95_ms"].round(1),
        "errors": (stages["error_rate"] * 100).map(lambda v: "" if pd.isna(v) else f"{v:.2f} %"),
        "note": stages["note"]})
    result = {"parameters": parameters, "projections": projections, "verdicts": verdicts, "fit": fit_table}
    if document["holdout"]:
        held = pd.DataFrame(document["holdout"]["stages"])
        result["holdout"] = pd.DataFrame({
            "stage": held["stage"], "users": held["users"], "req/s measured": held["throughput"].round(1),
            "req/s predicted": held["predicted_throughput"].round(1),
            "error": held["throughput_error_pct"].map("{:+.1f} %".format), "mean ms measured": held["mean_ms"].round(1),
            "R ms predicted": held["predicted_ms"].round(1), "R error": held["response_error_pct"].map("{:+.1f} %".format)})
    memory = document.get("memory") or {}  # a projection.json from before the memory projection has none
    if memory.get("projected"):
        per_stage = pd.DataFrame(memory["stages"])
        result["memory"] = pd.DataFrame({"stage": per_stage["stage"], "users": per_stage["users"],
                                         "memory MB (steady mean)": per_stage["memory_mb"].round(1),
                                         "fitted MB": per_stage["fitted"].round(1), "scrapes": per_stage["scrapes"]})
    return result


def sentences(document: dict[str, Any]) -> list[str]:
    """The prose around the tables: model, fit quality, holdout, notes."""
    fit, ratio = document["fit"], document["p95_ratio"]
    lines = [f"Universal Scalability Law fitted to {fit['stages_used']} steady stages by bounded least squares "
             f"(sigma, kappa >= 0); 95 % intervals from {document['resamples']:,} bootstrap resamples of each stage's "
             f"{document['window_s']}-s windows. {MODEL}, with the scenario's mean think time Z = "
             f"{document['think_time_s']:g} s. R^2 = {fit['r_squared']:.3f}.",
             document["peak"]["text"],
             f"The p95 estimate is the p95 / mean ratio measured at stage {ratio['stage']} ({ratio['value']:.2f}) "
             "times R(N): an estimate, not a measurement."]
    memory = (document.get("memory") or {}).get("text")
    if memory:
        lines.append(memory[0].upper() + memory[1:] + ("" if memory.endswith(".") else "."))
    if document["holdout"]:
        held = document["holdout"]
        lines.append(f"Holdout: fitted without the last {held['k']} stages, the model predicts their throughput within "
                     f"{held['max_throughput_error_pct']:.1f} % and their response time within "
                     f"{held['max_response_error_pct']:.1f} %.")
    return lines + [f"Note: {note}" for note in document["notes"]]


def markdown_section(document: dict[str, Any], heading: str = "##") -> str:
    parts = [f"{heading} Capacity projection", "", *(f"{line}\n" for line in sentences(document)),
             f"![projection]({document['plot']})", "", CAPTION, ""]
    titles = {**TITLES, "verdicts": f"Against {document['slo']}"}
    for name, table in tables(document).items():
        parts += [f"{heading}# {titles[name]}", "", _markdown_table(table)]
    return "\n".join(parts)


def html_section(document: dict[str, Any], plot: Path) -> str:
    titles = {**TITLES, "verdicts": f"Against {document['slo']}"}
    return render_html("projection.html.j2", sentences=sentences(document),
                       plot=("projection", plot, CAPTION) if plot.is_file() else None,
                       tables=[(titles[name], table) for name, table in tables(document).items()])


def write_projection(projection: Projection, document: dict[str, Any], folder: Path) -> list[Path]:
    """projection.json, projection.md and plots/projection.png into folder."""
    from analysis.plots import projection_plot  # here: the report's text needs this module, not matplotlib

    (folder / "plots").mkdir(parents=True, exist_ok=True)
    plot = projection_plot(projection, folder / "plots" / PLOT_NAME)
    json_path, markdown_path = folder / JSON_NAME, folder / MARKDOWN_NAME
    json_path.write_text(json.dumps(document, indent=2))
    body = markdown_section(document, heading="#").split("\n", 1)[1]
    markdown_path.write_text(f"# Capacity projection: {document['run']}\n\n" + body)
    return [json_path, markdown_path, plot]


def saved_sections(folder: Path) -> tuple[str, str]:
    """(markdown, html) of the projection saved in folder, or empty texts when there is none."""
    path = folder / JSON_NAME
    if not path.is_file():
        return "", ""
    try:
        document = json.loads(path.read_text())
        return markdown_section(document), html_section(document, folder / document["plot"])
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        raise ResultsError(f"{path}: not a projection as `medianest-load project` writes it ({type(error).__name__}: "
                           f"{error}); expected docs/analysis.md's format, or delete it") from None


def summary_text(document: dict[str, Any]) -> str:
    """What the terminal shows."""
    table = tables(document)["projections"]
    return "\n".join([f"capacity projection ({document['run']}): R^2 {document['fit']['r_squared']:.3f}; "
                      + document["peak"]["text"], plain_table(table.drop(columns=["peak"])),
                      *(f"  {line}" for line in sentences(document)[3:])])
