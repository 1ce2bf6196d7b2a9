"""The frontend's static bundle: Next.js-like chunks of a configured total size, and the page that loads them."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from html import escape as html_escape


class Bundle:
    """Next.js-like static chunks whose sizes add up to bundle_kb: generated from one shared 256 KB block and
    streamed, so even a 465 MB bundle costs no memory.

    Every chunk is valid JavaScript made of whole statements (a block ends on a line boundary, a short last piece
    is whole lines padded with spaces), so a browser parses and runs all of it; the page paints its content only
    after the deferred scripts ran, so First Contentful Paint and LCP follow the bundle size and the latency."""

    BLOCK = 256 * 1024
    SHARES = (("chunks/webpack", "js", 0.02), ("chunks/framework", "js", 0.25), ("chunks/main", "js", 0.15),
              ("chunks/pages/_app", "js", 0.30), ("chunks/pages/index", "js", 0.13), ("css/app", "css", 0.15))
    CONTENT_TYPES = {"js": "application/javascript; charset=utf-8", "css": "text/css; charset=utf-8"}

    def __init__(self, total_kb: int, third_party_script: str | None = None):
        total = total_kb * 1024
        sizes = [max(int(total * share), 1) for *_, share in self.SHARES[:-1]]
        sizes.append(max(total - sum(sizes), 1))
        self.assets: dict[str, tuple[str, int]] = {}  # "chunks/main-<hash>.js" -> (content type, size)
        for (stem, ext, _), size in zip(self.SHARES, sizes, strict=True):
            digest = hashlib.sha1(f"{stem}:{size}".encode()).hexdigest()[:16]
            name = f"{stem}-{digest}.{ext}" if ext == "js" else f"css/{digest}.css"
            self.assets[name] = (self.CONTENT_TYPES[ext], size)
        self.line = b"/* MediaNest reference target bundle filler */ !function(e){var t={};e.exports=t}({});\n"
        code = self.line * (self.BLOCK // len(self.line))
        self.block = memoryview(code + b" " * (self.BLOCK - len(code)))
        self.third_party_script = third_party_script

    def html(self) -> str:
        tags = [f'<link rel="stylesheet" href="/_next/static/{name}">' if name.startswith("css/")
                else f'<script src="/_next/static/{name}" defer></script>' for name in self.assets]
        if self.third_party_script:  # an analytics tag on another host: the harness's browsers must block it
            tags.insert(0, f'<script src="{html_escape(self.third_party_script)}" async></script>')
        return ("<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>MediaNest</title>"
                + "".join(tags) + "</head><body><div id=\"__next\"></div>"
                '<script id="__NEXT_DATA__" type="application/json">{"page":"/","buildId":"reference"}</script>'
                f"<script>{self.RENDER}</script></body></html>")

    # DOMContentLoaded fires after every deferred script ran: nothing contentful is painted before that
    RENDER = ('document.addEventListener("DOMContentLoaded",function(){document.getElementById("__next").innerHTML='
              "'<main><h1>MediaNest</h1><section id=\"hero\" style=\"min-height:60vh;font-size:48px\">"
              "Your media, requested and ready</section><p>Search, request and follow your media.</p></main>'})")

    def piece(self, size: int) -> bytes | memoryview:
        """`size` bytes of whole statements: a full block, or whole lines padded with spaces."""
        if size >= self.BLOCK:
            return self.block
        whole = size - size % len(self.line)
        return bytes(self.block[:whole]) + b" " * (size - whole)

    async def stream(self, size: int) -> AsyncIterator[bytes | memoryview]:
        for offset in range(0, size, self.BLOCK):
            yield self.piece(min(self.BLOCK, size - offset))
