"""What every MediaNest user class shares: the harness options, the target profile, tokens, failure
classification and the abstract FastHttpUser base.

Options are registered on Locust's own parser (so plain `locust -f` and the runner set them alike) and read
back from `environment.parsed_options`, resolved once per environment and option set into HarnessSettings.
"""

from __future__ import annotations

import ipaddress
import itertools
import json
import logging
import math
import os
import random
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import gevent
from locust import FastHttpUser, events
from locust.env import Environment
from locust.event import EventHook, Events
from locust.exception import StopUser
from locust.runners import WorkerRunner

from medianest_load.failures import (
    ConnectionRefused,
    HarnessFailure,
    HttpClientError,
    HttpServerError,
    RateLimited,
    RequestTimeout,
    SocketDisconnect,
    UnexpectedBody,
    failure_for_status,
    failure_kind,
)
from medianest_load.host_guard import HostRefused, check_host
from medianest_load.inputs import load_named
from medianest_load.secrets import forget_secret, redact, register_secret
from medianest_load.target_profile import TARGET_PROFILE, ProfileError, TargetProfile

log = logging.getLogger("medianest_load.users")


class OptionError(ValueError):
    """A bad harness option (flag or its environment variable); one line naming option, value and expectation."""


@dataclass(frozen=True)
class OptionSpec:
    flag: str
    env: str
    default: Any
    help: str

    @property
    def dest(self) -> str:
        return self.flag.lstrip("-").replace("-", "_")


# 0 for a timeout means "the target profile's value": the profile is the one place a deployment's limits live.
OPTIONS = (
    OptionSpec("--target-profile", "MEDIANEST_TARGET_PROFILE", "medianest-main",
               "Target profile: a name in target_profiles/ or a YAML path (routes, namespaces, auth, timeouts)."),
    OptionSpec("--tokens-file", "MEDIANEST_TOKENS_FILE", "",
               "File with one bearer token per line, handed to users round robin (switches auth to tokens)."),
    OptionSpec("--tokens-env", "MEDIANEST_TOKENS_ENV", "",
               "NAME of an environment variable holding one token per line (switches auth to tokens)."),
    OptionSpec("--think-min", "MEDIANEST_THINK_MIN", 1.0, "Shortest think time between tasks, seconds."),
    OptionSpec("--think-max", "MEDIANEST_THINK_MAX", 3.0, "Longest think time between tasks, seconds."),
    OptionSpec("--request-timeout", "MEDIANEST_REQUEST_TIMEOUT", 0.0,
               "Seconds without an answer before a request fails as timeout (0: the target profile's)."),
    OptionSpec("--connect-timeout", "MEDIANEST_CONNECT_TIMEOUT", 0.0,
               "Seconds to open a connection (HTTP or Socket.IO) before it fails as timeout (0: the profile's)."),
    OptionSpec("--upload-sizes-kb", "MEDIANEST_UPLOAD_SIZES_KB", "64,512,4096",
               "Upload sizes in KB picked at random, each optionally SIZE:WEIGHT, e.g. 64:6,512:3,4096:1."),
    OptionSpec("--socket-session-s", "MEDIANEST_SOCKET_SESSION_S", 60.0,
               "How long a Socket.IO user holds its connection before disconnecting, seconds."),
    OptionSpec("--allow-host", "MEDIANEST_ALLOW_HOSTS", "",
               "Comma-separated host names besides loopback that this run may load; any other host is refused."),
)


@events.init_command_line_parser.add_listener
def add_harness_options(parser: Any, **_: Any) -> None:
    group = parser.add_argument_group("MediaNest harness")
    for spec in OPTIONS:
        if spec.flag in getattr(parser, "_option_string_actions", {}):
            continue  # this module reached twice under two names: one registration is enough
        group.add_argument(spec.flag, dest=spec.dest, env_var=spec.env, default=spec.default,
                           type=type(spec.default), help=f"{spec.help} Env: {spec.env}.")


@dataclass(frozen=True, kw_only=True)
class HarnessSettings:
    """The options of one run, checked, with the target profile and the token pool they name."""

    profile: TargetProfile
    think_min: float
    think_max: float
    request_timeout: float
    connect_timeout: float
    upload_sizes: tuple[tuple[int, float], ...]  # (bytes, weight)
    socket_session_s: float
    tokens: TokenPool | None  # None: users log in through the profile's pin/verify flow
    addresses: AddressPool | None  # None: no per-user X-Forwarded-For

    @property
    def auth_mode(self) -> str:
        return "tokens" if self.tokens is not None else "login"

    def pick_upload_size(self) -> int:
        sizes, weights = zip(*self.upload_sizes, strict=True)
        return random.choices(sizes, weights)[0]


