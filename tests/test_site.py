"""The built book in a real browser: every page renders, equations typeset, widgets show, nothing leaves the machine.

The site is served from 127.0.0.1 and opened in Debian's headless Chromium
through selenium and chromedriver. Chromium's performance log lists every
request a page makes (``Network.requestWillBeSent``); each must go to the
local server (or be a ``data:``/``blob:`` URL). Chromium also runs behind a
local proxy that refuses everything, so that even a failing check sends
nothing out.

By default this module builds the site into a temporary folder, executing
only the notebooks it needs (see the ``site`` fixture); to test the site
that ``bash scripts/book.sh`` built, executing every notebook, point
``LSEDU_SITE`` at it:

    bash scripts/book.sh && LSEDU_SITE=_build/html .venv/bin/python -m pytest tests/test_site.py
"""

from __future__ import annotations

import functools
import http.server
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


# ----------------------------------------------------------------------------- local servers


class _Server:
    """An HTTP server on 127.0.0.1, in a thread, for a ``with`` block."""

    def __init__(self, handler):
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.daemon_threads = True
        self.httpd.refused = []
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.httpd.server_address[1]}"

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


class _Refuse(http.server.BaseHTTPRequestHandler):
    """A proxy that sends nothing on: it answers 403 to every request and remembers it."""

    def _refuse(self):
        self.server.refused.append(f"{self.command} {self.path}")
        self.send_response(403)
        self.send_header("Content-Length", "0")
        self.end_headers()

    do_GET = do_POST = do_HEAD = do_PUT = do_OPTIONS = do_CONNECT = _refuse

    def log_message(self, *args):
        pass


# ----------------------------------------------------------------------------- the browser


class Browser:
    """Headless Chromium driven by selenium, with its requests logged and its proxy refusing all."""

    def __init__(self, proxy: str):
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service

        chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
        if chromium is None or driver is None:
            raise RuntimeError("the site test needs Debian's chromium and chromium-driver: run "
                               "`bash scripts/setup.sh test` or `sudo apt-get install chromium chromium-driver`")
        opts = webdriver.ChromeOptions()
        opts.binary_location = chromium
        for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    f"--proxy-server=http://{proxy}", "--window-size=1280,900"):
            opts.add_argument(arg)
        opts.set_capability("goog:loggingPrefs", {"performance": "ALL"})
        self.driver = webdriver.Chrome(options=opts, service=Service(driver))
        self.driver.set_page_load_timeout(60)

    def open(self, url: str) -> list[str]:
        """Load ``url``; return the URLs of every request the page made so far."""
        self.driver.get_log("performance")  # drop what earlier pages logged
        self.driver.get(url)
        return self.requests()

    def requests(self) -> list[str]:
        out = []
        for entry in self.driver.get_log("performance"):
            msg = json.loads(entry["message"])["message"]
            if msg["method"] == "Network.requestWillBeSent":
                out.append(msg["params"]["request"]["url"])
        return out

    def count(self, selector: str) -> int:
        return self.driver.execute_script("return document.querySelectorAll(arguments[0]).length", selector)

    def wait_for(self, selector: str, n: int, timeout: float = 30) -> int:
        """Wait until ``selector`` matches at least ``n`` elements (or ``timeout`` s); return the count."""
        end = time.monotonic() + timeout
        while (found := self.count(selector)) < n and time.monotonic() < end:
            time.sleep(0.25)
        return found

    def typeset(self, timeout: float = 30) -> None:
        """Wait for MathJax 3 to finish typesetting, if the page loads it."""
        self.driver.set_script_timeout(timeout)
        self.driver.execute_async_script(
            "const done = arguments[arguments.length - 1];"
            "const wait = () => (window.MathJax && MathJax.startup && MathJax.startup.promise)"
            "  ? MathJax.startup.promise.then(() => done(true), () => done(false)) : setTimeout(wait, 100);"
            "document.querySelector('script[src*=\"mathjax\"]') ? wait() : done(null);")

    def quit(self):
        self.driver.quit()


def leaving(urls: list[str], local: str) -> list[str]:
    """The requests in ``urls`` that are not for the local server (nor data:, blob:, about:)."""
    return [u for u in urls if not u.startswith((f"http://{local}/", "data:", "blob:", "about:"))]


# ----------------------------------------------------------------------------- fixtures


def _toc_pages() -> list[str]:
    """The HTML path of every page in _toc.yml."""
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    files = [toc["root"]]
    stack = list(toc.get("parts", [])) + list(toc.get("chapters", []))
    while stack:
        entry = stack.pop(0)
        if "file" in entry:
            files.append(entry["file"])
        stack[:0] = list(entry.get("chapters", [])) + list(entry.get("sections", []))
    return [f"{f}.html" for f in files]


