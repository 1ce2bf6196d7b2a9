"""The stand-in MediaNest: Starlette routes under MediaNest's paths and response shapes, and python-socketio
namespaces `/` and `/media`, all driven by one Behaviour (service times, DB pool, cache, faults, limiter, leak)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import os
import secrets
import time
import zlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from html import escape as html_escape
from http.cookies import SimpleCookie
from typing import Any, Literal, overload
from urllib.parse import parse_qs

import psutil
import socketio
from prometheus_client import CollectorRegistry
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from reference_target.behaviour import Behaviour, BoundedDict, PoolTimeout
from reference_target.config import TargetConfig
from reference_target.metrics import (
    CONTENT_TYPE,
    GcTimer,
    HttpMetrics,
    HttpMetricsMiddleware,
    LoopLagMonitor,
    registry_for,
    render,
)

VERSION = "1.0.0"
API = "/api/v1"
REQUESTS_PER_USER = 500  # a user's media requests beyond this forget the oldest (bounded memory on long runs)
JSON_BODY_LIMIT = 1024 * 1024  # MediaNest's express.json limit
STATUS_SERVICES = ("plex", "overseerr", "uptime-kuma")
MEDIA_STATUSES = ("pending", "processing", "available")


@dataclass
class User:
    id: int
    username: str
    email: str
    role: str
    requests: BoundedDict = field(default_factory=lambda: BoundedDict(REQUESTS_PER_USER))

    def public(self) -> dict[str, Any]:
        return {"id": self.id, "username": self.username, "email": self.email, "role": self.role}


class Store:
    """Users (one per Plex pin id), sessions (opaque bearer tokens) and media requests, all bounded."""

    def __init__(self) -> None:
        self.users: BoundedDict = BoundedDict()
        self.sessions: BoundedDict = BoundedDict()
        self.requests_created = 0
        self._next_user = 0
        self._next_request = 0

    def login(self, pin_id: str) -> tuple[User, str]:
        """The stand-in Plex login: the same pin id is the same user; every login is a new session."""
        user = self.users.get(pin_id)
        if user is None:
            self._next_user += 1
            n = self._next_user
            user = User(n, f"plexuser{n}", f"plexuser{n}@medianest.local", "admin" if n == 1 else "user")
            self.users[pin_id] = user
        token = secrets.token_urlsafe(32)
        self.sessions[token] = user
        return user, token

    def create_request(self, user: User, media_type: str, tmdb_id: int) -> dict[str, Any]:
        self._next_request += 1
        self.requests_created += 1
        item = {"id": self._next_request, "userId": user.id, "title": f"{media_type.title()} {tmdb_id}",
                "mediaType": media_type, "tmdbId": tmdb_id, "status": "pending", "createdAt": _now_iso(),
                "completedAt": None}
        user.requests[item["id"]] = item
        return item


class Bundle:
    """Next.js-like static chunks whose sizes add up to bundle_kb: generated from one shared 256 KB block and
    streamed, so even a 465 MB bundle costs no memory.

    Every chunk is valid JavaScript made of whole statements (a block ends on a line boundary, a short last piece
    is whole lines padded with spaces), so a browser parses and runs all of it; the page paints its content only
    after the deferred scripts ran, so First Contentful Paint and LCP follow the bundle size and the latency."""

    BLOCK = 256 * 1024
    SHARES = (("chunks/webpack", "js", 0.02), ("chunks/framework", "js", 0.25), ("chunks/main", "js", 0.15),
              ("chunks/pages/_app", "js", 0.30), ("chunks/pages/index", "js", 0.13), ("css/app", "css", 0.15))
    CONTENT_TYPES = {"js": "application/javascript; charset=utf-8", "css": "text/css; charset=utf-8"}

    def __init__(self, total_kb: int, third_party_script: str | None = None):
        total = total_kb * 1024
        sizes = [max(int(total * share), 1) for *_, share in self.SHARES[:-1]]
        sizes.append(max(total - sum(sizes), 1))
        self.assets: dict[str, tuple[str, int]] = {}  # "chunks/main-<hash>.js" -> (content type, size)
        for (stem, ext, _), size in zip(self.SHARES, sizes, strict=True):
            digest = hashlib.sha1(f"{stem}:{size}".encode()).hexdigest()[:16]
            name = f"{stem}-{digest}.{ext}" if ext == "js" else f"css/{digest}.css"
            self.assets[name] = (self.CONTENT_TYPES[ext], size)
        self.line = b"/* MediaNest reference target bundle filler */ !function(e){var t={};e.exports=t}({});\n"
        code = self.line * (self.BLOCK // len(self.line))
        self.block = memoryview(code + b" " * (self.BLOCK - len(code)))
        self.total_bytes = sum(size for _, size in self.assets.values())
        self.third_party_script = third_party_script

    def html(self) -> str:
        tags = [f'<link rel="stylesheet" href="/_next/static/{name}">' if name.startswith("css/")
                else f'<script src="/_next/static/{name}" defer></script>' for name in self.assets]
        if self.third_party_script:  # an analytics tag on another host: the harness's browsers must block it
            tags.insert(0, f'<script src="{html_escape(self.third_party_script)}" async></script>')
        return ("<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>MediaNest</title>"
                + "".join(tags) + "</head><body><div id=\"__next\"></div>"
                '<script id="__NEXT_DATA__" type="application/json">{"page":"/","buildId":"reference"}</script>'
                f"<script>{self.RENDER}</script></body></html>")

    # DOMContentLoaded fires after every deferred script ran: nothing contentful is painted before that
    RENDER = ('document.addEventListener("DOMContentLoaded",function(){document.getElementById("__next").innerHTML='
              "'<main><h1>MediaNest</h1><section id=\"hero\" style=\"min-height:60vh;font-size:48px\">"
              "Your media, requested and ready</section><p>Search, request and follow your media.</p></main>'})")

    def piece(self, size: int) -> bytes | memoryview:
        """`size` bytes of whole statements: a full block, or whole lines padded with spaces."""
        if size >= self.BLOCK:
            return self.block
        whole = size - size % len(self.line)
        return bytes(self.block[:whole]) + b" " * (size - whole)

    async def stream(self, size: int):
        for offset in range(0, size, self.BLOCK):
            yield self.piece(min(self.BLOCK, size - offset))


@dataclass
class Target:
    """Everything one target process holds; the Starlette app reaches it as request.app.state.target."""

    cfg: TargetConfig
    behaviour: Behaviour
    store: Store = field(default_factory=Store)
    http: HttpMetrics = field(default_factory=HttpMetrics)
    lag: LoopLagMonitor = field(default_factory=LoopLagMonitor)
    gc: GcTimer = field(default_factory=GcTimer)
    process: psutil.Process = field(default_factory=psutil.Process)
    started_at: float = field(default_factory=time.time)
    sockets: dict[str, int] = field(default_factory=lambda: {"/": 0, "/media": 0})
    socket_users: dict[str, User | None] = field(default_factory=dict)
    rooms: dict[str, set[str]] = field(default_factory=dict)  # roomId -> sids of /media
    bundle: Bundle = field(init=False)
    page: str = field(init=False)
    sio: socketio.AsyncServer = field(init=False)
    tasks: list[asyncio.Task] = field(default_factory=list)
    registry: CollectorRegistry = field(init=False)

    def __post_init__(self) -> None:
        self.bundle = Bundle(self.cfg.bundle_kb, self.cfg.third_party_script)
        self.page = self.bundle.html()
        self.registry = registry_for(self)

    async def start(self) -> None:
        self.gc.install()
        self.tasks = [asyncio.create_task(self.lag.run())]
        if self.cfg.push_source == "server":
            self.tasks.append(asyncio.create_task(self._push_media_status()))

    async def stop(self) -> None:
        self.gc.uninstall()
        for task in self.tasks:
            task.cancel()

    async def _push_media_status(self) -> None:
        """Every push_interval_s, one media-status event to each joined room, stamped with the time it was
        produced and emitted push_latency_ms later: the client's measured push delay includes that latency."""
        tick, latency_s = 0, self.cfg.push_latency_ms / 1000
        while True:
            await asyncio.sleep(max(self.cfg.push_interval_s - latency_s, 0.001))
            tick += 1
            status = MEDIA_STATUSES[tick % len(MEDIA_STATUSES)]
            events = [{"roomId": room, "status": status, "sentAt": time.time()}
                      for room, sids in self.rooms.items() if sids]
            if latency_s:
                await asyncio.sleep(latency_s)
            for payload in events:
                await self.sio.emit("media-status", payload, room=f"media:{payload['roomId']}", namespace="/media")


