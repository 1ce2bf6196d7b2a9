"""report.html and compare.html are rendered with autoescaping: an endpoint name, a stage name, a scenario name or a
failure message that holds markup (they come from the target and the user) shows as text, never as an element.
The results folder is a real one, written by the recorder with a fake clock, and analysed by the real command."""

import json
from html.parser import HTMLParser
from pathlib import Path

from click.testing import CliRunner

from medianest_load.cli import main
from medianest_load.failures import HttpServerError
from medianest_load.recorder import Recorder

HOSTILE = '<script>alert("x")</script>'
ESCAPED = "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;"


class Clock:
    def __init__(self, start: float) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now


class Elements(HTMLParser):
    """Every start tag of a page, and its text."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)

    def handle_data(self, data: str) -> None:
        self.text.append(data)


def parsed(path: Path) -> Elements:
    elements = Elements()
    elements.feed(path.read_text(encoding="utf-8"))
    return elements


def hostile_run(folder: Path) -> Path:
    """Two 10-s stages whose endpoint, stage and scenario names carry markup, and whose failures' message does."""
    clock = Clock(1_760_000_000.0)
    recorder = Recorder(clock=clock)
    stages = []
    for index, users in enumerate((2, 4), start=1):
        recorder.enter(index, f"stage {HOSTILE}", users, "steady")
        start = clock.now
        for second in range(10):
            for request in range(5 * users):
                failed = request == 0 and second % 2 == 0
                recorder.on_request("GET", f"/api/{HOSTILE}", 40.0 + request, 200,
                                    HttpServerError(f"HTTP 503 {HOSTILE}") if failed else None)
            clock.now += 1.0
            recorder.close_second(users)
        stages.append({"index": index, "name": f"stage {HOSTILE}", "users": users, "spawn_rate": float(users),
                       "ramp_start": start, "steady_start": start, "steady_end": clock.now, "planned_hold_s": 10})
    recorder.finish()
    folder.mkdir(parents=True)
    recorder.write(folder)
    (folder / "run.json").write_text(json.dumps({
        "scenario": {"name": HOSTILE, "think_time": {"min_s": 0.5, "max_s": 0.5}}, "scenario_name": HOSTILE,
        "host": "http://127.0.0.1:9", "slo": "staging-gate", "status": "completed", "stop_reason": "completed",
        "generator_cpu_saturated": False, "time_scale": 1.0, "stages": stages}))
    return folder


def test_markup_in_names_and_messages_is_escaped_in_report_html_and_compare_html(tmp_path):
    folder = hostile_run(tmp_path / "hostile")
    analyzed = CliRunner().invoke(main, ["analyze", str(folder)])
    assert analyzed.exit_code == 1, "the failures break the error-rate criterion: " + analyzed.output

    page = parsed(folder / "report.html")
    assert "script" not in page.tags, "markup from the results must never become an element"
    text = "".join(page.text)
    assert f"Load test report: {HOSTILE}" in text, "the scenario name is shown, as text"
    assert f"GET /api/{HOSTILE}" in text and f"stage {HOSTILE}" in text and f"HTTP 503 {HOSTILE}" in text
    source = (folder / "report.html").read_text(encoding="utf-8")
    assert ESCAPED in source and HOSTILE not in source
    assert {"table", "figure", "img", "details"} <= set(page.tags) and page.tags.count("h2") >= 8
    assert f"GET /api/{HOSTILE}" in (folder / "report.md").read_text(), "report.md shows names as they are"

    compared = CliRunner().invoke(main, ["compare", str(folder), str(folder), "--out", str(tmp_path / "compare")])
    assert compared.exit_code == 0, "a run against itself: no regression. " + compared.output
    comparison = parsed(tmp_path / "compare" / "compare.html")
    assert "script" not in comparison.tags and f"GET /api/{HOSTILE}" in "".join(comparison.text)