def _widget_notebooks() -> list[str]:
    """The notebooks whose code builds a widget (an ``lsedu.explore`` explorer)."""
    found = []
    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        cells = json.loads(path.read_text())["cells"]
        if any("explorer(" in "".join(c["source"]) for c in cells if c["cell_type"] == "code"):
            found.append(f"notebooks/{path.name}")
    return found


@pytest.fixture(scope="session")
def site(tmp_path_factory) -> Path:
    """The built site: ``LSEDU_SITE`` if set, else a build made here.

    The build made here is the real book (same sources, table of contents,
    theme and JavaScript) with one change to keep the test suite's time
    down: only the quickstart and the notebooks with widgets execute; the
    other notebooks' pages show their code and text without outputs (nbval
    executes every notebook anyway). ``bash scripts/book.sh`` and the
    publishing workflow execute them all, and the workflow runs this test on
    that site.
    """
    given = os.environ.get("LSEDU_SITE")
    if given:
        path = Path(given).resolve()
        if not (path / "index.html").is_file():
            raise FileNotFoundError(f"LSEDU_SITE={given}: no index.html there; build the book first "
                                    "(bash scripts/book.sh)")
        return path
    out = tmp_path_factory.mktemp("book")
    execute = {"notebooks/00_quickstart.ipynb", *_widget_notebooks()}
    skip = sorted(f"notebooks/{p.name}" for p in (ROOT / "notebooks").glob("*.ipynb")
                  if f"notebooks/{p.name}" not in execute)
    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    config["execute"]["exclude_patterns"] = skip
    # the notebooks not executed here have no outputs, so nothing was glued: their {glue:text} roles cannot resolve
    # (the book build, scripts/book.sh, executes every notebook and fails on a missing key; tests/test_glue.py
    # checks statically that every key a notebook's prose pastes is glued by that notebook)
    config["sphinx"]["config"]["suppress_warnings"] = [*config["sphinx"]["config"].get("suppress_warnings", []),
                                                       "mystnb.glue"]
    (out / "_config.yml").write_text(yaml.safe_dump(config, sort_keys=False))  # script order matters
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "MPLBACKEND": "Agg"}
    build = subprocess.run([str(Path(sys.executable).parent / "jupyter-book"), "build", "--all", "-W", "-n", "--keep-going",
                            ".", "--config", str(out / "_config.yml"), "--path-output", str(out)],
                           cwd=ROOT, env=env, capture_output=True, text=True, timeout=60 * 60)
    assert build.returncode == 0, f"the book build failed:\n{build.stdout[-4000:]}\n{build.stderr[-4000:]}"
    return out / "_build" / "html"


@pytest.fixture(scope="session")
def browser():
    with _Server(_Refuse) as proxy:
        b = Browser(proxy.address)
        try:
            yield b
        finally:
            b.quit()


@pytest.fixture(scope="session")
def served(site):
    with _Server(functools.partial(_Quiet, directory=str(site))) as server:
        yield server.address


# ----------------------------------------------------------------------------- the detectors can fail


def test_detectors_catch_remote_requests_raw_math_and_missing_widgets(browser, tmp_path):
    """A page with remote resources, TeX without MathJax and an unrendered widget fails every check."""
    (tmp_path / "bad.html").write_text(
        "<html><body><h1>bad</h1>"
        "<img src='https://example.org/logo.png'><script src='http://cdn.example.com/lib.js'></script>"
        "<span class='math notranslate nohighlight'>\\(x^2\\)</span>"
        "<script type='application/vnd.jupyter.widget-view+json'>{}</script></body></html>")
    with _Server(functools.partial(_Quiet, directory=str(tmp_path))) as server:
        urls = browser.open(f"http://{server.address}/bad.html")
        browser.typeset(timeout=5)
        assert sorted(leaving(urls, server.address)) == ["http://cdn.example.com/lib.js", "https://example.org/logo.png"]
        assert browser.count("mjx-container") == 0
        assert browser.wait_for(".jupyter-widgets", 1, timeout=2) == 0


# ----------------------------------------------------------------------------- the site


def test_every_page_renders_offline_with_typeset_equations(site, served, browser):
    pages = _toc_pages()
    assert "index.html" in os.listdir(site)
    problems = []
    math_pages = 0
    for page in pages:
        urls = browser.open(f"http://{served}/{page}")
        browser.typeset()
        urls += browser.requests()
        if out := leaving(urls, served):
            problems.append(f"{page}: requests leave the machine: {out}")
        if browser.count("main h1") < 1:
            problems.append(f"{page}: no heading rendered")
        if browser.count(".output.traceback, .output.error") > 0:
            problems.append(f"{page}: shows an error output")
        math = browser.count(".math")
        if math:
            math_pages += 1
            typeset = browser.count(".math mjx-container")
            if typeset < math:
                problems.append(f"{page}: {typeset} of {math} equations typeset")
    assert not problems, "\n".join(problems)
    assert math_pages >= 3, f"only {math_pages} pages have equations: is MathJax configured?"


