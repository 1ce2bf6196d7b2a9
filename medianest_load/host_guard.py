"""A load tool must not hit production by mistake: only loopback, unless the user names the host.

The guard must read a URL the way the clients that connect read it. Parsers disagree on odd URLs (the
stdlib reads `http://10.0.0.1\\@127.0.0.1` as 127.0.0.1, urllib3 as 10.0.0.1), so a host URL is first held
to a strict form (scheme://host[:port], printable ASCII, no userinfo, backslash, percent sign, path, query or
fragment), then every client's own parser must find the same host and port, and only that host is checked.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

from medianest_load.inputs import InputError

EXPECTED = "an http:// or https:// URL with a host name, like http://127.0.0.1:8080 (scheme, host and port only)"
DEFAULT_PORTS = {"http": 80, "https": 443}
_NAME = re.compile(r"^[a-z0-9]([a-z0-9.-]*[a-z0-9])?$")  # a DNS name or dotted numbers (lower case)
_NUMERIC_LABEL = re.compile(r"^(\d+|0x[0-9a-f]*)$")  # no DNS name ends in one: it is an IPv4 address of some form


class HostRefused(InputError):
    pass


@dataclass(frozen=True)
class HostUrl:
    """A host URL as every client connects to it."""

    scheme: str
    hostname: str  # lower case, IPv6 without brackets
    port: int


def is_loopback(hostname: str) -> bool:
    if hostname.lower() in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(hostname.strip("[]")).is_loopback
    except ValueError:
        return False


def url_problem(url: str) -> str | None:
    """Why the text is not a host URL of the strict form (None when it is); the reason never quotes the URL."""
    if not isinstance(url, str) or not url:
        return "it is empty"
    if any(ord(char) < 33 or ord(char) > 126 for char in url):
        return "it holds whitespace, a control or a non-ASCII character (write IDNA names as xn--)"
    for char, what in (("\\", "a backslash"), ("@", "an '@' (no user names)"), ("%", "percent-encoding"),
                       ("?", "a query"), ("#", "a fragment")):
        if char in url:
            return f"it holds {what}"
    scheme, separator, rest = url.partition("://")
    if not separator or scheme not in DEFAULT_PORTS:
        return "its scheme is not http or https"
    netloc, _, path = rest.partition("/")
    if path:
        return "it has a path (the target profile holds the routes)"
    host, port = _split_port(netloc)
    if port is not None and not (port.isdigit() and 0 < int(port) < 65536):
        return "its port is not a number from 1 to 65535"
    return _host_problem(host.lower())


def _host_problem(host: str) -> str | None:
    if host.startswith("["):
        return None if host.endswith("]") and _is_ip(host[1:-1], ipaddress.IPv6Address) else \
            "its host is not a bracketed IPv6 address"
    if not _NAME.match(host):
        return "its host is not a host name, an IPv4 address or a bracketed IPv6 address"
    if _NUMERIC_LABEL.match(host.rsplit(".", 1)[-1]) and not _is_ip(host, ipaddress.IPv4Address):
        return "its host is an IPv4 address in another form than dotted decimal (clients read such forms differently)"
    return None


def _is_ip(text: str, kind: type) -> bool:
    try:
        kind(text)
    except ValueError:
        return False
    return True


def _split_port(netloc: str) -> tuple[str, str | None]:
    if netloc.startswith("["):
        host, _, rest = netloc.partition("]")
        return host + "]", rest[1:] if rest.startswith(":") else (rest or None)
    host, separator, port = netloc.rpartition(":")
    return (host, port) if separator else (netloc, None)


def _stdlib(url: str) -> tuple[str, int | None]:
    parts = urlsplit(url)
    return parts.hostname or "", parts.port


def _geventhttpclient(url: str) -> tuple[str, int | None]:
    from geventhttpclient.url import URL

    parsed = URL(url)
    return parsed.host, parsed.port


def _engineio_url(url: str, transport: str) -> str:
    """The URL python-engineio builds for a transport from the host URL (what Socket.IO users connect to)."""
    from engineio.base_client import BaseClient

    return BaseClient._get_engineio_url(None, url, "socket.io", transport)


def _requests_polling(url: str) -> tuple[str, int | None]:
    from requests.models import PreparedRequest
    from urllib3.util import parse_url

    prepared = PreparedRequest()
    prepared.prepare_url(_engineio_url(url, "polling"), None)
    parsed = parse_url(prepared.url or "")  # prepare_url always sets it
    return parsed.host or "", parsed.port


def _websocket_client(url: str) -> tuple[str, int | None]:
    from websocket._url import parse_url

    hostname, port, _, _ = parse_url(_engineio_url(url, "websocket"))
    return hostname, port


def _httpx(url: str) -> tuple[str, int | None]:
    import httpx

    parsed = httpx.URL(url)
    return parsed.host, parsed.port


# Every client that connects to the host, by its own parser (add one here when a new client connects).
CLIENT_PARSERS: dict[str, Callable[[str], tuple[str, int | None]]] = {
    "urllib.parse (the guard)": _stdlib,
    "geventhttpclient (FastHttpUser)": _geventhttpclient,
    "requests/urllib3 (Socket.IO polling)": _requests_polling,
    "websocket-client (Socket.IO websocket)": _websocket_client,
    "httpx": _httpx,
}


def client_views(url: str) -> dict[str, tuple[str, int] | str]:
    """The (host, port) each client would connect to, or why its parser refuses the URL."""
    scheme = url.partition("://")[0]
    views: dict[str, tuple[str, int] | str] = {}
    for client, parse in CLIENT_PARSERS.items():
        try:
            host, port = parse(url)
        except Exception as error:  # noqa: BLE001 - any parser failure is a refusal, named below
            views[client] = type(error).__name__
            continue
        views[client] = (host.lower().strip("[]"), port or DEFAULT_PORTS.get(scheme, 0))
    return views


def parse_host_url(url: str, source: str) -> HostUrl:
    """The host URL every client agrees on, or HostRefused (one line) naming what is wrong with it."""
    problem = url_problem(url)
    if problem is None:
        views = client_views(url)
        agreed = set(views.values())
        if len(agreed) == 1 and isinstance(view := agreed.pop(), tuple) and view[0]:
            return HostUrl(url.partition("://")[0], view[0], view[1])
        problem = "its clients read it differently: " + "; ".join(f"{client} {view}" for client, view in views.items())
    raise HostRefused(f"{source}: host: got {shown(url)}, expected {EXPECTED}; {problem}")


def shown(url: str) -> str:
    """The URL as an error message may show it: on one line, without anything before an '@'."""
    masked = re.sub(r"(?<=://)[^/]*@", "***@", url) if isinstance(url, str) else url
    text = repr(masked)
    return text if len(text) <= 120 else f"{text[:100]}... ({len(text)} characters)"


def check_host(url: str, allowed_hosts: tuple[str, ...] | list[str], source: str) -> HostUrl:
    """The host URL as the clients connect to it, or HostRefused (one line) unless it is loopback or allowed."""
    host = parse_host_url(url, source)
    if is_loopback(host.hostname) or host.hostname in {name.lower() for name in allowed_hosts}:
        return host
    raise HostRefused(
        f"{source}: host: refusing {host.hostname!r}: it is not loopback; name it in the scenario's "
        f"allowed_hosts or pass --allow-host {host.hostname} to load it on purpose"
    )
