"""The report page in a real browser (issue 11 item 4): headless Chromium renders a run's `report.html`; the screenshot
is not blank, every `<img>` decodes (in Python, and in the browser: loaded, with its `naturalWidth`), and the console
shows no errors.

The page itself has no scripts. The test renders a *copy* with a probe script injected at the top of `<head>`: it
records uncaught errors, `console.error` calls and failed resource loads (capture phase), and on `load` (which
waits for every image) writes what it saw into a `<pre id="distill-probe">` that `--dump-dom` returns. Chromium also logs
every console message to stderr (`--enable-logging=stderr`, lines `INFO:CONSOLE...`); the page has no scripts and the
probe logs nothing, so any such line is a failure. `test_probe_catches_a_broken_page` breaks a copy of the page in
each of those ways and checks the harness sees each, so a probe that silently stopped working would fail there.

Chromium is Debian's `chromium` package, which `.ci/run` installs when missing; without it the tests skip.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import RECIPES, TINY
from PIL import Image  # pillow: a matplotlib dependency, not a new one

from distill.cli import main

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None,
    reason="chromium is not installed (`apt-get install -y chromium`; .ci/run installs it when missing)",
)

WIDTH, HEIGHT = 1200, 2400
DATA_URI = re.compile(r'<img[^>]*\ssrc="data:image/png;base64,([A-Za-z0-9+/=]+)"')

PROBE = """<script>(function () {
  var errors = [];
  window.addEventListener("error", function (e) {
    var t = e.target;
    errors.push(t && t.tagName ? "failed to load <" + t.tagName.toLowerCase() + " alt=" + (t.alt || "") + ">"
                               : "uncaught: " + e.message);
  }, true);
  var original = console.error;
  console.error = function () { errors.push("console.error: " + Array.prototype.join.call(arguments, " "));
                                original.apply(console, arguments); };
  window.addEventListener("load", function () {  // synchronous: --dump-dom must find it written
    var pre = document.createElement("pre");
    pre.id = "distill-probe";
    pre.textContent = JSON.stringify({errors: errors, images: Array.prototype.map.call(document.images, function (i) {
      return {alt: i.alt, width: i.naturalWidth, height: i.naturalHeight, decoded: i.complete && i.naturalWidth > 0}; })});
    document.body.appendChild(pre);
  });
})();</script>"""


def open_in_chromium(html_path: Path, work: Path) -> dict:
    """Render `html_path` (a probed copy) headless: returns the probe's findings, the console lines and the screenshot."""
    work.mkdir(parents=True, exist_ok=True)
    probed = work / "probed.html"
    source = html_path.read_text(encoding="utf-8")
    assert "<head>" in source
    probed.write_text(source.replace("<head>", "<head>" + PROBE, 1), encoding="utf-8")
    shot = work / "screenshot.png"
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={work / 'profile'}", "--enable-logging=stderr", "--v=0",
           "--virtual-time-budget=10000",  # run the page to its load event before the dump
           f"--window-size={WIDTH},{HEIGHT}", f"--screenshot={shot}", "--dump-dom", probed.as_uri()]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    found = re.search(r'<pre id="distill-probe">(.*?)</pre>', proc.stdout, re.S)
    assert found, "the probe never reported: the page never reached its load event\n" + proc.stderr[-2000:]
    import html as html_lib

    probe = json.loads(html_lib.unescape(found.group(1)))
    console = [line for line in proc.stderr.splitlines() if ":CONSOLE" in line]
    return {"probe": probe, "console": console, "screenshot": shot}


def screenshot_stats(path: Path) -> tuple[float, float]:
    """(standard deviation of the grey levels, share of pixels that are not near-white)."""
    import numpy as np

    grey = np.asarray(Image.open(path).convert("L"), dtype=np.float64)
    return float(grey.std()), float((grey < 240).mean())


