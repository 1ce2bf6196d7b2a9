"""A load tool must not hit production by mistake: only loopback, unless the user names the host."""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit


class HostRefused(ValueError):
    pass


def is_loopback(hostname: str) -> bool:
    if hostname.lower() in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(hostname.strip("[]")).is_loopback
    except ValueError:
        return False


def check_host(url: str, allowed_hosts: tuple[str, ...], source: str) -> None:
    """Raise HostRefused (one line) unless the URL's host is loopback or explicitly allowed."""
    hostname = urlsplit(url).hostname or ""
    if is_loopback(hostname) or hostname.lower() in {host.lower() for host in allowed_hosts}:
        return
    raise HostRefused(
        f"{source}: host: refusing {url!r}: {hostname!r} is not loopback; name it in the scenario's "
        f"allowed_hosts or pass --allow-host {hostname} to load it on purpose"
    )