def test_widgets_render_from_the_embedded_state(site, served, browser):
    """Every embedded widget view renders (progress bars included), and the explorers' sliders show."""
    pages = [p for p in _toc_pages() if "application/vnd.jupyter.widget-view+json" in (site / p).read_text()]
    assert pages, "no page of the book embeds a widget: were the widget cells executed with their state saved?"
    sliders = {}
    for page in pages:
        views = (site / page).read_text().count('type="application/vnd.jupyter.widget-view+json"')
        urls = browser.open(f"http://{served}/{page}")
        # html-manager renders each view in place of its script tag, in a div.jupyter-widgets root
        shown = browser.wait_for(".jupyter-widgets:not(.jupyter-widgets .jupyter-widgets)", views)
        assert shown >= views, f"{page}: {views} widget views embedded, {shown} rendered"
        sliders[page] = browser.count(".widget-slider")
        assert not leaving(urls + browser.requests(), served)
    explorers = [p for p in pages if p.removesuffix(".html") + ".ipynb" in _widget_notebooks()]
    assert explorers, f"no page with an lsedu.explore explorer among {pages}"
    for page in explorers:
        assert sliders[page] >= 1, f"{page}: the explorers' sliders did not render"


def test_every_notebook_is_in_the_table_of_contents():
    listed = {p.removesuffix(".html") for p in _toc_pages()}
    notebooks = {f"notebooks/{p.stem}" for p in (ROOT / "notebooks").glob("*.ipynb")}
    assert notebooks <= listed, f"notebooks missing from _toc.yml: {sorted(notebooks - listed)}"



def _solution_lines() -> dict[str, list[str]]:
    """Per notebook, the distinctive lines of its solutions and hidden tests (the text a student must not see)."""
    out = {}
    for p in sorted((ROOT / "notebooks").glob("*.ipynb")):
        lines, inside = [], False
        for cell in json.loads(p.read_text())["cells"]:
            for line in "".join(cell["source"]).splitlines():
                if "### BEGIN SOLUTION" in line or "### BEGIN HIDDEN TESTS" in line:
                    inside = True
                elif "### END SOLUTION" in line or "### END HIDDEN TESTS" in line:
                    inside = False
                elif inside and len(line.strip()) > 25:
                    lines.append(line.strip())
        if lines:
            out[p.name] = lines
    return out


def _page_text(path: Path) -> str:
    """What a page shows as text: tags removed (code is highlighted token by token), entities decoded."""
    import html
    import re

    return html.unescape(re.sub(r"<[^>]+>", "", path.read_text()))


def _leaks(site: Path, secret: dict[str, list[str]]) -> list[tuple[str, str]]:
    text = {p: _page_text(p) for p in site.rglob("*.html")}
    return [(str(p.relative_to(site)), line) for lines in secret.values() for line in lines
            for p, t in text.items() if line in t]


def test_the_solution_free_site_has_no_solution_text(tmp_path, site):
    """``scripts/book.sh --no-solutions``'s second build, here of the chapters with exercises and without executing
    anything (the sources alone): their pages build, and no line of a solution or hidden test is on any page, while
    the same detector finds them on the book as published (in its toggles)."""
    from lsedu.course import solution_free_book

    secret = _solution_lines()
    assert len(secret) >= 4 and sum(map(len, secret.values())) > 20
    assert _leaks(site, secret), "the detector finds no solution on the published site: it cannot find a leak"
    src = solution_free_book(ROOT, tmp_path / "src")
    config = yaml.safe_load((src / "_config.yml").read_text())
    assert config["execute"]["execute_notebooks"] == "off"
    # Only the chapters with exercises, to keep the test short: their links to the other pages cannot resolve, so
    # this build does not turn warnings into errors (scripts/book.sh --no-solutions builds every page with -W).
    toc = {"format": "jb-book", "root": "book/intro",
           "chapters": [{"file": f"notebooks/{name.removesuffix('.ipynb')}"} for name in secret]}
    (src / "_toc.yml").write_text(yaml.safe_dump(toc, sort_keys=False))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "MPLBACKEND": "Agg"}
    build = subprocess.run([str(Path(sys.executable).parent / "jupyter-book"), "build", "--all", str(src),
                            "--path-output", str(tmp_path / "out")],
                           env=env, capture_output=True, text=True, timeout=30 * 60)
    assert build.returncode == 0, f"the build failed:\n{build.stdout[-4000:]}\n{build.stderr[-4000:]}"
    html = tmp_path / "out" / "_build" / "html"
    for name in secret:
        assert (html / "notebooks" / name.replace(".ipynb", ".html")).is_file(), name
    leaks = _leaks(html, secret)
    assert not leaks, f"solution text on the solution-free site: {leaks[:3]}"
