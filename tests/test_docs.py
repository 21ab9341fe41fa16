"The offline docs site: built from the notebooks without Quarto, and checked in a real headless Chromium."

import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
import docs  # noqa: E402

PAGES = {
    "index": "boxrefine",
    "boxes": "Boxes",
    "loss": "The box loss",
    "data": "Data",
    "widgets": "Pictures and widgets",
    "cli": "Command line",
}


@pytest.fixture(scope="module")
def site():
    out = ROOT / "_build" / "site"
    docs.build(out)
    return out


def test_one_page_per_notebook_with_prose_code_outputs_and_api(site):
    for notebook in (ROOT / "nbs").glob("*.ipynb"):
        assert (site / (re.sub(r"^\d+_", "", notebook.stem) + ".html")).exists(), notebook
    boxes = (site / "boxes.html").read_text()
    text = re.sub(r"<[^>]+>", "", boxes)
    assert "Everything in boxrefine speaks one box language" in boxes  # prose
    assert 'id="check_boxes"' in boxes and "def check_boxes(" in text  # show_doc's API entry: heading and signature
    assert "is a finite float (N, 4) tensor of well-formed" in text  # its docstring
    assert "# What to call them in an error message" in text  # its documented parameters
    assert boxes.count('src="data:image/png;base64,') >= 1  # the noise figure
    assert (site / "loss.html").read_text().count('src="data:image/png;base64,') >= 2


def test_site_needs_no_network(site):
    for page in site.rglob("*.html"):
        text = page.read_text()
        assert not re.search(r'<(script|link)[^>]+(src|href)="(https?:)?//', text), page
    for css in site.rglob("*.css"):
        assert not re.search(r"@import\s+url\(\s*['\"]?https?:", css.read_text()), css


def test_site_renders_in_headless_chromium(site):
    shot = ROOT / "_build" / "docs-screenshot.png"
    shot.unlink(missing_ok=True)
    report = docs.check(site, shot, pages=("index.html", "boxes.html", "loss.html"))
    assert report["index.html"]["title"].startswith("boxrefine")
    assert "Tight boxes from coarse ones" in report["index.html"]["text"]
    assert report["index.html"]["figures"] >= 1
    assert report["boxes.html"]["title"].startswith("Boxes") and report["boxes.html"]["figures"] >= 1
    assert report["loss.html"]["figures"] >= 2
    for page, seen in report.items():
        assert seen["external"] == [], (page, seen["external"])
    assert shot.stat().st_size > 10_000
    print(f"screenshot: {shot}")


def test_widgets_page_shows_the_monitor_in_headless_chromium(site):
    "The monitor's last state and the review picture, saved by the executed widgets notebook, render offline."
    shot = ROOT / "_build" / "widgets-screenshot.png"
    shot.unlink(missing_ok=True)
    report = docs.check(site, shot, pages=("widgets.html",))["widgets.html"]
    assert report["title"].startswith("Pictures and widgets")
    assert "The training monitor" in report["text"] and "Reviewing refined labels" in report["text"]
    assert report["figures"] >= 3  # show_boxes, the monitor's snapshot, the review picture
    assert report["external"] == []
    assert shot.stat().st_size > 10_000
    print(f"screenshot: {shot}")
