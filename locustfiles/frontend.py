"""A browser's first visit: the HTML page, then every script and stylesheet it references, six at a time like
a browser per host. Besides one sample per asset, each visit is one PAGE sample whose response_length is the
page's total bytes: the audit's bundle finding (target 500 KB, blocker above 15 MB) measured per visit."""

from __future__ import annotations

import posixpath
import time
from html.parser import HTMLParser
from urllib.parse import urljoin, urlsplit

from gevent.pool import Pool
from locust import task

from locustfiles.common import MediaNestUser, Reply
from medianest_load.failures import HarnessFailure, UnexpectedBody, as_failure, response_failure

PAGE_NAME = "/ (first visit)"

TRANSACTION = "first visit"
BROWSER_CONNECTIONS = 6  # what browsers open per host over HTTP/1.1
CHUNK = 64 * 1024


class AssetParser(HTMLParser):
    """Collects script sources and stylesheet (or preloaded script/style) links, in document order, once each."""

    def __init__(self) -> None:
        super().__init__()
        self.assets: list[str] = []

    def _add(self, url: str | None) -> None:
        if url and url not in self.assets:
            self.assets.append(url)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        rel = (attributes.get("rel") or "").lower().split()
        if tag == "script":
            self._add(attributes.get("src"))
        elif tag == "link" and ("stylesheet" in rel or "modulepreload" in rel or
                                ("preload" in rel and attributes.get("as") in ("script", "style"))):
            self._add(attributes.get("href"))


def asset_name(path: str, static_prefix: str) -> str:
    """`/_next/static/chunks/app-3f2a.js` -> `/_next/static/:asset`: build hashes stay out of endpoint names."""
    if path.startswith(static_prefix):
        return static_prefix + ":asset"
    return posixpath.join(posixpath.dirname(path), ":asset")


class FrontendUser(MediaNestUser):
    """GET / -> GET every referenced script and stylesheet -> one PAGE `/ (first visit)` sample, the HTML's
    `PAGE ttfb /` and the visit as the transaction `TXN first visit`. All of them go to the profile's
    frontend_url when it is set (Next.js is a server of its own), else to the host."""

    weight = 10

    @property
    def frontend(self) -> str:
        base = self.profile.frontend_url or self.host
        assert base is not None  # Locust starts no user without a host
        return base.rstrip("/")

    @task
    def first_visit(self) -> None:
        with self.transaction(TRANSACTION) as txn:
            started = time.perf_counter()
            home = self.profile.routes.home
            page_url = self.frontend + home
            html, ttfb_ms, failure = self._fetch_page(page_url, home)
            txn.step(Reply(failure is None, failure=failure))
            total, failures = len(html), [failure] if failure else []
            if failure is None:
                self.record("PAGE", f"ttfb {home}", ttfb_ms, 0)
                parser = AssetParser()
                parser.feed(html.decode("utf-8", errors="replace"))
                urls = [urljoin(page_url, src) for src in parser.assets]
                same_host = [u for u in urls if urlsplit(u).netloc == urlsplit(page_url).netloc]  # the frontend only
                pool = Pool(BROWSER_CONNECTIONS)
                try:
                    results = pool.map(self._fetch_asset, same_host)
                finally:
                    pool.kill()  # a user stopped mid-visit leaves no fetch behind
                total += sum(size for size, _ in results)
                failures += [f for _, f in results if f is not None]
                for _, asset_failure in results:
                    txn.step(Reply(asset_failure is None, failure=asset_failure))
            self.record("PAGE", PAGE_NAME, (time.perf_counter() - started) * 1000, total,
                        failures[0] if failures else None)

    def _fetch_page(self, url: str, name: str) -> tuple[bytes, float, HarnessFailure | None]:
        """The HTML, its time to first byte (geventhttpclient returns a streamed response once the status line
        and headers are in) and its failure. The GET sample keeps the whole download's time."""
        started = time.perf_counter()
        with self.client.get(url, name=name, stream=True, catch_response=True) as response:
            ttfb_ms = response.request_meta["response_time"]
            failure = response_failure(response)
            html = b""
            if failure is None:
                try:
                    html = response.content or b""
                except Exception as exc:  # noqa: BLE001 - a read error is the page's failure
                    failure = as_failure(exc)
            if failure is None and not html:
                failure = UnexpectedBody("page has no body")
            response.request_meta["response_time"] = (time.perf_counter() - started) * 1000
            response.request_meta["response_length"] = len(html)
            if failure is None:
                response.success()
            else:
                response.failure(failure)
        return html, ttfb_ms, failure

    def _fetch_asset(self, url: str) -> tuple[int, HarnessFailure | None]:
        """Stream one asset, counting its bytes on the wire (compressed when the server compresses) without
        holding it: a 465 MB bundle costs this user one chunk of memory."""
        parts = urlsplit(url)
        started, size = time.perf_counter(), 0
        with self.client.get(url, name=asset_name(parts.path, self.profile.static_prefix), stream=True,
                             catch_response=True) as response:
            failure = response_failure(response)
            if failure is None:
                try:
                    for chunk in response.iter_content(CHUNK, decode_content=False):
                        size += len(chunk)
                    declared = response.headers.get("content-length") if response.headers else None
                    if declared is not None and declared.isdigit() and int(declared) != size:
                        failure = HarnessFailure("asset truncated: connection closed before Content-Length")
                except Exception as exc:  # noqa: BLE001 - any read error is this asset's failure
                    failure = as_failure(exc)
            response.request_meta["response_time"] = (time.perf_counter() - started) * 1000
            response.request_meta["response_length"] = size
            if failure is None:
                response.success()
            else:
                response.failure(failure)
        return size, failure
