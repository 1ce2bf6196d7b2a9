"""The failure taxonomy every user class reports and the recorder counts.

User classes raise or pass these exceptions to `response.failure(...)`; the recorder turns any
exception (ours, geventhttpclient's, gevent's, the socket library's) into one of FAILURE_KINDS.
"""

from __future__ import annotations

import socket

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
