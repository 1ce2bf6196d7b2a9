"""The stand-in MediaNest put together: the Starlette app (routes.py behind middleware.py's chain, timed by the
HTTP metrics middleware), the Socket.IO server (sockets.py) under /socket.io, and the lifespan that runs the
target's background work, all sharing one Target."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager

import socketio
from starlette.applications import Starlette

from reference_target.behaviour import Behaviour
from reference_target.config import TargetConfig
from reference_target.metrics import HttpMetricsMiddleware
from reference_target.middleware import starlette_route
from reference_target.routes import ROUTES
from reference_target.sockets import MediaNamespace, RootNamespace, SocketServer
from reference_target.state import Target


def lifespan(target: Target, media: MediaNamespace) -> Callable[[Starlette], AbstractAsyncContextManager[None]]:
    """While the app serves: GC timing, loop-lag sampling and, with --push-source server, the media-status
    pushes; all stop with the app."""

    @asynccontextmanager
    async def serving(app: Starlette) -> AsyncIterator[None]:
        target.gc.install()
        tasks = [asyncio.create_task(target.lag.run())]
        if target.cfg.push_source == "server":
            tasks.append(asyncio.create_task(media.push_media_status()))
        try:
            yield
        finally:
            target.gc.uninstall()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    return serving


def create_app(cfg: TargetConfig) -> tuple[socketio.ASGIApp, Target]:
    """The ASGI app: /socket.io to python-socketio, everything else through the metrics middleware to Starlette
    (which also runs the lifespan)."""
    target = Target(cfg, Behaviour(cfg))
    # MediaNest's Socket.IO settings: 25 s ping interval, 60 s ping timeout, 1 MB max message.
    sio = SocketServer(async_mode="asgi", cors_allowed_origins="*", ping_interval=25, ping_timeout=60,
                       max_http_buffer_size=1_000_000)
    media = MediaNamespace(target)
    sio.register_namespace(RootNamespace(target))
    sio.register_namespace(media)
    http_app = Starlette(routes=[starlette_route(route) for route in ROUTES], lifespan=lifespan(target, media))
    http_app.state.target = target
    app = socketio.ASGIApp(sio, other_asgi_app=HttpMetricsMiddleware(http_app, target.http), socketio_path="socket.io")
    return app, target