# ---------------------------------------------------------------------------------------------------------- HTTP


def _now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"success": False, "error": {"code": code, "message": message}}, status, headers)


def _ok(data: Any, status: int = 200) -> JSONResponse:
    return JSONResponse({"success": True, "data": data}, status)


def _bearer_token(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    if header[:7].lower() == "bearer ":
        return header[7:].strip()
    return request.cookies.get("auth-token")


def _client_key(request: Request) -> str:
    forwarded = request.headers.get("x-forwarded-for")
    if forwarded:
        return forwarded.split(",", 1)[0].strip()
    return request.client.host if request.client else "unknown"


async def _json_body(request: Request) -> dict[str, Any] | None:
    """The JSON object in the body ({} when empty), or None when it is not one."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > JSON_BODY_LIMIT:
        return None
    raw = await request.body()
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw)
    except ValueError:
        return None
    return body if isinstance(body, dict) else None


CSRF_COOKIE, CSRF_HEADER, CSRF_FIELD = "csrf-token", "x-csrf-token", "csrfToken"
CSRF_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


async def _csrf_rejected(request: Request) -> bool:
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
        body = await _json_body(request)  # Starlette keeps the body: the handler reads it again
        sent = body.get(CSRF_FIELD) if body else None
    return not (isinstance(sent, str) and secrets.compare_digest(sent.encode(), cookie.encode()))


Handler = Callable[[Request, Target, User | None], Awaitable[Response]]
AuthedHandler = Callable[[Request, Target, User], Awaitable[Response]]  # its route answers 401 without a user
# What the endpoint chain calls: its `auth` flag decides whether the user can be None; _route's overloads check
# that a handler needing a user is registered with auth=True.
AnyHandler = Callable[[Request, Target, Any], Awaitable[Response]]


def _endpoint(handler: AnyHandler, *, auth: bool, limited: bool, faults: bool,
              template: str = "") -> Callable[[Request], Awaitable[Response]]:
    """The middleware chain of one route, in MediaNest's order: /api limiter, then the CSRF check (with
    --enforce-csrf), then (injected) failure, then authentication, then the handler; a pool timeout is 503.
    A route named by --fail-route always answers 500, one named by --hang-route never answers. A stall window
    (--stall-window-s) holds the request before all of it and the response after it."""

    async def endpoint(request: Request) -> Response:
        stall_windows = request.app.state.target.behaviour.stall_windows
        await stall_windows.hold()  # a paused server reads nothing ...
        response = await answer(request)
        await stall_windows.hold()  # ... and sends nothing until the pause ends
        return response

    async def answer(request: Request) -> Response:
        target: Target = request.app.state.target
        behaviour = target.behaviour
        limit_headers = None
        if limited and behaviour.limiter is not None:
            allowed, remaining, reset_s = behaviour.limiter.check(_client_key(request), time.time())
            limit_headers = {"RateLimit-Limit": str(behaviour.limiter.limit), "RateLimit-Remaining": str(remaining),
                             "RateLimit-Reset": str(math.ceil(reset_s))}
            if not allowed:
                return _error(429, "RATE_LIMIT_EXCEEDED", "Too many requests, please try again later.",
                              {**limit_headers, "Retry-After": str(max(math.ceil(reset_s), 1))})
        if target.cfg.enforce_csrf and await _csrf_rejected(request):
            return _error(403, "CSRF_TOKEN_INVALID", "Invalid or missing CSRF token")
        if template in target.cfg.hang_routes:
            await behaviour.faults.stall(request.receive)
            return _error(504, "STALLED", "The reference target stalled this route (--hang-route).")
        if template in target.cfg.fail_routes:
            return _error(500, "INTERNAL_ERROR", "This route is broken (--fail-route).")
        if faults:
            fault = behaviour.faults.draw()
            if fault == "stall":
                await behaviour.faults.stall(request.receive)
                return _error(504, "STALLED", "The reference target stalled this request (--stall-rate).")
            if fault == "error":
                return _error(500, "INTERNAL_ERROR", "Injected failure (--error-rate).")
        user = None
        if auth:
            token = _bearer_token(request)
            user = target.store.sessions.get(token) if token else None
            if user is None:
                return _error(401, "UNAUTHORIZED", "Authentication required" if not token else "Invalid token")
        try:
            response = await handler(request, target, user)
        except PoolTimeout:
            return _error(503, "DATABASE_POOL_TIMEOUT", "Timed out fetching a new connection from the pool.")
        if limited:
            behaviour.leak.retain_request()
        if limit_headers:
            response.headers.update(limit_headers)
        return response

    return endpoint


@overload
def _route(method: str, template: str, handler: AuthedHandler, *, auth: Literal[True], faults: bool | None = None) -> Route: ...
@overload
def _route(method: str, template: str, handler: Handler, *, auth: Literal[False] = False,
           faults: bool | None = None) -> Route: ...


def _route(method: str, template: str, handler: AnyHandler, *, auth: bool = False, faults: bool | None = None) -> Route:
    """A route named by its MediaNest-style template (`/api/v1/media/requests/:id`), the label in /metrics.
    Everything under /api/ is rate-limited; injected faults hit /api routes unless `faults=False`."""
    path = "/".join("{" + part[1:] + "}" if part.startswith(":") else part for part in template.split("/"))
    on_api = template.startswith("/api/")
    endpoint = _endpoint(handler, auth=auth, limited=on_api, faults=on_api if faults is None else faults,
                         template=template)
    return Route(path, endpoint, methods=[method], name=template)


async def health(request: Request, t: Target, user: User | None) -> Response:
    await t.behaviour.work("health")
    return JSONResponse({"status": "ok", "timestamp": _now_iso(), "version": VERSION,
                         "uptime": round(time.time() - t.started_at, 3), "environment": "reference",
                         "service": "medianest-backend"})


async def simple_health(request: Request, t: Target, user: User | None) -> Response:
    await t.behaviour.work("simple_health")
    memory = t.process.memory_info()
    return JSONResponse({"status": "healthy", "uptime": round(time.time() - t.started_at, 3),
                         "memory": {"rss": memory.rss, "heapUsed": max(memory.rss - getattr(memory, "shared", 0), 0)},
                         "pid": os.getpid()})


async def simple_health_ready(request: Request, t: Target, user: User | None) -> Response:
    await t.behaviour.work("simple_health")
    return JSONResponse({"status": "ready", "timestamp": _now_iso()})


async def simple_health_live(request: Request, t: Target, user: User | None) -> Response:
    await t.behaviour.work("simple_health")
    return JSONResponse({"status": "alive", "timestamp": _now_iso()})


async def csrf_token(request: Request, t: Target, user: User | None) -> Response:
    await t.behaviour.work("csrf")
    token = secrets.token_hex(32)
    response = _ok({"token": token})
    response.set_cookie("csrf-token", token, samesite="strict")
    return response


async def plex_pin(request: Request, t: Target, user: User | None) -> Response:
    await t.behaviour.work("plex_pin")
    pin_id = secrets.randbelow(10**9)
    code = secrets.token_hex(2).upper()
    return _ok({"id": pin_id, "code": code, "qrUrl": f"https://plex.tv/link/#!?code={code}", "expiresIn": 900})


async def plex_verify(request: Request, t: Target, user: User | None) -> Response:
    body = await _json_body(request)
    if body is None or body.get("pinId") in (None, ""):
        return _error(400, "VALIDATION_ERROR", "pinId is required")
    await t.behaviour.work("plex_verify", db=True)
    user, token = t.store.login(str(body["pinId"]))
    csrf = secrets.token_hex(32)
    response = _ok({"user": user.public(), "token": token,
                    "rememberToken": secrets.token_urlsafe(32) if body.get("rememberMe") else None,
                    "csrfToken": csrf})
    response.set_cookie("auth-token", token, httponly=True, samesite="lax")
    response.set_cookie("csrf-token", csrf, samesite="strict")
    return response


async def session(request: Request, t: Target, user: User) -> Response:
    await t.behaviour.work("session", db=True)
    return _ok({"user": user.public()})


async def logout(request: Request, t: Target, user: User | None) -> Response:
    await t.behaviour.work("logout", db=True)
    t.store.sessions.pop(_bearer_token(request), None)
    response = JSONResponse({"success": True, "message": "Logged out successfully"})
    response.delete_cookie("auth-token")
    return response


async def dashboard_stats(request: Request, t: Target, user: User) -> Response:
    """Per-user cache: a hit is fast and needs no DB connection, a miss costs the full uncached service time."""
    cache = t.behaviour.dashboard_cache
    body = cache.get(user.id)
    if body is not None:
        await t.behaviour.work("dashboard_cached")
        return Response(body, media_type="application/json", headers={"X-Cache": "HIT"})
    await t.behaviour.work("dashboard_uncached", db=True)
    requests = list(user.requests.values())
    counts = {s: sum(1 for r in requests if r["status"] == s) for s in ("pending", "approved", "available")}
    body = json.dumps({"success": True, "data": {
        "user": user.public(),
        "requests": {"recent": requests[-5:][::-1], "counts": counts},
        "recentlyAdded": [{"tmdbId": 1000 + i, "title": f"Recently added {i}", "addedAt": _now_iso()}
                          for i in range(5)],
        "stats": {"totalRequests": len(requests), "pendingRequests": counts["pending"],
                  "availableRequests": counts["available"]},
    }}, separators=(",", ":")).encode()
    cache.put(user.id, body)
    return Response(body, media_type="application/json", headers={"X-Cache": "MISS"})


def _service_status(name: str) -> dict[str, Any]:
    return {"service": name, "status": "up", "responseTime": 12, "lastCheckAt": _now_iso(), "uptime": 99.9}


async def dashboard_status(request: Request, t: Target, user: User) -> Response:
    await t.behaviour.work("dashboard_status")
    return _ok([_service_status(name) for name in STATUS_SERVICES])


async def dashboard_service_status(request: Request, t: Target, user: User) -> Response:
    service = request.path_params["service"]
    if service not in STATUS_SERVICES:
        return _error(404, "NOT_FOUND", f"Unknown service {service!r}")
    await t.behaviour.work("dashboard_status")
    return _ok(_service_status(service))


async def notifications(request: Request, t: Target, user: User) -> Response:
    await t.behaviour.work("notifications", db=True)
    return _ok([{"id": i, "type": "info", "title": f"Notification {i}", "message": "Your request was updated",
                 "read": False, "createdAt": _now_iso()} for i in range(1, 4)])


def _positive_int(value: str | None, default: int) -> int | None:
    if value is None or value == "":
        return default
    return int(value) if value.isdigit() and int(value) > 0 else None


async def media_search(request: Request, t: Target, user: User) -> Response:
    query = request.query_params.get("query", "").strip()
    page = _positive_int(request.query_params.get("page"), 1)
    if not query or page is None:
        return _error(400, "VALIDATION_ERROR", "query is required and page must be a positive integer")
    await t.behaviour.work("media_search", db=True)
    base = zlib.crc32(query.encode()) % 900_000 + 100 * page
    results = [{"id": base + i, "tmdbId": base + i, "title": f"{query.title()} {i + 1}",
                "mediaType": "movie" if i % 2 == 0 else "tv", "overview": f"A result for {query}",
                "posterPath": f"/poster/{base + i}.jpg", "releaseDate": "2024-01-01"} for i in range(20)]
    return _ok({"results": results, "page": page, "totalPages": 5, "totalResults": 100})


async def media_details(request: Request, t: Target, user: User) -> Response:
    media_type, tmdb_id = request.path_params["mediaType"], request.path_params["tmdbId"]
    if media_type not in ("movie", "tv") or not tmdb_id.isdigit():
        return _error(400, "VALIDATION_ERROR", "mediaType must be movie or tv and tmdbId an integer")
    await t.behaviour.work("media_details", db=True)
    return _ok({"id": int(tmdb_id), "tmdbId": int(tmdb_id), "mediaType": media_type,
                "title": f"{media_type.title()} {tmdb_id}", "overview": "Details", "status": "unknown"})


async def media_request_create(request: Request, t: Target, user: User) -> Response:
    body = await _json_body(request)
    media_type = body.get("mediaType") if body else None
    tmdb_id = body.get("tmdbId") if body else None
    if isinstance(tmdb_id, str) and tmdb_id.isdigit():
        tmdb_id = int(tmdb_id)
    if media_type not in ("movie", "tv") or not isinstance(tmdb_id, int) or isinstance(tmdb_id, bool):
        return _error(400, "VALIDATION_ERROR", "mediaType must be movie or tv and tmdbId an integer")
    await t.behaviour.work("media_request_create", db=True)
    return _ok(t.store.create_request(user, media_type, tmdb_id), status=201)


async def media_requests_list(request: Request, t: Target, user: User) -> Response:
    params = request.query_params
    page = _positive_int(params.get("page"), 1)
    page_size = _positive_int(params.get("pageSize"), 20)
    if page is None or page_size is None:
        return _error(400, "VALIDATION_ERROR", "page and pageSize must be positive integers")
    page_size = min(page_size, 100)
    await t.behaviour.work("media_requests_list", db=True)
    items = [r for r in reversed(user.requests.values())
             if params.get("status") in (None, r["status"]) and params.get("mediaType") in (None, r["mediaType"])]
    total_pages = max(math.ceil(len(items) / page_size), 1)
    return JSONResponse({"success": True, "data": items[(page - 1) * page_size: page * page_size],
                         "meta": {"totalCount": len(items), "totalPages": total_pages, "currentPage": page,
                                  "pageSize": page_size}})


def _own_request(request: Request, user: User) -> dict[str, Any] | None:
    raw = request.path_params["id"]
    return user.requests.get(int(raw)) if raw.isdigit() else None


async def media_request_detail(request: Request, t: Target, user: User) -> Response:
    await t.behaviour.work("media_request_detail", db=True)
    item = _own_request(request, user)
    return _ok(item) if item else _error(404, "NOT_FOUND", "Media request not found")


async def media_request_delete(request: Request, t: Target, user: User) -> Response:
    await t.behaviour.work("media_request_delete", db=True)
    item = _own_request(request, user)
    if item is None:
        return _error(404, "NOT_FOUND", "Media request not found")
    del user.requests[item["id"]]
    return JSONResponse({"success": True, "message": "Media request deleted"})


async def media_upload(request: Request, t: Target, user: User) -> Response:
    """Counts the multipart body chunk by chunk (never holds it); 413 as soon as it passes max_upload_mb. The
    service time is the processing after the body is read, as the audit measured it."""
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        return _error(400, "VALIDATION_ERROR", "expected a multipart/form-data body")
    limit = int(t.cfg.max_upload_mb * 1024 * 1024)
    too_large = _error(413, "PAYLOAD_TOO_LARGE", f"upload larger than {t.cfg.max_upload_mb:g} MB")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        return too_large
    received = 0
    async for chunk in request.stream():
        received += len(chunk)
        if received > limit:
            return too_large
    await t.behaviour.work("upload", db=True)
    return _ok({"id": secrets.token_hex(8), "bytes": received}, status=201)


async def page(request: Request, t: Target, user: User | None) -> Response:
    await t.behaviour.work("page")
    return HTMLResponse(t.page)


async def static_asset(request: Request, t: Target, user: User | None) -> Response:
    asset = t.bundle.assets.get(request.path_params["asset"])
    if asset is None:
        return _error(404, "NOT_FOUND", "No such asset")
    content_type, size = asset
    await t.behaviour.work("static")
    headers = {"Cache-Control": "public, max-age=31536000, immutable", "Content-Length": str(size)}
    if size <= Bundle.BLOCK:
        return Response(bytes(t.bundle.piece(size)), media_type=content_type, headers=headers)
    return StreamingResponse(t.bundle.stream(size), media_type=content_type, headers=headers)


async def metrics(request: Request, t: Target, user: User | None) -> Response:
    token = t.cfg.metrics_token
    if token and not secrets.compare_digest(request.headers.get("authorization", ""), f"Bearer {token}"):
        return _error(401, "UNAUTHORIZED", "metrics require a bearer token")
    return Response(render(t.registry), media_type=CONTENT_TYPE)


def routes() -> list[Route]:
    health_routes = [_route("GET", path, health, faults=False) for path in ("/health", "/api/health", f"{API}/health")]
    return health_routes + [
        _route("GET", f"{API}/simple-health", simple_health, faults=False),
        _route("GET", f"{API}/simple-health/ready", simple_health_ready, faults=False),
        _route("GET", f"{API}/simple-health/live", simple_health_live, faults=False),
        _route("GET", f"{API}/csrf/token", csrf_token),
        _route("POST", f"{API}/csrf/refresh", csrf_token),
        _route("POST", f"{API}/auth/plex/pin", plex_pin),
        _route("POST", f"{API}/auth/plex/verify", plex_verify),
        _route("GET", f"{API}/auth/session", session, auth=True),
        _route("POST", f"{API}/auth/logout", logout, auth=True),
        _route("GET", f"{API}/dashboard/stats", dashboard_stats, auth=True),
        _route("GET", f"{API}/dashboard/status", dashboard_status, auth=True),
        _route("GET", f"{API}/dashboard/status/:service", dashboard_service_status, auth=True),
        _route("GET", f"{API}/dashboard/notifications", notifications, auth=True),
        _route("GET", f"{API}/media/search", media_search, auth=True),
        _route("POST", f"{API}/media/request", media_request_create, auth=True),
        _route("POST", f"{API}/media/upload", media_upload, auth=True),
        _route("GET", f"{API}/media/requests", media_requests_list, auth=True),
        _route("GET", f"{API}/media/requests/:id", media_request_detail, auth=True),
        _route("DELETE", f"{API}/media/requests/:id", media_request_delete, auth=True),
        _route("GET", f"{API}/media/:mediaType/:tmdbId", media_details, auth=True),
        _route("GET", "/", page),
        Route("/_next/static/{asset:path}", _endpoint(static_asset, auth=False, limited=False, faults=False,
                                                      template="/_next/static/:asset"),
              methods=["GET"], name="/_next/static/:asset"),
        _route("GET", "/metrics", metrics),
    ]


# ----------------------------------------------------------------------------------------------------- Socket.IO


def _handshake_token(environ: dict[str, Any], auth: Any) -> str | None:
    """MediaNest's order: query ?token=, Authorization: Bearer, auth.token, cookie auth-token."""
    query = parse_qs(environ.get("QUERY_STRING", "")).get("token")
    if query:
        return query[0]
    header = environ.get("HTTP_AUTHORIZATION", "")
    if header[:7].lower() == "bearer ":
        return header[7:].strip()
    if isinstance(auth, dict) and auth.get("token"):
        return str(auth["token"])
    cookie = SimpleCookie(environ.get("HTTP_COOKIE", "")).get("auth-token")
    return cookie.value if cookie else None


