"""A second reference target for measuring the generator itself: reference_target/fixed_latency_server.c answers
every request a fixed delay after reading it and logs its own time for each answer.

Why a separate C server: the question "how much of this latency is the generator's?" needs a server whose own
time is known exactly and which costs next to nothing (tens of microseconds a request), so that on a shared
2-core machine the generator, not the server, is what runs out of CPU. The Python reference target costs about
as much per request as the generator does. Compiled on first use with the system C compiler.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

from hdrh.histogram import HdrHistogram

SOURCE = Path(__file__).with_name("fixed_latency_server.c")


class CompilerMissing(RuntimeError):
    """No C compiler on PATH: the fixed-latency server cannot be built."""


class FixedLatencyServer:
    """The server in a process of its own, on loopback, and the per-answer log it keeps (`second service_us`)."""

    def __init__(self, delay_ms: float, folder: Path | None = None) -> None:
        compiler = shutil.which("cc") or shutil.which("gcc")
        if not compiler:
            raise CompilerMissing("the fixed-latency server needs a C compiler (cc or gcc) on PATH")
        self.folder = folder or Path(tempfile.mkdtemp(prefix="fixed-latency-"))
        binary, self.log = self.folder / "fixed_latency_server", self.folder / "answers.log"
        subprocess.run([compiler, "-O2", "-o", str(binary), str(SOURCE)], check=True)
        self.process = subprocess.Popen([str(binary), "0", str(delay_ms), str(self.log)], stdout=subprocess.PIPE,
                                        text=True)
        port = (self.process.stdout.readline() if self.process.stdout else "").strip()
        if not port.isdigit():
            self.stop()
            raise RuntimeError(f"the fixed-latency server did not start (it printed {port!r})")
        self.url = f"http://127.0.0.1:{port}"

    def own_p95_ms(self, start: float, end: float) -> float | None:
        """The server's own p95 over the epoch seconds [start, end), from its log (flushed every second)."""
        merged = HdrHistogram(1, 60_000_000, 3)
        with self.log.open() as lines:
            for line in lines:
                if not line.endswith("\n"):
                    break  # the line the server is still writing
                second, took_us = line.split()
                if start <= int(second) < end:
                    merged.record_value(max(int(took_us), 1))
        return merged.get_value_at_percentile(95) / 1000 if merged.get_total_count() else None

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)