def problems(html_path: Path, result: dict) -> list[str]:
    """Everything wrong with a rendered page, one line each (empty: the page is fine)."""
    found = []
    source = html_path.read_text(encoding="utf-8")
    payloads = DATA_URI.findall(source)
    images = result["probe"]["images"]
    if len(images) != len(payloads) or not payloads:
        found.append(f"{len(images)} <img> in the browser, {len(payloads)} inlined PNGs in the file")
    for payload, seen in zip(payloads, images):
        try:
            decoded = Image.open(io.BytesIO(base64.b64decode(payload, validate=True)))
            decoded.load()  # the full decode, not just the header
            size = decoded.size
        except (ValueError, OSError) as exc:
            found.append(f"image {seen['alt']!r} does not decode in Python: {exc}")
            continue
        if not seen["decoded"] or (seen["width"], seen["height"]) != size:
            found.append(f"image {seen['alt']!r}: browser size {seen['width']}x{seen['height']}, PNG {size[0]}x{size[1]}")
    found += [f"page error: {e}" for e in result["probe"]["errors"]]
    found += [f"console: {line}" for line in result["console"]]
    std, inked = screenshot_stats(result["screenshot"])
    if std < 10 or inked < 0.02:
        found.append(f"screenshot looks blank (grey std {std:.1f}, {100 * inked:.1f}% non-white pixels)")
    return found


def _render_run(tmp_path_factory: pytest.TempPathFactory, extra: list[str]) -> Path:
    out = tmp_path_factory.mktemp("browser") / "run"
    with contextlib.redirect_stdout(io.StringIO()):
        main(["run", str(RECIPES / "digits.yaml"), "--out", str(out), "--no-progress",
              *sum((["--set", s] for s in [*TINY, *extra]), [])])
    return out / "report.html"


@pytest.fixture(scope="module")
def report_html(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _render_run(tmp_path_factory, [])


def test_report_renders_in_chromium(report_html: Path, tmp_path: Path) -> None:
    result = open_in_chromium(report_html, tmp_path)
    assert problems(report_html, result) == []
    assert len(result["probe"]["images"]) >= 4  # trade-offs, curves, reliability, temperature explorer
    assert all(img["width"] > 100 for img in result["probe"]["images"])


def test_probe_catches_a_broken_page(report_html: Path, tmp_path: Path) -> None:
    """The harness itself: a corrupt image, a script error, a console.error and a blank page are each reported."""
    source = report_html.read_text(encoding="utf-8")
    broken = tmp_path / "broken.html"
    corrupt = source.replace("data:image/png;base64,iVBOR", "data:image/png;base64,AAAAA", 1)
    broken.write_text(corrupt.replace("</body>", '<script>console.error("boom"); notDefined();</script></body>'),
                      encoding="utf-8")
    found = "\n".join(problems(broken, open_in_chromium(broken, tmp_path / "a")))
    assert "does not decode in Python" in found
    assert "uncaught: Uncaught ReferenceError: notDefined" in found
    assert "console.error: boom" in found
    assert "console: " in found  # chromium's own log of the console messages
    assert "failed to load <img" in found

    blank = tmp_path / "blank.html"
    blank.write_text("<!doctype html><html><head></head><body></body></html>", encoding="utf-8")
    found = "\n".join(problems(blank, open_in_chromium(blank, tmp_path / "b")))
    assert "screenshot looks blank" in found and "0 inlined PNGs" in found


def test_full_report_renders_in_chromium(tmp_path_factory: pytest.TempPathFactory, tmp_path: Path) -> None:
    """The side-by-side page: seeds (± columns, the seeds table, error bars) and compressed variants."""
    pytest.importorskip("onnxruntime")
    page = _render_run(tmp_path_factory, ["train.seeds=[0, 1]", "compress.variants=[student_int8, teacher_pruned_50]"])
    assert problems(page, open_in_chromium(page, tmp_path)) == []
    assert "<h2>Seeds</h2>" in page.read_text() and "student_int8" in page.read_text()
