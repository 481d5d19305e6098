"""The docs site, built offline and opened in headless Chromium (Debian's package, installed by `make install`).

One build, one server on 127.0.0.1, the home page and three lessons. On each page: no console errors and no
failed requests, every image loaded, every display equation typeset by the bundled MathJax (no raw `$$` left in
the text), and the sidebar lists every lesson. Screenshots go to _docs/screenshots/.
"""
import functools
import http.server
import json
import re
import shutil
import sys
import threading
from pathlib import Path

import pytest
from playwright import sync_api as playwright

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
import docs  # noqa: E402
from conftest import run_process  # noqa: E402

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
PAGES = ["index.html", "05_label_tricks.html", "08_ppo.html", "09_metarm.html"]


@pytest.fixture(scope="module")
def site():
    run_process([sys.executable, ROOT / "scripts/docs.py"], cwd=ROOT, timeout=300)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(docs.SITE))
    handler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


@pytest.fixture(scope="module")
def browser():
    assert CHROMIUM, "chromium is not installed: `make install` installs Debian's package"
    with playwright.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield b
        b.close()


def equations_in(stem: str) -> int:
    """Display equations ($$ … $$) in the notebook's markdown."""
    nb = json.loads((ROOT / "nbs" / f"{stem}.ipynb").read_text())
    return sum("".join(c["source"]).count("$$") // 2 for c in nb["cells"] if c["cell_type"] == "markdown")


@pytest.mark.parametrize("page", PAGES)
def test_page_renders(site, browser, page):
    tab = browser.new_page(viewport={"width": 1280, "height": 900})
    errors, failed = [], []
    tab.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    tab.on("pageerror", lambda e: errors.append(str(e)))
    tab.on("requestfailed", lambda r: failed.append(r.url))
    tab.goto(f"{site}/{page}", wait_until="networkidle")
    typeset = tab.evaluate("() => window.MathJax && MathJax.startup ? MathJax.startup.promise.then(() => true) : false")
    shots = docs.OUT / "screenshots"
    shots.mkdir(exist_ok=True)
    tab.screenshot(path=str(shots / page.replace(".html", ".png")), full_page=False)
    tab.screenshot(path=str(shots / page.replace(".html", "-full.png")), full_page=True)

    assert not errors and not failed, (errors, failed)
    images = tab.evaluate("() => Array.from(document.images).map(i => [i.src.slice(0, 60), i.naturalWidth])")
    assert all(w > 0 for _, w in images), images
    text = tab.evaluate("""() => { const a = document.querySelector('article').cloneNode(true);
        a.querySelectorAll('pre, code, script').forEach(e => e.remove()); return a.innerText; }""")
    assert "$$" not in text, re.findall(r".{40}\$\$.{40}", text, flags=re.S)[:3]
    nav = tab.evaluate("() => document.querySelector('nav.md-nav--primary').innerText")
    for stem in docs.lesson_order():
        assert stem in nav, f"the sidebar does not list {stem}"
    if page != "index.html":
        stem = page.removesuffix(".html")
        assert typeset, "MathJax did not load"
        assert tab.evaluate("() => document.querySelectorAll('mjx-container[display=\"true\"]').length") == equations_in(stem)
        assert len(images) >= 1, "a lesson that runs an experiment shows its figure"
    tab.close()


def test_api_reference(site, browser):
    tab = browser.new_page()
    tab.goto(f"{site}/api/losses.html", wait_until="networkidle")
    text = tab.evaluate("() => document.querySelector('article').innerText")
    assert "compare_tricks" in text and "keys of LABEL_TRICKS" in text   # the signature and a parameter's docment
    tab.close()


def test_search_index(site):
    index = json.loads((docs.SITE / "search/search_index.json").read_text())
    assert any("adaptive margin" in d["text"] for d in index["docs"])      # the lessons' text is searchable
