"""Server telemetry: GET MediaNest's /metrics every interval during a run, into results/telemetry.csv.

The scraper is a greenlet of its own with httpx (the off-hot-path client): a scrape never holds a user, and its
requests never reach Locust's request event, so they are not load samples. Each attempt is bounded in total
time (shorter than the interval) and ends as `ok` or a failure reason; the run goes on either way, and the
analysis turns missing telemetry into NO_DATA with those reasons.
"""

from __future__ import annotations

import csv
import os
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gevent
import httpx
from prometheus_client.parser import text_string_to_metric_families

from medianest_load.host_guard import HostRefused, check_host, shown
from medianest_load.recorder import Recorder
from medianest_load.results_format import SCRAPE_METRIC, SCRAPE_OK, SCRAPE_REASONS, TELEMETRY_COLUMNS
from medianest_load.secrets import redact, register_secret
from medianest_load.target_profile import DEFAULT_SCRAPE_INTERVAL_S, TargetProfile

MAX_BODY_BYTES = 20_000_000  # a /metrics page is kilobytes; anything this big is not one


@dataclass(frozen=True, kw_only=True)
class ScrapeConfig:
    url: str
    interval_s: float
    token: str | None = None
    keep: frozenset[str] | None = None  # sample names written to telemetry.csv; None: every sample (--scrape-all)
    names: tuple[tuple[str, tuple[str, ...]], ...] = ()  # the profile's concept -> names, recorded in run.json
    container_limit_mb: float | None = None

    @property
    def timeout_s(self) -> float:
        """Shorter than the interval, so that one slow answer never delays the next scrape."""
        return min(self.interval_s * 0.8, 10.0)


def scrape_config(profile: TargetProfile, host: str, allowed_hosts: tuple[str, ...], interval_s: float | None,
                  scrape_all: bool = False) -> ScrapeConfig:
    """The scrape of this run; raises HostRefused (one line) for a metrics URL the host guard does not allow.
    `interval_s` (the command line's, else the scenario's) wins over the profile's, then the default 5 s."""
    metrics = profile.metrics
    url = metrics_url(metrics.url, host, allowed_hosts, f"{profile.source}: metrics.url")
    token = os.environ.get(metrics.token_env) if metrics.token_env else None
    register_secret(token)
    keep = None if scrape_all else frozenset(name for names in metrics.name_map.values() for name in names)
    return ScrapeConfig(url=url, interval_s=interval_s or metrics.scrape_interval_s or DEFAULT_SCRAPE_INTERVAL_S,
                        token=token or None, keep=keep, names=metrics.names, container_limit_mb=metrics.container_limit_mb)


def metrics_url(url: str, host: str, allowed_hosts: tuple[str, ...], source: str) -> str:
    """The URL to scrape: the profile's path on the target host, or its absolute URL. The host guard checks the
    scheme, host and port in its strict form; the path may hold no character that could make a client read
    another host (`@`, `\\`, `%`, whitespace)."""
    if not url.startswith(("http://", "https://")):
        url = host.rstrip("/") + url
    scheme, _, rest = url.partition("://")
    netloc, _, path = rest.partition("/")
    check_host(f"{scheme}://{netloc}", allowed_hosts, source)
    if any(char in path for char in "@\\%#") or any(ord(char) < 33 or ord(char) > 126 for char in path):
        raise HostRefused(f"{source}: got {shown(url)}, expected a plain path after the host (no '@', '\\', '%', "
                          "'#' or whitespace)")
    return url


def label_text(labels: dict[str, str]) -> str:
    """A stable text for a label set: sorted, Prometheus-escaped (`a="x",b="y"`); empty for none."""
    def escaped(value: str) -> str:
        return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')

    return ",".join(f'{key}="{escaped(value)}"' for key, value in sorted(labels.items()))


class ScrapeFailed(Exception):
    """One failed attempt; `reason` is one of SCRAPE_REASONS."""

    def __init__(self, reason: str, detail: str):
        super().__init__(detail)
        self.reason = reason


