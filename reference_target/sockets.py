"""The Socket.IO side of the stand-in MediaNest: namespace `/` (a session is optional) and `/media` (a session is
required; rooms receive media-status events), one class each over a base that holds what both share."""

from __future__ import annotations

import asyncio
import time
from http.cookies import SimpleCookie
from typing import Any
from urllib.parse import parse_qs

import socketio

from reference_target.state import Target, User, now_iso

MEDIA_STATUSES = ("pending", "processing", "available")


def handshake_token(environ: dict[str, Any], auth: Any) -> str | None:
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


def room_id(data: Any) -> str | None:
    """A room named by `{"roomId": ...}` or by the bare value: a non-empty string or an integer."""
    room = data.get("roomId") if isinstance(data, dict) else data
    return str(room) if isinstance(room, (str, int)) and str(room) else None


class MediaNestNamespace(socketio.AsyncNamespace):
    """What both namespaces share: the connected sockets and their users (kept in the Target, where /metrics
    counts them; each connection also feeds --leak-kb-per-connection), and the ping, echo and user-info events.
    A subclass says who may connect (`admit`)."""

    def __init__(self, namespace: str, target: Target) -> None:
        super().__init__(namespace)
        self.target = target
        self.users: dict[str, User | None] = {}  # sid -> its session's user (None: anonymous)
        target.connected[namespace] = self.users

    async def trigger_event(self, event: str, *args: Any) -> Any:
        """MediaNest's events are hyphenated: `user-info` is handled by on_user_info. An event without a handler
        (`user_info` included) stays unhandled, so a client asking for an ack gets none."""
        if not isinstance(event, str) or "_" in event or not hasattr(self, f"on_{event.replace('-', '_')}"):
            return self.server.not_handled
        return await super().trigger_event(event.replace("-", "_"), *args)

    def admit(self, environ: dict[str, Any], auth: Any) -> User | None:
        """The user of a handshake, None for an anonymous one; raises ConnectionRefusedError to refuse it."""
        raise NotImplementedError

    async def on_connect(self, sid: str, environ: dict[str, Any], auth: Any = None) -> None:
        self.users[sid] = self.admit(environ, auth)
        self.target.behaviour.leak.retain()

    async def on_disconnect(self, sid: str, reason: Any = None) -> None:
        self.users.pop(sid, None)

    async def on_ping(self, sid: str, data: Any = None) -> dict[str, float]:
        reply = {"timestamp": time.time()}
        await self.emit("pong", reply, to=sid)
        return reply

    async def on_echo(self, sid: str, data: Any = None) -> Any:
        await self.emit("echo", data, to=sid)
        return data

    async def on_user_info(self, sid: str, data: Any = None) -> dict[str, Any] | None:
        user = self.users.get(sid)
        return user.public() if user else None


class RootNamespace(MediaNestNamespace):
    """Namespace `/`: anyone connects; a valid token makes the socket its user's."""

    def __init__(self, target: Target) -> None:
        super().__init__("/", target)

    def admit(self, environ: dict[str, Any], auth: Any) -> User | None:
        return self.target.store.session_user(handshake_token(environ, auth))


class MediaNamespace(MediaNestNamespace):
    """Namespace `/media`: a valid token is required; sockets join media rooms, which receive media-status
    events pushed by the target (--push-source server) or relayed from a member (--push-source relay)."""

    def __init__(self, target: Target) -> None:
        super().__init__("/media", target)
        self.room_members: dict[str, set[str]] = {}  # roomId -> sids

    def admit(self, environ: dict[str, Any], auth: Any) -> User | None:
        if self.target.cfg.socket_auth_error:
            raise socketio.exceptions.ConnectionRefusedError("Internal server error")
        user = self.target.store.session_user(handshake_token(environ, auth))
        if user is None:
            raise socketio.exceptions.ConnectionRefusedError("Authentication failed")
        return user

    async def on_disconnect(self, sid: str, reason: Any = None) -> None:
        for sids in self.room_members.values():
            sids.discard(sid)
        self.room_members = {room: sids for room, sids in self.room_members.items() if sids}
        await super().on_disconnect(sid, reason)

    async def on_join_media_room(self, sid: str, data: Any = None) -> dict[str, Any]:
        room = room_id(data)
        if room is None:
            return {"success": False, "error": "roomId is required"}
        await self.enter_room(sid, f"media:{room}")
        self.room_members.setdefault(room, set()).add(sid)
        await self.emit("joined-room", {"roomId": room}, to=sid)
        return {"success": True, "roomId": room}

    async def on_leave_media_room(self, sid: str, data: Any = None) -> dict[str, Any]:
        room = room_id(data)
        if room is None:
            return {"success": False, "error": "roomId is required"}
        await self.leave_room(sid, f"media:{room}")
        members = self.room_members.get(room)
        if members is not None:
            members.discard(sid)
            if not members:
                del self.room_members[room]
        await self.emit("left-room", {"roomId": room}, to=sid)
        return {"success": True, "roomId": room}

    async def on_media_status(self, sid: str, data: Any = None) -> None:
        """--push-source relay, as MediaNest main: forwarded to the other members of the sender's media rooms,
        with the sender's payload (its sentAt included) plus userId and a timestamp."""
        if self.target.cfg.push_source != "relay" or not isinstance(data, dict):
            return
        user = self.users.get(sid)
        payload = {**data, "userId": user.id if user else None, "timestamp": now_iso()}
        for room in self.rooms(sid):
            if room.startswith("media:"):
                await self.emit("media-status", payload, room=room, skip_sid=sid)

    async def push_media_status(self) -> None:
        """--push-source server: every push_interval_s, one media-status event to each joined room, stamped with
        the time it was produced and emitted push_latency_ms later, so the client's measured push delay includes
        that latency. Runs until cancelled."""
        cfg = self.target.cfg
        tick, latency_s = 0, cfg.push_latency_ms / 1000
        while True:
            await asyncio.sleep(max(cfg.push_interval_s - latency_s, 0.001))
            tick += 1
            status = MEDIA_STATUSES[tick % len(MEDIA_STATUSES)]
            events = [{"roomId": room, "status": status, "sentAt": time.time()}
                      for room, sids in self.room_members.items() if sids]
            if latency_s:
                await asyncio.sleep(latency_s)
            for payload in events:
                await self.emit("media-status", payload, room=f"media:{payload['roomId']}")


class SocketServer(socketio.AsyncServer):
    """python-socketio's server, answering a polling client's pending GET as soon as it disconnects, as Node's
    engine.io does; python-engineio leaves that GET open for ping_interval + ping_timeout (85 s here), which
    holds a polling client's disconnect() just as long."""

    async def _handle_eio_disconnect(self, eio_sid: str, reason: Any) -> None:
        await super()._handle_eio_disconnect(eio_sid, reason)
        socket = self.eio.sockets.get(eio_sid)
        if socket is not None:
            socket.queue.put_nowait(None)
