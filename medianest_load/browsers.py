"""The runner's side of the browser users: one child process per browser (locustfiles/browser.py), its samples
read by a greenlet and fired as Locust request events, so the recorder records them like any other sample.

Chromium runs outside this process: its driver's event loop never competes with the gevent users. Without a
Chromium executable the run goes on without browsers, saying so in one line (UX criteria are then NO_DATA).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import IO, Any

import gevent
import httpx

from locustfiles.browser import BrowserSettings
from locustfiles.common import dig
from medianest_load.failures import HarnessFailure, failure_of_kind
from medianest_load.paths import REPO_ROOT
from medianest_load.secrets import register_secret
from medianest_load.settings import HarnessSettings

log = logging.getLogger("medianest_load.browsers")

EXECUTABLE_ENV = "MEDIANEST_CHROMIUM"  # the Chromium to drive: a name on PATH or a path
DEFAULT_EXECUTABLE = "chromium"  # Debian's package; Playwright's own browser downloads are never used
VISIT_TIMEOUT_S = 30.0  # a cold load moves the whole bundle: at least this long before it fails as timeout
STOP_GRACE_S = 10.0  # beyond the visit timeout: a browser still running then is killed
READY_TIMEOUT_S = 60.0
PYTHON_ERROR = re.compile(r"^[\w.]+(Error|Exception)\b")  # the child's exception line in its stderr
MAX_CRASHES = 3  # a browser that keeps dying (a wrong executable) is not restarted every second
REQUEST_TYPE = "BROWSER"

FireRequest = Callable[..., None]  # Locust's events.request.fire


def chromium_executable() -> tuple[str | None, str]:
    """(the resolved executable or None, the setting as given)."""
    setting = os.environ.get(EXECUTABLE_ENV, DEFAULT_EXECUTABLE)
    return shutil.which(setting), setting


def browser_token(settings: HarnessSettings, host: str, timeout_s: float) -> str | None:
    """A bearer token for the interaction: from the token pool, or by the profile's PIN login (off the measured
    path). None when the login fails: the interaction then fails as MediaNest answers it."""
    if settings.tokens is not None:
        return settings.tokens.take()
    routes, auth = settings.profile.routes, settings.profile.auth
    try:
        with httpx.Client(base_url=host, timeout=timeout_s, follow_redirects=False) as http:
            headers = {}
            if auth.csrf:
                headers[auth.csrf_header] = dig(http.get(routes.csrf_token).json(), "data", "token") or ""
            pin = dig(http.post(routes.plex_pin, json={"clientName": "medianest-load-browser"},
                                headers=headers).json(), "data", "id")
            token = dig(http.post(routes.plex_verify, json={"pinId": pin}, headers=headers).json(), "data", "token")
    except (httpx.HTTPError, ValueError) as error:
        log.warning("browsers: login for the interaction failed (%s); it will be answered without a token",
                    type(error).__name__)
        return None
    if not isinstance(token, str):
        return None
    register_secret(token)
    return token


@dataclass
class Browser:
    """One child process and the greenlet reading its samples."""

    process: subprocess.Popen
    stderr: IO[bytes]
    reader: gevent.Greenlet | None = None
    ready: bool = False  # Chromium launched: the next thing it does is a visit
    stopping: bool = False


@dataclass
class BrowserFleet:
    """Keeps `scale(n)` browsers running; `close()` ends them all. `info()` goes into run.json."""

    settings: BrowserSettings
    fire: FireRequest
    browsers: list[Browser] = field(default_factory=list)
    retired: list[Browser] = field(default_factory=list)  # stopped or ended, waited for by close()
    blocked: Counter = field(default_factory=Counter)  # host -> requests the guard aborted
    started: int = 0
    crashed: list[str] = field(default_factory=list)

    def scale(self, count: int) -> None:
        self.retired += [browser for browser in self.browsers if browser.process.poll() is not None]
        self.browsers = [browser for browser in self.browsers if browser.process.poll() is None]
        while len(self.browsers) < count and len(self.crashed) < MAX_CRASHES:
            self.browsers.append(self._start())
        for browser in self.browsers[count:]:
            self._stop(browser)
        self.retired += self.browsers[count:]
        self.browsers = self.browsers[:count]

    def warm_up(self, count: int, timeout_s: float = READY_TIMEOUT_S) -> None:
        """Start `count` browsers and wait until each has launched Chromium (or ended, or the timeout passed):
        a launch takes seconds on a busy machine, and the first stage's clock should not run during it."""
        self.scale(count)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and not all(b.ready or b.process.poll() is not None for b in self.browsers):
            gevent.sleep(0.1)

    def close(self) -> None:
        """Stop every browser: stdin closes, each finishes its visit and exits; a straggler is killed."""
        browsers, self.browsers, self.retired = self.browsers + self.retired, [], []
        for browser in browsers:
            self._stop(browser)
        deadline = time.monotonic() + self.settings.timeout_s + STOP_GRACE_S
        for browser in browsers:
            try:
                browser.process.wait(timeout=max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                browser.process.kill()
                browser.process.wait()
            if browser.reader is not None:
                browser.reader.join(timeout=5)
            browser.stderr.close()

    def info(self) -> dict[str, Any]:
        return {"started": self.started, "blocked_requests": dict(self.blocked), "crashed": self.crashed}

    def _start(self) -> Browser:
        stderr = tempfile.TemporaryFile()
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))}
        process = subprocess.Popen([sys.executable, "-m", "locustfiles.browser"], stdin=subprocess.PIPE,
                                   stdout=subprocess.PIPE, stderr=stderr, env=env, cwd=REPO_ROOT)
        browser = Browser(process, stderr)
        assert process.stdin is not None  # opened with PIPE, as stdout
        process.stdin.write((json.dumps(asdict(self.settings)) + "\n").encode())
        process.stdin.flush()
        browser.reader = gevent.spawn(self._read, browser)
        self.started += 1
        return browser

    def _stop(self, browser: Browser) -> None:
        browser.stopping = True
        assert browser.process.stdin is not None  # opened with PIPE
        try:
            browser.process.stdin.close()
        except OSError:
            pass

    def _read(self, browser: Browser) -> None:
        """Each JSON line of the child: a sample (fired), a blocked host (counted, logged once) or `ready`."""
        assert browser.process.stdout is not None  # opened with PIPE
        for line in browser.process.stdout:
            try:
                message = json.loads(line)
            except ValueError:
                continue
            if "name" in message:
                self._fire(message)
            elif "ready" in message:
                browser.ready = True
            elif "blocked" in message:
                host = str(message["blocked"])
                if not self.blocked[host]:
                    log.warning("browsers: blocked a request to %s (not loopback, not allowed)", host)
                self.blocked[host] += 1
        if not browser.stopping:
            browser.process.wait()
            lines = os.pread(browser.stderr.fileno(), 1 << 16, 0).decode("utf-8", "replace").strip().splitlines()
            errors = [line for line in lines if PYTHON_ERROR.match(line)] or lines or ["(no output)"]  # not the call log
            reason = f"exit status {browser.process.returncode}: {errors[-1].strip()}"
            self.crashed.append(reason[:300])
            log.error("browsers: a browser user ended by itself (%s)", reason[:300])

    def _fire(self, message: dict[str, Any]) -> None:
        kind = message.get("kind") or ""
        exception: HarnessFailure | None = failure_of_kind(kind, message.get("message", "")) if kind else None
        ms = float(message["ms"])
        self.fire(request_type=REQUEST_TYPE, name=str(message["name"]), response_time=ms,
                  response_length=int(message.get("length", 0)), exception=exception, context={}, response=None,
                  url=None, start_time=time.time() - ms / 1000)


def browser_settings(settings: HarnessSettings, host: str, allowed_hosts: tuple[str, ...],
                     executable: str) -> BrowserSettings:
    """What each browser child gets: the page the FrontendUser loads (from the profile's frontend_url when it is
    set), the dashboard's stats on the API host as the interaction."""
    routes = settings.profile.routes
    base = host.rstrip("/")
    frontend = (settings.profile.frontend_url or host).rstrip("/")
    return BrowserSettings(
        page_url=frontend + routes.home, api_url=base + routes.dashboard_stats, page_name=routes.home,
        api_name=routes.dashboard_stats, executable=executable, allowed_hosts=allowed_hosts,
        think_min=settings.think_min, think_max=settings.think_max, timeout_s=max(settings.request_timeout, VISIT_TIMEOUT_S),
        token=browser_token(settings, base, settings.request_timeout))
