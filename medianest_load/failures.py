"""The failure taxonomy every user class reports and the recorder counts, and the mapping onto it.

User classes raise or pass these exceptions to `response.failure(...)`, after as_failure() or
response_failure() mapped what a request ended with; the recorder turns any exception (ours,
geventhttpclient's, gevent's, the socket library's) into one of FAILURE_KINDS.
"""

from __future__ import annotations

import socket
from typing import Any

from medianest_load.secrets import redact

FAILURE_KINDS = (
    "connection_refused",
    "timeout",
    "http_4xx",
    "http_429",
    "http_5xx",
    "unexpected_body",
    "socket_disconnect",
    "other",
    "handshake_refused",
    "handshake_error",
    "auth_unavailable",
)


class HarnessFailure(Exception):
    kind = "other"
    # False: the request never reached a server (refused, name not resolved, no token to send), so it says
    # nothing about the server's latency and stays out of the latency percentiles (docs/design.md)
    reached_server = True


class RequestTimeout(HarnessFailure):
    kind = "timeout"


class ConnectionRefused(HarnessFailure):
    kind = "connection_refused"
    reached_server = False


class HttpClientError(HarnessFailure):
    kind = "http_4xx"


class RateLimited(HarnessFailure):
    kind = "http_429"


class HttpServerError(HarnessFailure):
    kind = "http_5xx"


class UnexpectedBody(HarnessFailure):
    kind = "unexpected_body"


class SocketDisconnect(HarnessFailure):
    kind = "socket_disconnect"


class HandshakeRefused(HarnessFailure):
    """The Socket.IO handshake was refused for auth: HTTP 401/403, or a connect_error saying so."""

    kind = "handshake_refused"


class HandshakeError(HarnessFailure):
    """The server failed during the Socket.IO handshake: HTTP 5xx, or a connect_error carrying an internal error."""

    kind = "handshake_error"


class AuthUnavailable(HarnessFailure):
    """A step that needs a token was not tried because the user could not get one (its login failed)."""

    kind = "auth_unavailable"
    reached_server = False


def failure_for_status(status: int) -> HarnessFailure | None:
    """The failure a bad HTTP status stands for, or None when the status is a success. User classes never
    follow redirects (one could lead off the target), so a 3xx is an answer the flow did not expect:
    unexpected_body."""
    message = f"HTTP {status}"
    if status == 0:
        return ConnectionRefused(message)
    if status == 429:
        return RateLimited(message)
    if 400 <= status < 500:
        return HttpClientError(message)
    if status >= 500:
        return HttpServerError(message)
    if 300 <= status < 400:
        return UnexpectedBody(f"{message} redirect, not followed")
    return None


def reached_server(exc: BaseException) -> bool:
    """Whether a failed sample got as far as a server: refusals and unresolvable names did not."""
    if isinstance(exc, HarnessFailure):
        return exc.reached_server
    return failure_kind(exc) != "connection_refused"


def failure_of_kind(kind: str, message: str) -> HarnessFailure:
    """The failure named by its kind: a sample made in another process (a browser user) carries only its kind
    and its message across the pipe."""
    classes = {cls.kind: cls for cls in _all_subclasses(HarnessFailure)}
    return classes.get(kind, HarnessFailure)(message)


def _all_subclasses(cls: type[HarnessFailure]) -> list[type[HarnessFailure]]:
    return [sub for direct in cls.__subclasses__() for sub in (direct, *_all_subclasses(direct))]


def failure_kind(exc: BaseException | None) -> str:
    """Classify any exception a request can end with into one of FAILURE_KINDS."""
    if exc is None:
        return ""
    if isinstance(exc, HarnessFailure):
        return exc.kind
    if isinstance(exc, (ConnectionRefusedError, socket.gaierror)):  # nothing listening, or no such host
        return "connection_refused"
    if isinstance(exc, (TimeoutError, socket.timeout)) or type(exc).__name__ in {"Timeout", "ConnectionTimeout", "ReadTimeout"}:
        return "timeout"
    text = str(exc).lower()
    if "refused" in text:
        return "connection_refused"
    if "timed out" in text or "timeout" in text:
        return "timeout"
    status = getattr(exc, "code", None) or getattr(exc, "status", None)
    if isinstance(status, int):
        failure = failure_for_status(status)
        if failure is not None:
            return failure.kind
    return "other"


# --- mapping what a request ended with ------------------------------------------------------------------------

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
        return failure_of_kind(kind, _FIXED_MESSAGES[kind])
    root = chain[-1]
    detail = " ".join(str(root).split())[:120]
    return failure_of_kind(kind, redact(f"{type(root).__name__}" + (f": {detail}" if detail else "")))


def response_failure(response: Any) -> HarnessFailure | None:
    """The failure a Locust FastResponse stands for by its transport error or status, or None."""
    if not response.status_code:
        return as_failure(response.error or ConnectionError("no response"))
    return failure_for_status(response.status_code)