# --- tokens ------------------------------------------------------------------------------------------------

class TokenPool:
    """Tokens handed to users round robin. Worker i of N starts at i * ceil(len / N), so each worker hands out
    its own block of the pool before it reaches the next worker's."""

    def __init__(self, tokens: tuple[str, ...], worker_index: int = 0, workers: int = 1) -> None:
        self._tokens = tokens
        self._next = itertools.count(worker_index * math.ceil(len(tokens) / max(workers, 1)))
        for token in tokens:
            register_secret(token)

    def __len__(self) -> int:
        return len(self._tokens)

    @property
    def tokens(self) -> tuple[str, ...]:
        return self._tokens

    def take(self) -> str:
        return self._tokens[next(self._next) % len(self._tokens)]


class AddressPool:
    """One X-Forwarded-For address per user, so a limiter keyed on it sees many clients, not one."""

    def __init__(self, network: str, worker_index: int) -> None:
        self._network = ipaddress.ip_network(network)
        self._span = self._network.num_addresses - 2  # no network or broadcast address
        self._next = itertools.count(worker_index * 65_536)  # workers take disjoint blocks

    def take(self) -> str:
        return str(self._network.network_address + 1 + next(self._next) % self._span)


def _read_tokens(text: str, origin: str) -> tuple[str, ...]:
    tokens = tuple(line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#"))
    if not tokens:
        raise OptionError(f"{origin}: got no tokens, expected one token per line")
    return tokens


def _token_pool(profile: TargetProfile, tokens_file: str, tokens_env: str, worker_index: int,
                workers: int) -> TokenPool | None:
    """An explicit token source (option) wins over the profile; login mode without one means no pool."""
    if not tokens_file and not tokens_env and profile.auth.mode == "tokens":
        tokens_file, tokens_env = profile.auth.tokens_file or "", profile.auth.tokens_env or ""
    if tokens_file:
        try:
            with open(tokens_file, encoding="utf-8") as handle:
                text = handle.read()
        except OSError as exc:
            raise OptionError(f"option --tokens-file: got {tokens_file!r} ({exc.strerror}), "
                              "expected a readable file with one token per line") from None
        except UnicodeDecodeError as exc:
            raise OptionError(f"option --tokens-file: got {tokens_file!r} (not UTF-8: byte {exc.start}), "
                              "expected a UTF-8 text file with one token per line") from None
        return TokenPool(_read_tokens(text, f"option --tokens-file {tokens_file}"), worker_index, workers)
    if tokens_env:
        if tokens_env not in os.environ:
            raise OptionError(f"option --tokens-env: got {tokens_env!r}, an unset variable; "
                              "expected the name of a variable holding one token per line")
        return TokenPool(_read_tokens(os.environ[tokens_env], f"option --tokens-env {tokens_env}"), worker_index,
                         workers)
    return None


def _number(spec: OptionSpec, raw: Any, low: float, inclusive: bool) -> float:
    try:
        value = float(raw)
    except (TypeError, ValueError):
        value = float("nan")
    if not (value >= low if inclusive else value > low) or value != value or value == float("inf"):
        expected = f"a number {'>=' if inclusive else '>'} {low:g}"
        raise OptionError(f"option {spec.flag} (env {spec.env}): got {raw!r}, expected {expected}")
    return value


def parse_upload_sizes(raw: str) -> tuple[tuple[int, float], ...]:
    """'64,512,4096' or '64:6,512:3,4096:1' -> ((bytes, weight), ...)."""
    sizes = []
    for item in str(raw).split(","):
        size, _, weight = item.strip().partition(":")
        try:
            entry = (int(float(size) * 1024), float(weight) if weight else 1.0)
        except ValueError:
            entry = (0, 0.0)
        if entry[0] <= 0 or entry[1] <= 0:
            raise OptionError(f"option --upload-sizes-kb (env MEDIANEST_UPLOAD_SIZES_KB): got {raw!r}, expected "
                              "comma-separated sizes in KB > 0, each optionally SIZE:WEIGHT, e.g. 64:6,512:3,4096:1")
        sizes.append(entry)
    return tuple(sizes)


def _option_values(parsed_options: Any) -> dict[str, Any]:
    """Option values from Locust's parsed options, or the env-var/defaults when there are none."""
    values = {}
    for spec in OPTIONS:
        value = getattr(parsed_options, spec.dest, None) if parsed_options is not None else None
        if value is None:
            value = os.environ.get(spec.env, spec.default)
        values[spec.dest] = value
    return values


def resolve_settings(parsed_options: Any, worker_index: int = 0, workers: int = 1) -> HarnessSettings:
    """Check the options and load what they name. Raises OptionError or ProfileError (both ValueError).
    `worker_index` of `workers` places this process's start in the token pool and its address block."""
    values = _option_values(parsed_options)
    spec = {s.dest: s for s in OPTIONS}
    profile = load_named(TARGET_PROFILE, str(values["target_profile"]))
    think_min = _number(spec["think_min"], values["think_min"], 0, True)
    think_max = _number(spec["think_max"], values["think_max"], 0, True)
    if think_max < think_min:
        raise OptionError(f"option --think-max (env MEDIANEST_THINK_MAX): got {think_max:g}, "
                          f"expected at least --think-min ({think_min:g})")
    request_timeout = _number(spec["request_timeout"], values["request_timeout"], 0, True)
    connect_timeout = _number(spec["connect_timeout"], values["connect_timeout"], 0, True)
    return HarnessSettings(
        profile=profile,
        think_min=think_min,
        think_max=think_max,
        request_timeout=request_timeout or profile.timeouts.request_s,
        connect_timeout=connect_timeout or profile.timeouts.connect_s,
        upload_sizes=parse_upload_sizes(values["upload_sizes_kb"]),
        socket_session_s=_number(spec["socket_session_s"], values["socket_session_s"], 0, False),
        tokens=_token_pool(profile, str(values["tokens_file"] or ""), str(values["tokens_env"] or ""), worker_index,
                           workers),
        addresses=AddressPool(profile.forwarded_for.network, worker_index) if profile.forwarded_for.enabled else None,
    )


def worker_slot(environment: Environment) -> tuple[int, int]:
    """(this worker's index, the number of workers). A worker learns its index when it joins the master and
    the master's --expect-workers (--processes N sets it to N) with its first spawn message; a worker beyond
    that count shares a block with another one. Not distributed: (0, 1)."""
    runner = environment.runner
    if not isinstance(runner, WorkerRunner):
        return 0, 1
    index = max(runner.worker_index, 0)  # -1 until the master has acknowledged this worker
    expected = getattr(environment.parsed_options, "expect_workers", 1)
    return index, max(expected if isinstance(expected, int) else 1, index + 1)


def settings_for(environment: Environment) -> HarnessSettings:
    """The settings of this environment's current options, resolved once (the web UI may change options
    between runs, so they are re-resolved when the options change). Bad options are logged once. A worker's
    settings come from its master's setup message instead (medianest_load/distributed.py)."""
    preset = getattr(environment, "medianest_settings", None)
    if preset is not None:
        return preset
    worker_index, workers = worker_slot(environment)
    key = (tuple(_option_values(environment.parsed_options).items()), worker_index, workers)
    cached = getattr(environment, "_medianest_settings", None)
    if cached is None or cached[0] != key:
        try:
            result: HarnessSettings | ValueError = resolve_settings(environment.parsed_options, worker_index, workers)
        except (OptionError, ProfileError) as exc:
            log.error("%s", exc)
            result = exc
        cached = (key, result)
        vars(environment)["_medianest_settings"] = cached  # Locust's Environment has no field for it
    if isinstance(cached[1], ValueError):
        raise cached[1]
    return cached[1]


# --- host guard --------------------------------------------------------------------------------------------

HOST_SOURCE = "locust --host"


def allowed_hosts(parsed_options: Any) -> tuple[str, ...]:
    """The --allow-host names (env MEDIANEST_ALLOW_HOSTS), comma-separated."""
    raw = _option_values(parsed_options)["allow_host"]
    return tuple(name.strip() for name in str(raw or "").split(",") if name.strip())


def host_refusal(host: str | None, parsed_options: Any, source: str = HOST_SOURCE) -> HostRefused | None:
    """Why this host may not be loaded (not loopback and not in --allow-host), or None. No host: None (Locust
    itself refuses to run without one; a profile without frontend_url uses the host)."""
    if not host:
        return None
    try:
        check_host(host, allowed_hosts(parsed_options), source)
    except HostRefused as exc:
        return exc
    return None


FRONTEND_SOURCE = "target profile frontend_url"


def frontend_refusal(settings: HarnessSettings, parsed_options: Any) -> HostRefused | None:
    """Why the profile's frontend_url may not be loaded (the same guard and allow-list as the host), or None."""
    return host_refusal(settings.profile.frontend_url, parsed_options, FRONTEND_SOURCE)


@events.init.add_listener
def check_options_at_start(environment: Environment, **_: Any) -> None:
    """Plain `locust -f` (the only caller that sets environment.locustfile): a bad option or profile, or a host
    that is neither loopback nor allowed, ends the run with one line before any user starts. Embedding callers
    check with resolve_settings() and check_host() themselves; here they only get the logged line, and users
    that cannot start stop."""
    if environment.parsed_options is None:
        return
    try:
        refused = frontend_refusal(settings_for(environment), environment.parsed_options)
    except (OptionError, ProfileError):
        if environment.locustfile:
            sys.exit(1)  # already logged as one line
        refused = None
    refused = refused or host_refusal(environment.host, environment.parsed_options)
    if refused is not None:
        log.error("%s", refused)
        if environment.locustfile:
            sys.exit(1)


@events.test_start.add_listener
def check_host_at_test_start(environment: Environment, **_: Any) -> None:
    """The web UI can change the host between runs: a refused host is logged as one line and the run stopped
    (plain `locust -f`); its users stop in on_start, before any request, wherever they run."""
    refused = host_refusal(environment.host, environment.parsed_options)
    if refused is None:
        return
    log.error("%s", refused)
    runner = environment.runner
    if environment.locustfile and runner is not None and not isinstance(runner, WorkerRunner):
        headless = bool(getattr(environment.parsed_options, "headless", False))
        gevent.spawn(runner.quit if headless else runner.stop)  # after start() returns: its users stop at once


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


# --- failures ----------------------------------------------------------------------------------------------

_FAILURE_CLASSES: dict[str, type[HarnessFailure]] = {
    cls.kind: cls for cls in (ConnectionRefused, RequestTimeout, HttpClientError, RateLimited, HttpServerError,
                              UnexpectedBody, SocketDisconnect)
}
_FIXED_MESSAGES = {"connection_refused": "connection refused", "timeout": "timed out"}


def exception_chain(exc: BaseException) -> list[BaseException]:
    """exc and what it wraps, outermost first: geventhttpclient's RetriesExceeded keeps the error in
    `original`, engine.io raises its ConnectionError from (or while handling) the websocket error."""
    chain: list[BaseException] = []
    current: Any = exc
    while isinstance(current, BaseException) and all(current is not seen for seen in chain):
        chain.append(current)
        current = getattr(current, "original", None) or current.__cause__ or current.__context__
    return chain


def as_failure(exc: BaseException) -> HarnessFailure:
    """Any exception a request ends with, as one of the failure classes, with a short token-free message
    that stays the same from one occurrence to the next (Locust groups failures by message)."""
    chain = exception_chain(exc)
    for link in chain:
        if isinstance(link, HarnessFailure):
            return link
        status = getattr(link, "status_code", None)  # websocket-client's handshake status
        if isinstance(status, int) and not isinstance(status, bool):
            failure = failure_for_status(status)
            if failure is not None:
                return failure
    kind = next((k for link in reversed(chain) if (k := failure_kind(link)) != "other"), "other")
    if kind in _FIXED_MESSAGES:
        return _FAILURE_CLASSES[kind](_FIXED_MESSAGES[kind])
    root = chain[-1]
    detail = " ".join(str(root).split())[:120]
    return _FAILURE_CLASSES.get(kind, HarnessFailure)(
        redact(f"{type(root).__name__}" + (f": {detail}" if detail else "")))


def response_failure(response: Any) -> HarnessFailure | None:
    """The failure a Locust FastResponse stands for by its transport error or status, or None."""
    if not response.status_code:
        return as_failure(response.error or ConnectionError("no response"))
    return failure_for_status(response.status_code)


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
        options = self.environment.parsed_options
        if (self.settings is None or host_refusal(self.host, options) is not None
                or frontend_refusal(self.settings, options) is not None):
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
        with self.client.request(method, url, name=template, catch_response=True, headers=all_headers,
                                 json=json, data=data) as response:
            failure, body = self._judge(response, check, expect_json)
            if failure is None:
                response.success()
            else:
                response.failure(failure)
        if isinstance(failure, RateLimited):
            self.back_off(self.limit_backoff, method, template, retry_after_s(response))
        elif failure is None:
            self.limit_backoff.succeed()
        return Reply(failure is None, body, failure)

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