def _register_socketio(sio: socketio.AsyncServer, t: Target) -> None:
    def connected(sid: str, namespace: str, user: User | None) -> None:
        t.sockets[namespace] += 1
        t.socket_users[sid] = user
        t.behaviour.leak.retain()

    async def pong(sid: str, namespace: str) -> dict[str, float]:
        reply = {"timestamp": time.time()}
        await sio.emit("pong", reply, to=sid, namespace=namespace)
        return reply

    async def echo(sid: str, namespace: str, data: Any) -> Any:
        await sio.emit("echo", data, to=sid, namespace=namespace)
        return data

    def disconnected(sid: str, namespace: str) -> None:
        t.sockets[namespace] -= 1
        t.socket_users.pop(sid, None)

    # Namespace "/": authentication optional.
    @sio.on("connect")
    async def root_connect(sid: str, environ: dict[str, Any], auth: Any = None) -> None:
        token = _handshake_token(environ, auth)
        connected(sid, "/", t.store.sessions.get(token) if token else None)

    @sio.on("disconnect")
    async def root_disconnect(sid: str, reason: Any = None) -> None:
        disconnected(sid, "/")

    @sio.on("ping")
    async def root_ping(sid: str, data: Any = None) -> dict[str, float]:
        return await pong(sid, "/")

    @sio.on("echo")
    async def root_echo(sid: str, data: Any = None) -> Any:
        return await echo(sid, "/", data)

    @sio.on("user-info")
    async def root_user_info(sid: str, data: Any = None) -> Any:
        user = t.socket_users.get(sid)
        return user.public() if user else None

    # Namespace "/media": a valid token is required; rooms receive media-status pushes.
    @sio.on("connect", namespace="/media")
    async def media_connect(sid: str, environ: dict[str, Any], auth: Any = None) -> None:
        if t.cfg.socket_auth_error:
            raise socketio.exceptions.ConnectionRefusedError("Internal server error")
        token = _handshake_token(environ, auth)
        user = t.store.sessions.get(token) if token else None
        if user is None:
            raise socketio.exceptions.ConnectionRefusedError("Authentication failed")
        connected(sid, "/media", user)

    @sio.on("disconnect", namespace="/media")
    async def media_disconnect(sid: str, reason: Any = None) -> None:
        for sids in t.rooms.values():
            sids.discard(sid)
        t.rooms = {room: sids for room, sids in t.rooms.items() if sids}
        disconnected(sid, "/media")

    @sio.on("ping", namespace="/media")
    async def media_ping(sid: str, data: Any = None) -> dict[str, float]:
        return await pong(sid, "/media")

    @sio.on("echo", namespace="/media")
    async def media_echo(sid: str, data: Any = None) -> Any:
        return await echo(sid, "/media", data)

    @sio.on("user-info", namespace="/media")
    async def media_user_info(sid: str, data: Any = None) -> Any:
        user = t.socket_users.get(sid)
        return user.public() if user else None

    def room_id(data: Any) -> str | None:
        room = data.get("roomId") if isinstance(data, dict) else data
        return str(room) if isinstance(room, (str, int)) and str(room) else None

    @sio.on("join-media-room", namespace="/media")
    async def join_media_room(sid: str, data: Any = None) -> dict[str, Any]:
        room = room_id(data)
        if room is None:
            return {"success": False, "error": "roomId is required"}
        await sio.enter_room(sid, f"media:{room}", namespace="/media")
        t.rooms.setdefault(room, set()).add(sid)
        await sio.emit("joined-room", {"roomId": room}, to=sid, namespace="/media")
        return {"success": True, "roomId": room}

    @sio.on("media-status", namespace="/media")
    async def media_status(sid: str, data: Any = None) -> None:
        """--push-source relay, as MediaNest main: forwarded to the other members of the sender's media rooms,
        with the sender's payload (its sentAt included) plus userId and a timestamp."""
        if t.cfg.push_source != "relay" or not isinstance(data, dict):
            return
        user = t.socket_users.get(sid)
        payload = {**data, "userId": user.id if user else None, "timestamp": _now_iso()}
        for room in sio.rooms(sid, namespace="/media"):
            if room.startswith("media:"):
                await sio.emit("media-status", payload, room=room, skip_sid=sid, namespace="/media")

    @sio.on("leave-media-room", namespace="/media")
    async def leave_media_room(sid: str, data: Any = None) -> dict[str, Any]:
        room = room_id(data)
        if room is None:
            return {"success": False, "error": "roomId is required"}
        await sio.leave_room(sid, f"media:{room}", namespace="/media")
        members = t.rooms.get(room)
        if members is not None:
            members.discard(sid)
            if not members:
                del t.rooms[room]
        await sio.emit("left-room", {"roomId": room}, to=sid, namespace="/media")
        return {"success": True, "roomId": room}


