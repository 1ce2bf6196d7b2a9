"""The HTTP routes of the stand-in MediaNest, under MediaNest's paths and with its response shapes, grouped by
area; ROUTES says for each route whether it needs a session. What stands before every handler (rate limiter,
CSRF, faults, authentication) is in middleware.py."""

from __future__ import annotations

import json
import math
import os
import secrets
import time
import zlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse

from reference_target.bundle import Bundle
from reference_target.metrics import CONTENT_TYPE, heap_used_bytes, render
from reference_target.state import Target, User, now_iso

VERSION = "1.0.0"
API = "/api/v1"
JSON_BODY_LIMIT = 1024 * 1024  # MediaNest's express.json limit
STATUS_SERVICES = ("plex", "overseerr", "uptime-kuma")


# --------------------------------------------------------------------------------------------- responses and requests


def error(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"success": False, "error": {"code": code, "message": message}}, status, headers)


def ok(data: Any, status: int = 200) -> JSONResponse:
    return JSONResponse({"success": True, "data": data}, status)


def bearer_token(request: Request) -> str | None:
    """MediaNest's order: Authorization: Bearer, then the auth-token cookie."""
    header = request.headers.get("authorization", "")
    if header[:7].lower() == "bearer ":
        return header[7:].strip()
    return request.cookies.get("auth-token")


async def json_body(request: Request) -> dict[str, Any] | None:
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


# ------------------------------------------------------------------------------------------------------------- health


async def health(request: Request, t: Target) -> Response:
    await t.behaviour.work("health")
    return JSONResponse({"status": "ok", "timestamp": now_iso(), "version": VERSION,
                         "uptime": round(time.time() - t.started_at, 3), "environment": "reference",
                         "service": "medianest-backend"})


async def simple_health(request: Request, t: Target) -> Response:
    await t.behaviour.work("simple_health")
    memory = t.process.memory_info()
    return JSONResponse({"status": "healthy", "uptime": round(time.time() - t.started_at, 3),
                         "memory": {"rss": memory.rss, "heapUsed": heap_used_bytes(memory)},
                         "pid": os.getpid()})


async def simple_health_ready(request: Request, t: Target) -> Response:
    await t.behaviour.work("simple_health")
    return JSONResponse({"status": "ready", "timestamp": now_iso()})


async def simple_health_live(request: Request, t: Target) -> Response:
    await t.behaviour.work("simple_health")
    return JSONResponse({"status": "alive", "timestamp": now_iso()})


# ------------------------------------------------------------------------------------------------------ csrf and auth


async def csrf_token(request: Request, t: Target) -> Response:
    await t.behaviour.work("csrf")
    token = secrets.token_hex(32)
    response = ok({"token": token})
    response.set_cookie("csrf-token", token, samesite="strict")
    return response


async def plex_pin(request: Request, t: Target) -> Response:
    await t.behaviour.work("plex_pin")
    pin_id = secrets.randbelow(10**9)
    code = secrets.token_hex(2).upper()
    return ok({"id": pin_id, "code": code, "qrUrl": f"https://plex.tv/link/#!?code={code}", "expiresIn": 900})


async def plex_verify(request: Request, t: Target) -> Response:
    body = await json_body(request)
    if body is None or body.get("pinId") in (None, ""):
        return error(400, "VALIDATION_ERROR", "pinId is required")
    await t.behaviour.work("plex_verify", db=True)
    user, token = t.store.login(str(body["pinId"]))
    csrf = secrets.token_hex(32)
    response = ok({"user": user.public(), "token": token,
                   "rememberToken": secrets.token_urlsafe(32) if body.get("rememberMe") else None,
                   "csrfToken": csrf})
    response.set_cookie("auth-token", token, httponly=True, samesite="lax")
    response.set_cookie("csrf-token", csrf, samesite="strict")
    return response


async def session(request: Request, t: Target, user: User) -> Response:
    await t.behaviour.work("session", db=True)
    return ok({"user": user.public()})


async def logout(request: Request, t: Target, user: User) -> Response:
    await t.behaviour.work("logout", db=True)
    t.store.sessions.pop(bearer_token(request), None)
    response = JSONResponse({"success": True, "message": "Logged out successfully"})
    response.delete_cookie("auth-token")
    return response


# ---------------------------------------------------------------------------------------------------------- dashboard


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
        "recentlyAdded": [{"tmdbId": 1000 + i, "title": f"Recently added {i}", "addedAt": now_iso()}
                          for i in range(5)],
        "stats": {"totalRequests": len(requests), "pendingRequests": counts["pending"],
                  "availableRequests": counts["available"]},
    }}, separators=(",", ":")).encode()
    cache.put(user.id, body)
    return Response(body, media_type="application/json", headers={"X-Cache": "MISS"})


