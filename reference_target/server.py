"""Serve the target with uvicorn on a socket bound here, so the real port (also for --port 0) is known and
announced on stdout as soon as the server accepts connections."""

from __future__ import annotations

import os
import signal
import socket

import uvicorn

from reference_target.app import Target, create_app
from reference_target.config import TargetConfig

LISTENING = "reference target listening on"


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on sockets that say so, and without it uvicorn's
    # separate header and body writes meet delayed ACKs (40 ms per response).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


class _Server(uvicorn.Server):
    """uvicorn's server, announcing its URL once started, ending stalls when stopping and, with
    exit_with_parent, stopping when orphaned."""

    def __init__(self, config: uvicorn.Config, target: Target, url: str, parent_pid: int | None):
        super().__init__(config)
        self.target = target
        self.url = url
        self.parent_pid = parent_pid

    async def startup(self, sockets=None) -> None:
        await super().startup(sockets=sockets)
        if self.started:
            print(f"{LISTENING} {self.url}", flush=True)

    async def shutdown(self, sockets=None) -> None:
        self.target.behaviour.faults.release_all()
        await super().shutdown(sockets=sockets)

    async def on_tick(self, counter: int) -> bool:
        if self.parent_pid is not None and counter % 10 == 0 and os.getppid() != self.parent_pid:
            return True
        return await super().on_tick(counter)


def serve(cfg: TargetConfig, sock: socket.socket) -> None:
    """Run until SIGINT or SIGTERM, then shut down gracefully: stalls end at once (504), other requests in
    flight get up to 3 s."""
    app, target = create_app(cfg)
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on", loop="asyncio", http="h11",
                            ws="wsproto", timeout_graceful_shutdown=3, server_header=False)
    server = _Server(config, target, url_of(sock), os.getppid() if cfg.exit_with_parent else None)
    # uvicorn re-raises the signal that stopped it once it has restored the previous handlers: make those
    # no-ops, so a stop is a clean exit (status 0) rather than a KeyboardInterrupt or death by SIGTERM.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: None)
    server.run(sockets=[sock])
