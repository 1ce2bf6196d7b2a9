"""The one place secrets are masked: every token the harness knows, plus anything shaped like a credential.

User classes register the tokens they hold (from a tokens file or variable, or a login); the recorder and the
user classes pass every message bound for stats, logs, results or reports through `redact`.
"""

from __future__ import annotations

import re

MASK = "[redacted]"

_SECRETS: set[str] = set()
_JWT = re.compile(r"eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*\.?[A-Za-z0-9_-]*")
# a credential after its label: keep the label, mask the value
_LABELLED = (
    re.compile(r"(?i)(bearer\s+)[^\s'\",;]+"),
    re.compile(r"(?i)((?:token|auth-token|authorization|csrfToken|rememberToken)[\"']?\s*[=:]\s*[\"']?)[^\s'\"&,;}]+"),
)


def register_secret(value: str | None) -> None:
    """Mask this value wherever it appears from now on."""
    if value:
        _SECRETS.add(value)


def forget_secret(value: str | None) -> None:
    """Stop tracking a value that no longer grants anything (a token just logged out)."""
    if value:
        _SECRETS.discard(value)


def redact(text: str) -> str:
    """text without any registered secret, JWT-shaped string or labelled credential (`Bearer x`, `token=x`)."""
    for secret in _SECRETS:
        if secret in text:
            text = text.replace(secret, MASK)
    text = _JWT.sub(MASK, text)
    for pattern in _LABELLED:
        text = pattern.sub(r"\1" + MASK, text)
    return text