def _service_status(name: str) -> dict[str, Any]:
    return {"service": name, "status": "up", "responseTime": 12, "lastCheckAt": now_iso(), "uptime": 99.9}


async def dashboard_status(request: Request, t: Target, user: User) -> Response:
    await t.behaviour.work("dashboard_status")
    return ok([_service_status(name) for name in STATUS_SERVICES])


async def dashboard_service_status(request: Request, t: Target, user: User) -> Response:
    service = request.path_params["service"]
    if service not in STATUS_SERVICES:
        return error(404, "NOT_FOUND", f"Unknown service {service!r}")
    await t.behaviour.work("dashboard_status")
    return ok(_service_status(service))


async def notifications(request: Request, t: Target, user: User) -> Response:
    await t.behaviour.work("notifications", db=True)
    return ok([{"id": i, "type": "info", "title": f"Notification {i}", "message": "Your request was updated",
                 "read": False, "createdAt": now_iso()} for i in range(1, 4)])


# -------------------------------------------------------------------------------------------------------------- media


def _positive_int(value: str | None, default: int) -> int | None:
    if value is None or value == "":
        return default
    return int(value) if value.isdigit() and int(value) > 0 else None


async def media_search(request: Request, t: Target, user: User) -> Response:
    query = request.query_params.get("query", "").strip()
    page = _positive_int(request.query_params.get("page"), 1)
    if not query or page is None:
        return error(400, "VALIDATION_ERROR", "query is required and page must be a positive integer")
    await t.behaviour.work("media_search", db=True)
    base = zlib.crc32(query.encode()) % 900_000 + 100 * page
    results = [{"id": base + i, "tmdbId": base + i, "title": f"{query.title()} {i + 1}",
                "mediaType": "movie" if i % 2 == 0 else "tv", "overview": f"A result for {query}",
                "posterPath": f"/poster/{base + i}.jpg", "releaseDate": "2024-01-01"} for i in range(20)]
    return ok({"results": results, "page": page, "totalPages": 5, "totalResults": 100})


async def media_details(request: Request, t: Target, user: User) -> Response:
    media_type, tmdb_id = request.path_params["mediaType"], request.path_params["tmdbId"]
    if media_type not in ("movie", "tv") or not tmdb_id.isdigit():
        return error(400, "VALIDATION_ERROR", "mediaType must be movie or tv and tmdbId an integer")
    await t.behaviour.work("media_details", db=True)
    return ok({"id": int(tmdb_id), "tmdbId": int(tmdb_id), "mediaType": media_type,
               "title": f"{media_type.title()} {tmdb_id}", "overview": "Details", "status": "unknown"})


async def media_request_create(request: Request, t: Target, user: User) -> Response:
    body = await json_body(request)
    media_type = body.get("mediaType") if body else None
    tmdb_id = body.get("tmdbId") if body else None
    if isinstance(tmdb_id, str) and tmdb_id.isdigit():
        tmdb_id = int(tmdb_id)
    if media_type not in ("movie", "tv") or not isinstance(tmdb_id, int) or isinstance(tmdb_id, bool):
        return error(400, "VALIDATION_ERROR", "mediaType must be movie or tv and tmdbId an integer")
    await t.behaviour.work("media_request_create", db=True)
    return ok(t.store.create_request(user, media_type, tmdb_id), status=201)


async def media_requests_list(request: Request, t: Target, user: User) -> Response:
    params = request.query_params
    page = _positive_int(params.get("page"), 1)
    page_size = _positive_int(params.get("pageSize"), 20)
    if page is None or page_size is None:
        return error(400, "VALIDATION_ERROR", "page and pageSize must be positive integers")
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
    return ok(item) if item else error(404, "NOT_FOUND", "Media request not found")


async def media_request_delete(request: Request, t: Target, user: User) -> Response:
    await t.behaviour.work("media_request_delete", db=True)
    item = _own_request(request, user)
    if item is None:
        return error(404, "NOT_FOUND", "Media request not found")
    del user.requests[item["id"]]
    return JSONResponse({"success": True, "message": "Media request deleted"})


async def media_upload(request: Request, t: Target, user: User) -> Response:
    """Counts the multipart body chunk by chunk (never holds it); 413 as soon as it passes max_upload_mb. The
    service time is the processing after the body is read, as the audit measured it."""
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        return error(400, "VALIDATION_ERROR", "expected a multipart/form-data body")
    limit = int(t.cfg.max_upload_mb * 1024 * 1024)
    too_large = error(413, "PAYLOAD_TOO_LARGE", f"upload larger than {t.cfg.max_upload_mb:g} MB")
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        return too_large
    received = 0
    async for chunk in request.stream():
        received += len(chunk)
        if received > limit:
            return too_large
    await t.behaviour.work("upload", db=True)
    return ok({"id": secrets.token_hex(8), "bytes": received}, status=201)


