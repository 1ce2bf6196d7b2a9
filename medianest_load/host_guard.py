"""A load tool must not hit production by mistake: only loopback, unless the user names the host."""

from __future__ import annotations

import ipaddress
import re
from urllib.parse import urlsplit

_HOSTNAME = re.compile(r"^[A-Za-z0-9._:%-]+$")  # names, IPv4, IPv6 (brackets already removed, zone ids)


class HostRefused(ValueError):
    pass


def is_loopback(hostname: str) -> bool:
    if hostname.lower() in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(hostname.strip("[]")).is_loopback
    except ValueError:
        return False


def hostname_of(url: str) -> str | None:
    """The host name of an http(s) URL, or None when the text is no such URL."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError:
        return None
    hostname = parts.hostname
    return hostname if parts.scheme in ("http", "https") and hostname and _HOSTNAME.match(hostname) else None


def shown(url: str) -> str:
    """The URL as an error message may show it: without any user or password before the host."""
    return url.split("@")[-1]


def check_host(url: str, allowed_hosts: tuple[str, ...] | list[str], source: str) -> None:
    """Raise HostRefused (one line) unless the URL's host is loopback or explicitly allowed."""
    hostname = hostname_of(url)
    if hostname is None:
        raise HostRefused(f"{source}: host: got {shown(url)!r}, expected an http:// or https:// URL with a "
                          "host name, like http://127.0.0.1:8080")
    if is_loopback(hostname) or hostname.lower() in {host.lower() for host in allowed_hosts}:
        return
    raise HostRefused(
        f"{source}: host: refusing {hostname!r}: it is not loopback; name it in the scenario's "
        f"allowed_hosts or pass --allow-host {hostname} to load it on purpose"
    )
