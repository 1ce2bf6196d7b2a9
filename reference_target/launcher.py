"""Start the reference target in its own process on an ephemeral loopback port (tests, `make demo`, runner
tests). Only the standard library, so it works in a gevent-patched caller: output goes to temporary files read
with os.pread (no pipe to drain, no shared file offset), and waiting is time.sleep polling."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

_LISTENING = re.compile(r"reference target listening on (http://\S+)")
_REPO_ROOT = Path(__file__).resolve().parents[1]


class TargetStartError(RuntimeError):
    """The target exited or stayed silent instead of announcing its URL; the message carries its stderr."""


def _read(log: IO[bytes], limit: int = 1 << 20) -> str:
    return os.pread(log.fileno(), limit, 0).decode("utf-8", "replace")


@dataclass
class TargetProcess:
    url: str
    process: subprocess.Popen
    _logs: tuple[IO[bytes], IO[bytes]] | tuple[()] = field(repr=False, default=())
    _final_stderr: str = field(repr=False, default="")

    def stderr(self) -> str:
        """What the target wrote to stderr (warnings and errors; it logs nothing per request)."""
        return _read(self._logs[1]) if self._logs else self._final_stderr

    def stop(self) -> None:
        """SIGTERM, wait up to 10 s, then SIGKILL. Safe to call twice."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self._logs:
            self._final_stderr = _read(self._logs[1])
            for log in self._logs:
                log.close()
            self._logs = ()


def start_target(args: list[str], timeout_s: float = 20) -> TargetProcess:
    """`python -m reference_target --port 0 *args` on 127.0.0.1; returns once it prints its URL. The target
    exits by itself if the calling process dies (--exit-with-parent)."""
    stdout, stderr = tempfile.TemporaryFile(), tempfile.TemporaryFile()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(_REPO_ROOT), os.environ.get("PYTHONPATH")]))}
    command = [sys.executable, "-m", "reference_target", "--host", "127.0.0.1", "--port", "0", "--exit-with-parent",
               *args]
    process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr, env=env)
    started = TargetProcess("", process, (stdout, stderr))
    deadline = time.monotonic() + timeout_s
    while True:
        match = _LISTENING.search(_read(stdout))
        if match:
            started.url = match.group(1)
            return started
        if process.poll() is not None:
            message = started.stderr().strip() or "(no output)"
            started.stop()
            raise TargetStartError(f"reference target exited with status {process.returncode}: {message}")
        if time.monotonic() > deadline:
            message = started.stderr().strip()
            started.stop()
            raise TargetStartError(f"reference target did not start within {timeout_s:g} s: {message}")
        time.sleep(0.05)
