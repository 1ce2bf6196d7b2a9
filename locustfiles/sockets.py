"""Socket.IO sessions on the media namespace: connect with the token, join a media room, hold the connection
for --socket-session-s while pinging, and time the server's media-status pushes from the sentAt they carry.

python-socketio's sync `socketio.Client` runs on threads, requests and websocket-client, all cooperative
under the gevent patching `import locust` applies; its asyncio client would not be, and is never used here.
Every sample is request_type SIO; all waits are bounded by the connect or request timeout.
"""

from __future__ import annotations

import datetime
import itertools
import json
import math
import random
import time
from collections.abc import Callable
from typing import Any, TypeVar

import gevent
import requests
import socketio
from gevent.event import Event
from locust import task

from locustfiles.common import MediaNestUser
from medianest_load.failures import (
    AuthUnavailable,
    HandshakeError,
    HandshakeRefused,
    HarnessFailure,
    RateLimited,
    RequestTimeout,
    SocketDisconnect,
    UnexpectedBody,
    as_failure,
    exception_chain,
)
from medianest_load.target_profile import PushConfig

MEDIA_STATUSES = ("pending", "processing", "available")
CLOCK_SKEW_TOLERANCE_MS = 100.0  # a push "from the future" by more than this is a clock problem, not a delay
T = TypeVar("T")


def _outcome(call: Callable[[], T]) -> tuple[T | None, Exception | None]:
    try:
        return call(), None
    except Exception as exc:  # noqa: BLE001 - handed back to the waiting user greenlet
        return None, exc


def apart_from_the_user(call: Callable[[], T], timeout: float) -> T:
    """Run `call` in a greenlet of its own and wait for it at most `timeout` s (RequestTimeout after that).

    websocket-client's close() and engine.io's event dispatch swallow every exception, Locust's GreenletExit
    included: run in the user's greenlet, a stop landing inside them leaves the user running and the runner
    waiting for it forever. Here the stop lands on this wait instead; the worker is killed and, should it
    swallow that too, ends by itself within the client's own timeouts."""
    worker = gevent.spawn(_outcome, call)
    try:
        worker.join(timeout)
        if not worker.ready():
            raise RequestTimeout("timed out")
    finally:
        worker.kill(block=False)
    result, error = worker.value
    if error is not None:
        raise error
    return result


def sent_at_seconds(value: Any) -> float | None:
    """The epoch seconds of a payload's sentAt: seconds or JS milliseconds, or an ISO-8601 string."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return value / 1000 if value > 1e11 else float(value)
    if isinstance(value, str):
        try:
            stamp = datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return None
        return stamp.replace(tzinfo=stamp.tzinfo or datetime.UTC).timestamp()
    return None


def no_redirect_session() -> requests.Session:
    """The polling transport's HTTP session: a redirect fails the connect instead of leading off the target."""
    session = requests.Session()
    session.max_redirects = 0
    return session


# Words of a connect_error that say the server failed, not that it refused the client (checked first: main's
# "Authentication failed" after an internal error cannot be told apart, and reads as a refusal).
SERVER_ERROR_WORDS = ("internal", "server error", "unavailable", "database", "exception")


def connect_failure(exc: BaseException, namespace: str, refusal: Any = None) -> HarnessFailure:
    """A failed connect as a failure kind, with a fixed message per cause (never the server's text, which could
    echo a token): the namespace's connect_error (`refusal`, its message or payload) is a server error when it
    says so, else a refused handshake; the handshake's HTTP status 401/403 is a refusal, 5xx a server error."""
    if isinstance(exc, socketio.exceptions.ConnectionError) and "failed to connect" in str(exc):
        message = refusal.get("message") if isinstance(refusal, dict) else refusal
        if any(word in str(message or "").lower() for word in SERVER_ERROR_WORDS):
            return HandshakeError(f"namespace {namespace} failed the handshake with a server error")
        return HandshakeRefused(f"namespace {namespace} refused the handshake")
    for link in exception_chain(exc):
        status = getattr(link, "status_code", None)  # websocket-client's handshake status
        if status in (401, 403):
            return HandshakeRefused(f"handshake refused: HTTP {status}")
        if isinstance(status, int) and status >= 500:
            return HandshakeError(f"handshake failed: HTTP {status}")
    return as_failure(exc)


def is_publisher(number: int, push: PushConfig) -> bool:
    """Relay mode: whether the number-th socket user publishes. Spread evenly from the first user on (users 1,
    11, 21, ... at a share of 0.1), so even a handful of users has a publisher."""
    return push.source == "relay" and math.ceil(number * push.publishers) > math.ceil((number - 1) * push.publishers)


