"""The built docs site, as a reader's browser shows it: a real headless Chromium opens every
page from a loopback server, at 1280 px wide.

* every mermaid diagram is drawn, as an SVG, by the mermaid served with the site: the page
  loads nothing from any other host (no CDN, no web fonts), so it works without a network;
* no page scrolls sideways, no paragraph is wider than the page, and no code block of the
  project's line length (100 columns) needs scrolling.

A probe script, put at the top of a copy of each page, records what the page drew once it has
loaded (the theme draws each diagram into a shadow root) and writes it into the DOM, which
Chromium's ``--dump-dom`` prints.
"""

from __future__ import annotations

import functools
import html
import http.server
import json
import re
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import require_service
from tests.services import free_port

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
WIDTH = 1280
LINE_LENGTH = 100
"""The project's line length: a code block no wider than this fits the page."""

PROBE = """
(function () {
  var roots = [];
  var attach = Element.prototype.attachShadow;
  Element.prototype.attachShadow = function (init) {
    var root = attach.call(this, init);
    roots.push([this, root]);
    return root;
  };
  function longest(text) {
    return text.split("\\n").reduce(function (a, l) { return l.length > a ? l.length : a; }, 0);
  }
  window.addEventListener("load", function () {
    setTimeout(function () {
      var page = document.documentElement;
      var drawn = roots.filter(function (pair) {
        var svg = pair[1].querySelector("svg");
        return pair[0].classList.contains("mermaid") && svg !== null
          && svg.getBoundingClientRect().width > 0;
      });
      var all = function (selector) {
        return Array.prototype.slice.call(document.querySelectorAll(selector));
      };
      document.body.setAttribute("data-probe", JSON.stringify({
        width: window.innerWidth,
        diagrams: all(".mermaid").length,
        undrawn: all("pre.mermaid").length,
        svgs: drawn.length,
        page_overflow: page.scrollWidth - page.clientWidth,
        code: all(".md-content pre > code").map(function (c) {
          return [longest(c.textContent), c.scrollWidth - c.clientWidth];
        }),
        prose: all(".md-content p, .md-content li, .md-content h1, .md-content h2")
          .map(function (e) { return [e.textContent.slice(0, 60), e.scrollWidth - e.clientWidth]; })
          .filter(function (pair) { return pair[1] > 4; }),
        elsewhere: performance.getEntriesByType("resource").map(function (e) { return e.name; })
          .filter(function (name) { return name.indexOf(location.origin) !== 0; })
      }));
    }, 3000);
  });
})();
"""


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        require_service("Chromium (a headless browser)", "apt-get install -y chromium")
    assert found is not None
    return found


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The docs site, built as `make docs` builds it."""
    chromium()
    where = tmp_path_factory.mktemp("site")
    subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(where)],
        cwd=ROOT,
        check=True,
        capture_output=True,
        timeout=300,
    )
    return where


@pytest.fixture(scope="module")
def served(site: Path) -> Iterator[str]:
    """The site on a loopback HTTP server; its base URL."""
    handler = functools.partial(_QuietHandler, directory=str(site))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        thread.join(timeout=10)
        server.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


def pages(site: Path) -> list[str]:
    return sorted(
        str(page.relative_to(site))
        for page in site.rglob("index.html")
        if not page.relative_to(site).parts[0].startswith(("assets", "search"))
    )


def look_at(site: Path, base: str, page: str) -> dict[str, Any]:
    """Open a probed copy of *page* in Chromium; return what the probe saw."""
    original = site / page
    probed = original.with_name("probe.html")
    text = original.read_text(encoding="utf-8")
    probed.write_text(text.replace("<head>", f"<head><script>{PROBE}</script>", 1), "utf-8")
    url = f"{base}/{probed.relative_to(site).as_posix()}"
    dom = subprocess.run(
        [
            chromium(),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            f"--window-size={WIDTH},2000",
            "--virtual-time-budget=20000",
            "--dump-dom",
            url,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    ).stdout
    found = re.search(r'data-probe="([^"]*)"', dom)
    assert found is not None, f"{page}: the page did not finish loading in the browser"
    report: dict[str, Any] = json.loads(html.unescape(found.group(1)))
    return report


def test_every_page_draws_its_diagrams_and_fits_1280_pixels(site: Path, served: str) -> None:
    every = pages(site)
    assert len(every) > 20
    with ThreadPoolExecutor(max_workers=2) as pool:
        reports = pool.map(lambda page: look_at(site, served, page), every)
        seen = dict(zip(every, reports, strict=True))
    problems = []
    diagrams = 0
    for page, report in seen.items():
        assert report["width"] == WIDTH
        diagrams += report["svgs"]
        if report["svgs"] != report["diagrams"] or report["undrawn"]:
            problems.append(f"{page}: {report['svgs']} of {report['diagrams']} diagrams drawn")
        if report["elsewhere"]:
            problems.append(f"{page}: loads from elsewhere: {report['elsewhere']}")
        if report["page_overflow"] > 0:
            problems.append(f"{page}: scrolls sideways by {report['page_overflow']} px")
        if report["prose"]:
            problems.append(f"{page}: prose wider than the page: {report['prose']}")
        for columns, overflow in report["code"]:
            if columns <= LINE_LENGTH and overflow > 1:
                problems.append(f"{page}: a code block of {columns} columns scrolls")
    assert not problems, "\n".join(problems)
    # The pages with diagrams: the home page, the first saga, parallel steps, remote steps and
    # the shop (its two flows).
    assert diagrams >= 6