# ----------------------------------------------------------------------------------------------- frontend and metrics


async def page(request: Request, t: Target) -> Response:
    await t.behaviour.work("page")
    return HTMLResponse(t.page)


async def static_asset(request: Request, t: Target) -> Response:
    asset = t.bundle.assets.get(request.path_params["asset"])
    if asset is None:
        return error(404, "NOT_FOUND", "No such asset")
    content_type, size = asset
    await t.behaviour.work("static")
    headers = {"Cache-Control": "public, max-age=31536000, immutable", "Content-Length": str(size)}
    if size <= Bundle.BLOCK:
        return Response(bytes(t.bundle.piece(size)), media_type=content_type, headers=headers)
    return StreamingResponse(t.bundle.stream(size), media_type=content_type, headers=headers)


async def metrics(request: Request, t: Target) -> Response:
    token = t.cfg.metrics_token
    if token and not secrets.compare_digest(request.headers.get("authorization", ""), f"Bearer {token}"):
        return error(401, "UNAUTHORIZED", "metrics require a bearer token")
    return Response(render(t.registry), media_type=CONTENT_TYPE)


# ---------------------------------------------------------------------------------------------------- the route table


PublicHandler = Callable[[Request, Target], Awaitable[Response]]
UserHandler = Callable[[Request, Target, User], Awaitable[Response]]


@dataclass(frozen=True)
class Route:
    """A route named by its MediaNest-style template (`/api/v1/media/requests/:id`), the label in /metrics.
    Everything under /api/ is rate-limited; injected faults hit /api routes unless `faults` says otherwise."""

    method: str
    template: str
    faults: bool | None = field(default=None, kw_only=True)
    path: str | None = field(default=None, kw_only=True)  # Starlette's path, when the template cannot say it

    @property
    def limited(self) -> bool:
        return self.template.startswith("/api/")

    @property
    def injects_faults(self) -> bool:
        return self.limited if self.faults is None else self.faults

    @property
    def starlette_path(self) -> str:
        """`/media/requests/:id` as Starlette writes it: `/media/requests/{id}`."""
        if self.path:
            return self.path
        return "/".join("{" + part[1:] + "}" if part.startswith(":") else part for part in self.template.split("/"))


@dataclass(frozen=True)
class PublicRoute(Route):
    """A route anyone may call."""

    handler: PublicHandler


@dataclass(frozen=True)
class UserRoute(Route):
    """A route that needs a session (bearer token or auth-token cookie): 401 without one."""

    handler: UserHandler


ROUTES: tuple[PublicRoute | UserRoute, ...] = (
    *(PublicRoute("GET", path, health, faults=False) for path in ("/health", "/api/health", f"{API}/health")),
    PublicRoute("GET", f"{API}/simple-health", simple_health, faults=False),
    PublicRoute("GET", f"{API}/simple-health/ready", simple_health_ready, faults=False),
    PublicRoute("GET", f"{API}/simple-health/live", simple_health_live, faults=False),
    PublicRoute("GET", f"{API}/csrf/token", csrf_token),
    PublicRoute("POST", f"{API}/csrf/refresh", csrf_token),
    PublicRoute("POST", f"{API}/auth/plex/pin", plex_pin),
    PublicRoute("POST", f"{API}/auth/plex/verify", plex_verify),
    UserRoute("GET", f"{API}/auth/session", session),
    UserRoute("POST", f"{API}/auth/logout", logout),
    UserRoute("GET", f"{API}/dashboard/stats", dashboard_stats),
    UserRoute("GET", f"{API}/dashboard/status", dashboard_status),
    UserRoute("GET", f"{API}/dashboard/status/:service", dashboard_service_status),
    UserRoute("GET", f"{API}/dashboard/notifications", notifications),
    UserRoute("GET", f"{API}/media/search", media_search),
    UserRoute("POST", f"{API}/media/request", media_request_create),
    UserRoute("POST", f"{API}/media/upload", media_upload),
    UserRoute("GET", f"{API}/media/requests", media_requests_list),
    UserRoute("GET", f"{API}/media/requests/:id", media_request_detail),
    UserRoute("DELETE", f"{API}/media/requests/:id", media_request_delete),
    UserRoute("GET", f"{API}/media/:mediaType/:tmdbId", media_details),
    PublicRoute("GET", "/", page),
    PublicRoute("GET", "/_next/static/:asset", static_asset, path="/_next/static/{asset:path}"),
    PublicRoute("GET", "/metrics", metrics),
)
