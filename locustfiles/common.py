"""What every MediaNest user class shares: the abstract FastHttpUser base, tokens, transactions and backoff.

Users take their settings as an object (medianest_load/settings.py: declared, checked and handed over there) and
classify failures with medianest_load/failures.py. For plain `locust -f`, importing this module wires the
options onto Locust's parser and the option and host checks into its init and test_start events.
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from locust import FastHttpUser, events
from locust.env import Environment
from locust.event import EventHook, Events
from locust.exception import StopUser

from medianest_load.failures import HarnessFailure, RateLimited, UnexpectedBody, as_failure, response_failure
from medianest_load.secrets import forget_secret, register_secret
from medianest_load.settings import (
    HarnessSettings,
    OptionError,
    check_host_at_test_start,
    check_options_at_init,
    frontend_refusal,
    host_refusal,
    register_options,
    settings_for,
)
from medianest_load.target_profile import ProfileError, TargetProfile

events.init_command_line_parser.add_listener(register_options)
events.init.add_listener(check_options_at_init)
events.test_start.add_listener(check_host_at_test_start)


# --- backoff -----------------------------------------------------------------------------------------------

def backoff_event(hooks: Events) -> EventHook:
    """The backoff event of these events, added on first use: Locust's Events has no declared place for a custom
    event, and an Environment made without Locust's global events must carry it too. Fired as
    backoff(request_type, name, delay_s) whenever a user backs off after a failure of that endpoint; the runner's
    recorder counts them per endpoint (summary.csv backoffs, backoff_s)."""
    hook: EventHook = vars(hooks).setdefault("backoff", EventHook())
    return hook


backoff_event(events)

BACKOFF_BASE_S = 1.0  # the first wait after a failure
BACKOFF_CAP_S = 60.0  # no computed wait is longer (MediaNest's /api limiter window)
RETRY_AFTER_CAP_S = 900.0  # a server's Retry-After is honoured up to the global limiter's 15-minute window


@dataclass
class Backoff:
    """Exponential backoff with jitter, per user: after the n-th failure in a row the user waits a uniform draw in
    [0.5, 1] x min(cap, base x 2^(n-1)), or the server's Retry-After when that is longer. Jitter keeps users that
    failed together from coming back together; the cap keeps a long outage from parking users for ever."""

    failures: int = 0
    until: float = 0.0  # time.monotonic() before which the user sends nothing

    def fail(self, retry_after_s: float | None = None) -> float:
        """Count one failure; returns the wait it starts, in seconds."""
        self.failures += 1
        delay = min(BACKOFF_CAP_S, BACKOFF_BASE_S * 2 ** (self.failures - 1)) * random.uniform(0.5, 1.0)
        if retry_after_s is not None:
            delay = max(delay, min(retry_after_s, RETRY_AFTER_CAP_S))
        self.until = time.monotonic() + delay
        return delay

    def succeed(self) -> None:
        self.failures = 0

    def remaining(self) -> float:
        return max(self.until - time.monotonic(), 0.0)


def retry_after_s(response: Any) -> float | None:
    """The seconds of a Retry-After header (its HTTP-date form is not used by MediaNest's limiter), or None."""
    headers = getattr(response, "headers", None)
    value = headers.get("retry-after") if headers else None
    try:
        seconds = float(value) if value is not None else None
    except ValueError:
        return None
    return seconds if seconds is not None and math.isfinite(seconds) and seconds >= 0 else None


# --- users -------------------------------------------------------------------------------------------------

@dataclass
class Reply:
    """What a flow needs from one request: did it pass, and its JSON body (None when not JSON or failed)."""

    ok: bool
    body: Any = None
    failure: HarnessFailure | None = None  # why it did not pass: a transaction fails with its first step's


@dataclass
class Transaction:
    """A named multi-step flow (login, media flow, first visit) timed as one TXN sample that succeeds only when
    every step did; its failure is the first failed step's, so its kind is that step's kind."""

    name: str
    started: float
    failure: HarnessFailure | None = None

    def step(self, reply: Reply) -> Reply:
        """Note one step's outcome; returns the reply so a flow reads `x = txn.step(self.call(...))`."""
        if self.failure is None and not reply.ok:
            self.failure = reply.failure or HarnessFailure("step failed")
        return reply


def dig(body: Any, *path: str) -> Any:
    """body['a']['b'] or None, for checking the shapes of MediaNest's `{success, data: {...}}` answers."""
    for key in path:
        if not isinstance(body, dict):
            return None
        body = body.get(key)
    return body


def has_data(body: Any) -> str | None:
    return None if isinstance(body, dict) and "data" in body else "body has no 'data'"


UNSAFE_METHODS = {"POST", "PUT", "PATCH", "DELETE"}


class MediaNestUser(FastHttpUser):
    """Abstract base: settings, jittered think time, per-user X-Forwarded-For, tokens, classified requests.

    `needs_token` users get a token in on_start, from the pool (tokens mode) or by logging in (login mode).
    With the profile's auth.csrf, a user fetches its CSRF token before its first POST/PUT/PATCH/DELETE, in
    either mode, and keeps it (the target's `csrf-token` cookie stays in the user's cookie jar).
    """

    abstract = True
    needs_token = False
    max_retries = 0  # a retried request would hide the failure it met
    max_redirects = 0  # a 3xx is recorded (unexpected_body), never followed: it could lead off the target

    def __init__(self, environment: Environment) -> None:
        try:
            self.settings: HarnessSettings | None = settings_for(environment)
        except (OptionError, ProfileError):
            self.settings = None  # logged once; on_start stops the user
        self.forwarded_for: str | None = None
        if self.settings is not None:
            self.network_timeout = self.settings.request_timeout
            self.connection_timeout = self.settings.connect_timeout
            if self.settings.addresses is not None:
                self.forwarded_for = self.settings.addresses.take()
        self.default_headers = self.identity_headers()
        super().__init__(environment)
        self.token: str | None = None
        self.csrf_token: str | None = None
        self._pool_token = False
        self.login_backoff = Backoff()  # after a failed login
        self.limit_backoff = Backoff()  # after a 429
        self.iteration: dict[str, Any] = {}  # an open-model iteration's request context (lateness_ms)

    def identity_headers(self) -> dict[str, str]:
        """Headers that make this user look like its own client: its X-Forwarded-For address, if any."""
        return {"X-Forwarded-For": self.forwarded_for} if self.forwarded_for else {}

    @property
    def resolved_settings(self) -> HarnessSettings:
        """The settings, for code that runs once on_start let the user start (without settings it stops there)."""
        assert self.settings is not None
        return self.settings

    @property
    def profile(self) -> TargetProfile:
        return self.resolved_settings.profile

    def wait_time(self) -> float:
        """Uniform between --think-min and --think-max (users started together drift apart instead of bursting),
        or longer while the user backs off after a failed login or a 429. In an open-model stage
        (medianest_load/open_model.py): no think time, the wait for the next arrival."""
        if self.settings is None:
            return 1.0
        arrivals = getattr(self.environment, "arrivals", None)
        if arrivals is not None and arrivals.paces_users:
            self.iteration = arrivals.next_iteration() or {}
            if self.iteration:
                return 0.0
        self.iteration = {}
        return max(random.uniform(self.settings.think_min, self.settings.think_max), self.login_backoff.remaining(),
                   self.limit_backoff.remaining())

    def back_off(self, backoff: Backoff, request_type: str, name: str, retry_after: float | None = None) -> None:
        """Start this user's next backoff after a failure of `request_type name`, and count it: the next task
        waits for it (wait_time), so a broken route or a shared limiter is never hammered."""
        delay = backoff.fail(retry_after)
        backoff_event(self.environment.events).fire(request_type=request_type, name=name, delay_s=delay)

    def context(self) -> dict[str, Any]:
        """The request event's context: an open-model iteration's lateness, which the recorder corrects with."""
        return self.iteration

    def on_start(self) -> None:
        if (self.settings is None or host_refusal(self.host, self.settings.allowed_hosts) is not None
                or frontend_refusal(self.settings) is not None):
            raise StopUser()  # each logged once, at init or test_start
        if self.needs_token:
            self.ensure_token()
        arrivals = getattr(self.environment, "arrivals", None)
        if arrivals is not None and arrivals.paces_users:
            self.wait()  # an open-model user's first task waits for its arrival too

    def on_stop(self) -> None:
        if not self._pool_token:
            forget_secret(self.token)

    # --- requests ---

    def call(self, method: str, template: str, *, ids: dict[str, Any] | None = None,
             params: dict[str, Any] | None = None, json: Any = None, data: Any = None,
             headers: dict[str, str] | None = None, authorized: bool = False,
             check: Callable[[Any], str | None] | None = None, expect_json: bool = True,
             token: str | None = None) -> Reply:
        """One request named by its route template, classified into the failure taxonomy.

        `check` looks at the JSON body and returns what is wrong with it (-> unexpected_body) or None.
        """
        path = template
        for key, value in (ids or {}).items():
            path = path.replace(f":{key}", str(value))
        url = path + ("?" + urlencode(params) if params else "")
        all_headers = dict(headers or {})
        bearer = token or (self.token if authorized else None)
        if bearer:
            all_headers["Authorization"] = f"Bearer {bearer}"
        if method in UNSAFE_METHODS and self.profile.auth.csrf:
            fetched = self.fetch_csrf() if self.csrf_token is None else None
            if fetched is not None and not fetched.ok:
                return fetched  # the failed fetch is the sample; without its token the request would get 403
            assert self.csrf_token is not None  # an ok fetch stored it: _csrf_problem fails a body without one
            all_headers[self.profile.auth.csrf_header] = self.csrf_token
        streamed = self.resolved_settings.api_ttfb  # --api-ttfb
        started = time.perf_counter() if streamed else 0.0
        with self.client.request(method, url, name=template, catch_response=True, headers=all_headers,
                                 json=json, data=data, stream=streamed) as response:
            ttfb_ms, read_failure = self._read_streamed(response, started) if streamed else (None, None)
            failure, body = (read_failure, None) if read_failure else self._judge(response, check, expect_json)
            if failure is None:
                response.success()
            else:
                response.failure(failure)
        if ttfb_ms is not None and response.status_code:  # headers arrived: there is a first byte to time
            self.record("TTFB", f"{method} {template}", ttfb_ms, 0)
        if isinstance(failure, RateLimited):
            self.back_off(self.limit_backoff, method, template, retry_after_s(response))
        elif failure is None:
            self.limit_backoff.succeed()
        return Reply(failure is None, body, failure)

    @staticmethod
    def _read_streamed(response: Any, started: float) -> tuple[float, HarnessFailure | None]:
        """A streamed response's time to first byte (geventhttpclient returns it once the status line and headers
        are in), and its body read now (kept for _judge): a timeout or reset mid-body is the request's failure, as
        when Locust reads the body itself. The request's own sample keeps the whole answer's time and size."""
        ttfb_ms, failure = response.request_meta["response_time"], None
        try:
            response.request_meta["response_length"] = len(response.content or b"")
        except Exception as exc:  # noqa: BLE001 - whatever broke the read is the request's failure
            failure = as_failure(exc)
        response.request_meta["response_time"] = (time.perf_counter() - started) * 1000
        return ttfb_ms, failure

    @staticmethod
    def _judge(response: Any, check: Callable[[Any], str | None] | None,
               expect_json: bool) -> tuple[HarnessFailure | None, Any]:
        failure = response_failure(response)
        if failure is not None:
            return failure, None
        if not expect_json:
            return None, None
        try:
            body = json.loads(response.content or b"")
        except (ValueError, TypeError):
            return UnexpectedBody("body is not JSON"), None
        problem = check(body) if check else None
        return (UnexpectedBody(problem) if problem else None), body

    def record(self, request_type: str, name: str, response_time: float, response_length: int = 0,
               exception: BaseException | None = None, start_time: float | None = None) -> None:
        """A sample that is not one HTTP request (a page load, a Socket.IO event) on Locust's request event."""
        self.environment.events.request.fire(
            request_type=request_type, name=name, response_time=response_time, response_length=response_length,
            exception=exception, context=self.context(), response=None, url=None,
            start_time=start_time if start_time is not None else time.time() - response_time / 1000,
        )

    @contextmanager
    def transaction(self, name: str) -> Iterator[Transaction]:
        """`with self.transaction("media flow") as txn:` then `txn.step(reply)` per step: one `TXN <name>` sample
        over the whole flow when the block ends. A block left by an exception (a stopped user) records nothing:
        the flow was cut by the harness, which says nothing about MediaNest."""
        txn = Transaction(name, time.perf_counter())
        yield txn
        self.record("TXN", name, (time.perf_counter() - txn.started) * 1000, 0, txn.failure)

    # --- auth ---

    def fetch_csrf(self) -> Reply:
        reply = self.call("GET", self.profile.routes.csrf_token, check=_csrf_problem)
        if reply.ok:
            self.csrf_token = _csrf_value(reply.body)
        return reply

    def login(self) -> str | None:
        """The profile's Plex PIN flow: POST pin, POST verify {pinId}. Returns the token, or None after the
        failing step was recorded and the user's login backoff started (the flow stops at its first failed
        step). The token is registered as a secret before anything can print it."""
        routes = self.profile.routes
        with self.transaction("login") as txn:
            pin = txn.step(self.call("POST", routes.plex_pin, json={"clientName": "medianest-load"},
                                     check=lambda b: None if dig(b, "data", "id") is not None
                                     else "pin response has no data.id"))
            verify = txn.step(self.call("POST", routes.plex_verify, json={"pinId": dig(pin.body, "data", "id")},
                                        check=_token_problem)) if pin.ok else None
        if verify is None or not verify.ok:  # the backoff starts after the transaction: it is not MediaNest's time
            self.back_off(self.login_backoff, "POST", routes.plex_verify if pin.ok else routes.plex_pin)
            return None
        self.login_backoff.succeed()
        token = dig(verify.body, "data", "token")
        register_secret(token)
        csrf = dig(verify.body, "data", "csrfToken")
        if isinstance(csrf, str) and csrf:
            self.csrf_token = csrf
        return token

    def ensure_token(self) -> str | None:
        """This user's token: taken from the pool once, or logged in (again, after a failed login, once its
        backoff has passed: a broken login is never retried at once). The CSRF token comes with the first unsafe
        request (call), so tokens mode sends it as login mode does."""
        if self.token is None:
            if self.settings is not None and self.settings.tokens is not None:
                self.token, self._pool_token = self.settings.tokens.take(), True
            elif self.login_backoff.remaining() == 0:
                self.token = self.login()
        return self.token


def _csrf_value(body: Any) -> str | None:
    for path in (("data", "token"), ("data", "csrfToken"), ("csrfToken",), ("token",)):
        value = dig(body, *path)
        if isinstance(value, str) and value:
            return value
    return None


def _csrf_problem(body: Any) -> str | None:
    return None if _csrf_value(body) else "no CSRF token in body"


def _token_problem(body: Any) -> str | None:
    token = dig(body, "data", "token")
    return None if isinstance(token, str) and token else "verify response has no data.token"