class _SocketServer(socketio.AsyncServer):
    """python-socketio's server, answering a polling client's pending GET as soon as it disconnects, as Node's
    engine.io does; python-engineio leaves that GET open for ping_interval + ping_timeout (85 s here), which
    holds a polling client's disconnect() just as long."""

    async def _handle_eio_disconnect(self, eio_sid: str, reason: Any) -> None:
        await super()._handle_eio_disconnect(eio_sid, reason)
        socket = self.eio.sockets.get(eio_sid)
        if socket is not None:
            socket.queue.put_nowait(None)


def create_app(cfg: TargetConfig) -> tuple[socketio.ASGIApp, Target]:
    """The ASGI app: /socket.io to python-socketio, everything else through the metrics middleware to Starlette."""
    target = Target(cfg, Behaviour(cfg))
    # MediaNest's Socket.IO settings: 25 s ping interval, 60 s ping timeout, 1 MB max message.
    target.sio = _SocketServer(async_mode="asgi", cors_allowed_origins="*", ping_interval=25,
                                      ping_timeout=60, max_http_buffer_size=1_000_000)
    _register_socketio(target.sio, target)
    http_app = Starlette(routes=routes())
    http_app.state.target = target
    app = socketio.ASGIApp(target.sio, other_asgi_app=HttpMetricsMiddleware(http_app, target.http),
                           socketio_path="socket.io", on_startup=target.start, on_shutdown=target.stop)
    return app, target