class Scraper:
    """Scrapes on a fixed grid until killed; rows wait in memory only until the next flush."""

    def __init__(self, config: ScrapeConfig, recorder: Recorder) -> None:
        self.config = config
        self.recorder = recorder
        self.rows: list[list[Any]] = []
        self.outcomes: Counter[str] = Counter()
        self.last_failure = ""
        self._written_header = False
        headers = {"Authorization": f"Bearer {config.token}"} if config.token else {}
        self._client = httpx.Client(headers=headers, timeout=config.timeout_s, follow_redirects=False)

    def run(self) -> None:
        next_scrape = time.monotonic()
        try:
            while True:
                self.scrape_once()
                next_scrape = max(next_scrape + self.config.interval_s, time.monotonic())
                gevent.sleep(next_scrape - time.monotonic())
        finally:
            self._client.close()

    def scrape_once(self) -> None:
        position, started = self.recorder.position, time.monotonic()
        try:
            samples = self._fetch()
            outcome = SCRAPE_OK
        except ScrapeFailed as failure:
            samples, outcome = [], failure.reason
            self.last_failure = redact(f"{failure.reason}: {failure}")[:200]
        now = self.recorder.clock()
        prefix = [round(now, 3), round(now - self.recorder.started_at, 3), position.stage, position.phase]
        self.rows += [[*prefix, name, label_text(labels), value] for name, labels, value in samples]
        self.rows.append([*prefix, SCRAPE_METRIC, label_text({"outcome": outcome}), round(time.monotonic() - started, 4)])
        self.outcomes[outcome] += 1

    def _fetch(self) -> list[tuple[str, dict[str, str], float]]:
        try:
            with gevent.Timeout(self.config.timeout_s, ScrapeFailed("timeout", f"no full answer in {self.config.timeout_s:g} s")):
                response = self._client.get(self.config.url)
        except httpx.TimeoutException:
            raise ScrapeFailed("timeout", f"no answer in {self.config.timeout_s:g} s") from None
        except httpx.ConnectError as error:
            raise ScrapeFailed("refused", str(error) or "connection refused") from None
        except httpx.HTTPError as error:
            raise ScrapeFailed("error", f"{type(error).__name__}: {error}") from None
        status = response.status_code
        if status in (401, 403):
            raise ScrapeFailed("unauthorized", f"HTTP {status} (is the profile's token_env variable set?)")
        if status == 404:
            raise ScrapeFailed("not_found", f"HTTP 404 at {self.config.url}")
        if status != 200:
            raise ScrapeFailed("http_error", f"HTTP {status}")
        if len(response.content) > MAX_BODY_BYTES:
            raise ScrapeFailed("unparsable", f"{len(response.content)} bytes, not a /metrics page")
        return self._parse(response.text)

    def _parse(self, text: str) -> list[tuple[str, dict[str, str], float]]:
        keep = self.config.keep
        try:
            samples = [(sample.name, sample.labels, float(sample.value))
                       for family in text_string_to_metric_families(text) for sample in family.samples]
        except (ValueError, TypeError, IndexError) as error:
            raise ScrapeFailed("unparsable", f"not Prometheus text ({str(error)[:80]})") from None
        if not samples:
            raise ScrapeFailed("unparsable", "no sample in the answer")
        return [sample for sample in samples if keep is None or sample[0] in keep]

    # --- results ---------------------------------------------------------------------------------

    def write(self, folder: Path) -> None:
        """Append the rows gathered since the last flush to telemetry.csv (the header first)."""
        path = folder / "telemetry.csv"
        rows, self.rows = self.rows, []
        with path.open("a" if self._written_header else "w", newline="") as handle:
            writer = csv.writer(handle)
            if not self._written_header:
                writer.writerow(TELEMETRY_COLUMNS)
                self._written_header = True
            writer.writerows(rows)

    def outcome_line(self) -> str:
        """One line for the end of a run; a run without a single answered scrape says so."""
        attempts, successes = sum(self.outcomes.values()), self.outcomes[SCRAPE_OK]
        failed = ", ".join(f"{count} {reason}" for reason, count in self.outcomes.most_common() if reason != SCRAPE_OK)
        if not successes:
            return (f"telemetry: no successful scrape of the target's /metrics ({attempts} attempts: {failed or 'none'}; "
                    f"last: {self.last_failure or '-'}); server criteria will be NO_DATA")
        return f"telemetry: {successes} of {attempts} scrapes answered" + (f" ({failed} failed)" if failed else "")

    def summary(self) -> dict[str, Any]:
        """What run.json says of the scrape (never the token; the runner strips credentials from the URL)."""
        attempts = sum(self.outcomes.values())
        return {"enabled": True, "url": self.config.url,
                "interval_s": self.config.interval_s, "timeout_s": self.config.timeout_s,
                "scrape_all": self.config.keep is None, "container_limit_mb": self.config.container_limit_mb,
                "attempts": attempts, "successes": self.outcomes[SCRAPE_OK],
                "failures": {reason: self.outcomes[reason] for reason in SCRAPE_REASONS if self.outcomes[reason]},
                "last_failure": self.last_failure or None,
                "names": {concept: list(names) for concept, names in self.config.names}}
