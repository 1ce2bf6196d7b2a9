"""A browser user: real headless Chromium loading the frontend cold, as a person's first visit does.

Runs as its own process (`python -m locustfiles.browser`), started by medianest_load.browsers: Playwright's
sync API has an event loop of its own, which must never stall the gevent users. It reads one JSON settings
line on stdin, loops until stdin closes (the runner stops it, or the runner died), and writes one JSON line per
sample on stdout; the runner fires them as Locust request events, so the recorder judges them per stage.

Each iteration takes a fresh context (no cache, no cookies), loads the page, reads the browser's own
Navigation and Paint Timing (TTFB, FCP, LCP, DOMContentLoaded, load, transferred bytes, request count), then
makes one interaction that calls the API (the dashboard's stats, fetched by the page and painted) and times it
to the next frame. Every request the browser makes passes the host guard: any other host is aborted and counted.
This module never imports locust: no gevent patching in the browser's process.
"""

from __future__ import annotations

import json
import os
import random
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from medianest_load.failures import failure_for_status
from medianest_load.host_guard import is_loopback

# Chromium (which inherits it) yields the CPU to the load generator's users: a browser user is a probe of what a
# person sees, and must not become the generator's bottleneck on a shared machine
NICENESS = 10


def browser_cores(cores: int) -> set[int]:
    """The cores the browsers keep to (the last quarter, at least one), so that on a generator box Chromium never
    takes the cores the protocol users' event loops run on: niceness alone left the generator's loop lag at
    400 ms on 2 cores, pinning brought it to 3 ms (benchmarks/bench_browsers.py). One core: no choice."""
    return set(range(cores - max(1, cores // 4), cores)) if cores > 1 else set()
LAUNCH_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync")

# After the load event: the browser's own timings, once the buffered largest-contentful-paint entries arrived.
TIMINGS_JS = """async () => {
  const lcp = await new Promise(resolve => {
    let last = null;
    new PerformanceObserver(list => { const e = list.getEntries(); last = e[e.length - 1].startTime; })
      .observe({type: "largest-contentful-paint", buffered: true});
    requestAnimationFrame(() => setTimeout(() => resolve(last), 0));
  });
  const nav = performance.getEntriesByType("navigation")[0];
  const fcp = performance.getEntriesByName("first-contentful-paint")[0];
  const resources = performance.getEntriesByType("resource");
  return {ttfb: nav.responseStart, dcl: nav.domContentLoadedEventEnd, load: nav.loadEventEnd,
          fcp: fcp ? fcp.startTime : null, lcp: lcp,
          bytes: nav.transferSize + resources.reduce((sum, r) => sum + r.transferSize, 0),
          requests: 1 + resources.length};
}"""

# The interaction: the page fetches the dashboard's stats and paints them; timed until the next frame.
INTERACTION_JS = """async ([url, token]) => {
  const started = performance.now();
  const response = await fetch(url, {headers: token ? {Authorization: "Bearer " + token} : {}});
  const text = await response.text();
  const panel = document.createElement("pre");
  panel.textContent = text.slice(0, 200);
  document.body.appendChild(panel);
  await new Promise(resolve => requestAnimationFrame(() => resolve()));
  return {ms: performance.now() - started, status: response.status, bytes: text.length};
}"""


@dataclass(frozen=True, kw_only=True)
class BrowserSettings:
    """The one JSON line the runner sends on stdin (stdin, not argv: it may carry a bearer token)."""

    page_url: str
    api_url: str  # what the interaction fetches
    page_name: str  # the sample names' route: `BROWSER fcp <page_name>`
    api_name: str
    executable: str
    allowed_hosts: tuple[str, ...] = ()
    think_min: float = 1.0
    think_max: float = 3.0
    timeout_s: float = 30.0
    token: str | None = field(default=None, repr=False)

    @classmethod
    def from_json(cls, line: str) -> BrowserSettings:
        raw = json.loads(line)
        return cls(**{**raw, "allowed_hosts": tuple(raw.get("allowed_hosts", ()))})


def emit(message: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def sample(name: str, ms: float, length: int = 0, kind: str = "", message: str = "") -> None:
    emit({"name": name, "ms": round(float(ms), 3), "length": int(length), "kind": kind, "message": message})


def failure_of(error: Exception) -> tuple[str, str]:
    """(kind, message) of a navigation error, in the harness's failure taxonomy, with a message that stays the
    same from one occurrence to the next."""
    text = str(error)
    if "Timeout" in type(error).__name__ or "Timeout" in text.split("\n", 1)[0]:
        return "timeout", "timed out"
    if "ERR_CONNECTION_REFUSED" in text:
        return "connection_refused", "connection refused"
    return "other", text.split("\n", 1)[0][:120]


class HostGuard:
    """Aborts every request to a host that is neither loopback nor allowed, and reports it once per host."""

    def __init__(self, allowed_hosts: tuple[str, ...]):
        self.allowed = {host.lower() for host in allowed_hosts}

    def allows(self, url: str) -> bool:
        host = (urlsplit(url).hostname or "").lower()
        return is_loopback(host) or host in self.allowed

    def route(self, route: Any) -> None:
        url = route.request.url
        if self.allows(url):
            route.continue_()
        else:
            route.abort("blockedbyclient")
            emit({"blocked": urlsplit(url).hostname or url[:60]})

    def route_web_socket(self, socket: Any) -> None:
        if self.allows(socket.url):
            socket.connect_to_server()
        else:
            socket.close()
            emit({"blocked": urlsplit(socket.url).hostname or socket.url[:60]})


def visit(browser: Any, settings: BrowserSettings, guard: HostGuard) -> None:
    """One cold visit and one interaction, as samples. A failed load ends the visit with a failed `load` sample."""
    context = browser.new_context(service_workers="block")  # a worker could fetch past the routes
    try:
        context.route("**/*", guard.route)
        context.route_web_socket("**/*", guard.route_web_socket)
        page = context.new_page()
        page.set_default_timeout(settings.timeout_s * 1000)
        started = time.perf_counter()
        try:
            response = page.goto(settings.page_url, wait_until="load")
            status = response.status if response is not None else 0
            failure = failure_for_status(status)
            if failure is not None:
                sample(f"load {settings.page_name}", (time.perf_counter() - started) * 1000, 0, failure.kind,
                       str(failure))
                return
            page.wait_for_function("performance.getEntriesByType('navigation')[0].loadEventEnd > 0")
            timings = page.evaluate(TIMINGS_JS)
        except Exception as error:  # noqa: BLE001 - any navigation error is this visit's failure
            kind, message = failure_of(error)
            sample(f"load {settings.page_name}", (time.perf_counter() - started) * 1000, 0, kind, message)
            return
        for metric in ("ttfb", "fcp", "lcp", "dcl"):
            if timings[metric] is not None:
                sample(f"{metric} {settings.page_name}", timings[metric])
        sample(f"load {settings.page_name}", timings["load"], timings["bytes"])
        sample(f"requests {settings.page_name}", 0, timings["requests"])
        interact(page, settings)
    finally:
        context.close()


def interact(page: Any, settings: BrowserSettings) -> None:
    name = f"interactive {settings.api_name}"
    started = time.perf_counter()
    try:
        result = page.evaluate(INTERACTION_JS, [settings.api_url, settings.token])
    except Exception as error:  # noqa: BLE001 - a fetch the page could not make is this sample's failure
        kind, message = failure_of(error)
        sample(name, (time.perf_counter() - started) * 1000, 0, kind, message)
        return
    failure = failure_for_status(result["status"])
    sample(name, result["ms"], result["bytes"], failure.kind if failure else "", str(failure) if failure else "")


def watch_stdin(stop: threading.Event) -> None:
    """stdin closing is the stop signal: the runner closes it, and so does the runner's death."""
    sys.stdin.read()
    stop.set()


def main() -> None:
    from playwright.sync_api import sync_playwright

    os.nice(NICENESS)
    if cores := browser_cores(os.cpu_count() or 1):
        os.sched_setaffinity(0, cores)  # Chromium's processes inherit it
    settings = BrowserSettings.from_json(sys.stdin.readline())
    stop = threading.Event()
    threading.Thread(target=watch_stdin, args=(stop,), daemon=True).start()
    guard = HostGuard(settings.allowed_hosts)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=settings.executable, args=list(LAUNCH_FLAGS),
                                             timeout=settings.timeout_s * 1000)
        emit({"ready": True})
        try:
            while not stop.is_set():
                visit(browser, settings, guard)
                stop.wait(random.uniform(settings.think_min, settings.think_max))
        finally:
            browser.close()


if __name__ == "__main__":
    main()
