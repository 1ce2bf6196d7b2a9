"""Shared fixtures. Locust is imported first: it monkey-patches gevent, and every test runs under it."""

import locust  # noqa: F401  # isort: skip  (must precede ssl, httpx, socketio)

from pathlib import Path

import httpx
import pytest

from medianest_load import secrets
from reference_target.launcher import TargetProcess, start_target


@pytest.fixture(autouse=True)
def own_secret_registry():
    """Secrets registered by one test (tokens like "bad") must not mask words in the next test's messages."""
    registered = set(secrets._SECRETS)
    yield
    secrets._SECRETS.clear()
    secrets._SECRETS.update(registered)


@pytest.fixture
def reference_target():
    """Factory: start the reference target on an ephemeral loopback port; every one is stopped at teardown."""
    started: list[TargetProcess] = []

    def start(*args: str) -> TargetProcess:
        target = start_target(list(args))
        started.append(target)
        return target

    yield start
    for target in started:
        target.stop()


@pytest.fixture
def issue_tokens(tmp_path):
    """Factory: log `count` users in on a target through its pin/verify flow; returns the tokens and a tokens file."""

    def issue(url: str, count: int) -> tuple[list[str], Path]:
        tokens = []
        with httpx.Client(base_url=url, timeout=5) as client:
            for _ in range(count):
                pin = client.post("/api/v1/auth/plex/pin", json={}).json()["data"]["id"]
                tokens.append(client.post("/api/v1/auth/plex/verify", json={"pinId": pin}).json()["data"]["token"])
        path = tmp_path / "tokens.txt"
        path.write_text("\n".join(tokens) + "\n")
        return tokens, path

    return issue