class SocketUser(MediaNestUser):
    """Per task one session: `connect /media`, `ack /media join-media-room`, pings (`ack /media ping`) at the
    think-time pace, pushes (`push /media media-status`), unexpected drops (`disconnect /media`, failure
    socket_disconnect) followed by `reconnect /media` (time since the drop), and a clean `disconnect /media`.
    In relay mode publishers also emit media-status (`publish /media media-status`) at the profile's rate.
    Without a token (its login failed) a session records `connect /media` as auth_unavailable instead."""

    weight = 10
    needs_token = True

    _users_started = itertools.count(1)

    def __init__(self, environment: Any) -> None:
        super().__init__(environment)
        self.sio: socketio.Client | None = None
        self._dropped = Event()
        self._dropped_at = 0.0
        self._answer: Event | None = None  # the ack or pong being waited for
        self._refusal: Any = None  # the namespace's connect_error payload, if it refused
        self.room = ""  # the media room joined by the current connection
        self.publisher = self.settings is not None and is_publisher(next(self._users_started),
                                                                    self.profile.socketio.push)

    @property
    def namespace(self) -> str:
        return self.profile.socketio.media_namespace

    def _name(self, kind: str, event: str = "") -> str:
        return f"{kind} {self.namespace}" + (f" {event}" if event else "")

    @task
    def session(self) -> None:
        if not self.ensure_token():
            # the connect this session would have made fails visibly: no token, no connection
            self.record("SIO", self._name("connect"), 0, 0, AuthUnavailable("no token: the login failed"))
            return
        started = time.monotonic()
        deadline = started + self.resolved_settings.socket_session_s
        if not self._open("connect", time.perf_counter()):
            return
        push = self.profile.socketio.push
        next_ping = started + self._think()
        next_publish = started + 1 / push.rate_per_s if self.publisher else math.inf
        try:
            while (remaining := deadline - time.monotonic()) > 0:
                pause = min(remaining, max(min(next_ping, next_publish) - time.monotonic(), 0.0))
                if self._dropped.wait(timeout=pause):
                    if not self._open("reconnect", self._dropped_at):
                        return
                    continue
                now = time.monotonic()
                if now >= next_publish and deadline > now:
                    self._publish()
                    next_publish = max(next_publish + 1 / push.rate_per_s, now)
                if now >= next_ping and deadline > now:
                    self._ping()
                    next_ping = time.monotonic() + self._think()
            self._close(record=True)
        finally:
            self._close(record=False)

    def _think(self) -> float:
        return random.uniform(self.resolved_settings.think_min, self.resolved_settings.think_max)

    def on_stop(self) -> None:
        self._close(record=False)
        super().on_stop()

    # --- connection ---

    def _open(self, kind: str, since: float) -> bool:
        """Connect (or reconnect) and join a room; `since` is when the wait began (the drop, for reconnect)."""
        self._close(record=False)
        self._dropped.clear()
        config, settings = self.profile.socketio, self.resolved_settings
        sio = socketio.Client(reconnection=False, handle_sigint=False, logger=False, engineio_logger=False,
                              request_timeout=settings.connect_timeout, http_session=no_redirect_session,
                              websocket_extra_options={"redirect_limit": 0})  # never follow a redirect
        sio.on(config.events.media_status, lambda *args: self._on_push(sio, args[0] if args else None),
               namespace=self.namespace)
        sio.on(config.events.pong, lambda *_: self._on_answer(sio), namespace=self.namespace)
        sio.on(config.events.joined_room, lambda *_: self._on_answer(sio), namespace=self.namespace)
        sio.on("disconnect", lambda *reason: self._on_disconnect(sio, reason), namespace=self.namespace)
        sio.on("connect_error", lambda *data: self._on_refusal(sio, data[0] if data else None), namespace=self.namespace)
        self.sio, self._refusal = sio, None
        try:
            apart_from_the_user(lambda: sio.connect(self.host, headers=self.identity_headers(),
                                                    auth={"token": self.token}, transports=list(config.transports),
                                                    namespaces=[self.namespace], socketio_path=config.path,
                                                    wait_timeout=settings.connect_timeout),
                                2 * settings.connect_timeout + 1)
        except Exception as exc:  # noqa: BLE001 - every connect error is a sample of its kind
            failure = connect_failure(exc, self.namespace, self._refusal)
            self.record("SIO", self._name(kind), (time.perf_counter() - since) * 1000, 0, failure)
            self._close(record=False)
            if isinstance(failure, RateLimited):  # the handshake limiter: never come straight back
                self.back_off(self.limit_backoff, "SIO", self._name(kind))
            return False
        self.record("SIO", self._name(kind), (time.perf_counter() - since) * 1000)
        self.limit_backoff.succeed()
        self.room = str(random.randint(1, config.rooms))
        self._round_trip(self._name("ack", config.events.join_room), config.events.join_room, {"roomId": self.room})
        return True

    def _close(self, record: bool) -> None:
        sio, self.sio = self.sio, None
        if sio is None:
            return
        was_connected = sio.connected
        try:
            apart_from_the_user(sio.disconnect, self.resolved_settings.connect_timeout)
        except Exception:  # noqa: BLE001 - a connection already gone (or not closing in time) is closed enough
            pass
        if record and was_connected:
            self.record("SIO", self._name("disconnect"), 0, 0, None)

    # --- events ---

    def _round_trip(self, name: str, event: str, data: Any) -> None:
        """Emit with an ack callback; the round trip ends at the ack or at the answering event, whichever
        comes first (MediaNest answers ping with an emitted pong, join-media-room with joined-room)."""
        sio = self.sio
        if sio is None:
            return
        answer = self._answer = Event()
        started, start_time = time.perf_counter(), time.time()
        failure: HarnessFailure | None = None
        try:
            sio.emit(event, data, namespace=self.namespace, callback=lambda *_: answer.set())
            gevent.wait([answer, self._dropped], timeout=self.resolved_settings.request_timeout, count=1)
            if self._dropped.is_set():
                failure = SocketDisconnect("connection dropped before the answer")
            elif not answer.is_set():
                failure = RequestTimeout("no answer within the request timeout")
        except Exception as exc:  # noqa: BLE001 - an emit on a dropped connection
            failure = as_failure(exc)
        finally:
            self._answer = None
        self.record("SIO", name, (time.perf_counter() - started) * 1000, 0, failure, start_time)

    def _ping(self) -> None:
        events = self.profile.socketio.events
        self._round_trip(self._name("ack", events.ping), events.ping, {"sentAt": time.time()})

    def _publish(self) -> None:
        """Relay mode: emit one media-status into this user's room, stamped with its own sentAt; the server
        forwards it to the other members, who time it (`push`). One `publish` sample per emit, 0 ms: the
        fan-out of a stage is its push deliveries over its publishes."""
        sio, event = self.sio, self.profile.socketio.events.media_status
        if sio is None:
            return
        payload = {"roomId": self.room, "status": random.choice(MEDIA_STATUSES), "sentAt": time.time()}
        failure: HarnessFailure | None = None
        try:
            sio.emit(event, payload, namespace=self.namespace)
        except Exception as exc:  # noqa: BLE001 - an emit on a dropped connection
            failure = as_failure(exc)
        self.record("SIO", self._name("publish", event), 0, len(json.dumps(payload, separators=(",", ":"))), failure)

    def _on_refusal(self, sio: socketio.Client, data: Any) -> None:
        if sio is self.sio:
            self._refusal = data

    def _on_answer(self, sio: socketio.Client) -> None:
        if sio is self.sio and self._answer is not None:
            self._answer.set()

    def _on_push(self, sio: socketio.Client, data: Any) -> None:
        received = time.time()
        if sio is not self.sio:
            return
        name = self._name("push", self.profile.socketio.events.media_status)
        size = len(json.dumps(data, separators=(",", ":"), default=str))
        sent = sent_at_seconds(data.get("sentAt") if isinstance(data, dict) else None)
        if sent is None:
            self.record("SIO", name, 0, size, UnexpectedBody("push has no sentAt"))
            return
        delay_ms = (received - sent) * 1000
        failure = None
        if delay_ms < -CLOCK_SKEW_TOLERANCE_MS:
            failure = UnexpectedBody("push sentAt is ahead of this clock (clock skew)")
        self.record("SIO", name, max(delay_ms, 0.0), size, failure, sent)

    def _on_disconnect(self, sio: socketio.Client, reason: tuple[Any, ...]) -> None:
        """Only a drop we did not ask for counts: our own disconnect() clears self.sio first."""
        if sio is not self.sio:
            return
        why = str(reason[0]) if reason else "no reason given"
        self.record("SIO", self._name("disconnect"), 0, 0, SocketDisconnect(f"server closed the connection ({why})"))
        self._dropped_at = time.perf_counter()
        self._dropped.set()
