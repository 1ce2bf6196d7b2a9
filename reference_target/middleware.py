"""What stands before every route's handler, in MediaNest's order: the /api rate limiter, the CSRF check (with
--enforce-csrf), broken and hanging routes, injected faults, then authentication; a pool timeout is a 503. A
stall window (--stall-window-s) holds the request before all of it and the response after it."""

from __future__ import annotations

import math
import secrets
import time
from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route as StarletteRoute

from reference_target.behaviour import PoolTimeout
from reference_target.routes import PublicRoute, UserRoute, bearer_token, error, json_body
from reference_target.state import Target

CSRF_COOKIE, CSRF_HEADER, CSRF_FIELD = "csrf-token", "x-csrf-token", "csrfToken"
CSRF_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def client_key(request: Request) -> str:
    """The rate limiter's client: the first X-Forwarded-For address, else the peer."""
    forwarded = request.headers.get("x-forwarded-for")
    if forwarded:
        return forwarded.split(",", 1)[0].strip()
    return request.client.host if request.client else "unknown"


async def csrf_rejected(request: Request) -> bool:
    """--enforce-csrf, double submit as MediaNest's csrfProtection: an unsafe request must carry the
    `csrf-token` cookie and the same value in the `x-csrf-token` header or, in a JSON body, `csrfToken`.
    Other bodies (multipart uploads) are never read here: they need the header."""
    if request.method in CSRF_SAFE_METHODS:
        return False
    cookie = request.cookies.get(CSRF_COOKIE)
    if not cookie:
        return True
    sent = request.headers.get(CSRF_HEADER)
    if sent is None and request.headers.get("content-type", "").startswith("application/json"):
        body = await json_body(request)  # Starlette keeps the body: the handler reads it again
        sent = body.get(CSRF_FIELD) if body else None
    return not (isinstance(sent, str) and secrets.compare_digest(sent.encode(), cookie.encode()))


def endpoint(route: PublicRoute | UserRoute) -> Callable[[Request], Awaitable[Response]]:
    """The Starlette endpoint of one route: its handler behind the whole chain. A route named by --fail-route
    always answers 500, one named by --hang-route never answers."""

    async def held_by_stall_windows(request: Request) -> Response:
        stall_windows = request.app.state.target.behaviour.stall_windows
        await stall_windows.hold()  # a paused server reads nothing ...
        response = await answer(request)
        await stall_windows.hold()  # ... and sends nothing until the pause ends
        return response

    async def answer(request: Request) -> Response:
        target: Target = request.app.state.target
        behaviour = target.behaviour
        limit_headers = None
        if route.limited and behaviour.limiter is not None:
            allowed, remaining, reset_s = behaviour.limiter.check(client_key(request), time.time())
            limit_headers = {"RateLimit-Limit": str(behaviour.limiter.limit), "RateLimit-Remaining": str(remaining),
                             "RateLimit-Reset": str(math.ceil(reset_s))}
            if not allowed:
                return error(429, "RATE_LIMIT_EXCEEDED", "Too many requests, please try again later.",
                             {**limit_headers, "Retry-After": str(max(math.ceil(reset_s), 1))})
        if target.cfg.enforce_csrf and await csrf_rejected(request):
            return error(403, "CSRF_TOKEN_INVALID", "Invalid or missing CSRF token")
        if route.template in target.cfg.hang_routes:
            await behaviour.faults.stall(request.receive)
            return error(504, "STALLED", "The reference target stalled this route (--hang-route).")
        if route.template in target.cfg.fail_routes:
            return error(500, "INTERNAL_ERROR", "This route is broken (--fail-route).")
        if route.injects_faults:
            fault = behaviour.faults.draw()
            if fault == "stall":
                await behaviour.faults.stall(request.receive)
                return error(504, "STALLED", "The reference target stalled this request (--stall-rate).")
            if fault == "error":
                return error(500, "INTERNAL_ERROR", "Injected failure (--error-rate).")
        try:
            if isinstance(route, UserRoute):
                token = bearer_token(request)
                user = target.store.session_user(token)
                if user is None:
                    return error(401, "UNAUTHORIZED", "Authentication required" if not token else "Invalid token")
                response = await route.handler(request, target, user)
            else:
                response = await route.handler(request, target)
        except PoolTimeout:
            return error(503, "DATABASE_POOL_TIMEOUT", "Timed out fetching a new connection from the pool.")
        if route.limited:
            behaviour.leak.retain_request()
        if limit_headers:
            response.headers.update(limit_headers)
        return response

    return held_by_stall_windows


def starlette_route(route: PublicRoute | UserRoute) -> StarletteRoute:
    """The route as Starlette matches it, named by its template (the route label of the HTTP metrics)."""
    return StarletteRoute(route.starlette_path, endpoint(route), methods=[route.method], name=route.template)
