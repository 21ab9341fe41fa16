"""boxrefine's documentation tools, for machines without Quarto.

    python tools/docs.py execute NB.ipynb ...   run notebooks and save their outputs in place
    python tools/docs.py readme                  write README.md from nbs/index.ipynb
    python tools/docs.py build [--out DIR]       build the offline HTML site (default _build/site)
    python tools/docs.py check [--site DIR]      serve the site on 127.0.0.1, open it in headless Chromium,
                                                 save a screenshot and check the title and the figures

Where Quarto is installed, `nbdev_docs` builds the standard site from the same notebooks and `_quarto.yml`.
Here, nbdev's own processing (`proc_nbs`: directives, `show_doc` API reference) feeds smalldocs, a pure-Python
renderer of Quarto projects that ships its CSS and JavaScript, so the site needs no CDN.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import functools
import http.server
import json
import re
import shutil
import sys
import tempfile
import threading
from configparser import ConfigParser
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NBS = ROOT / "nbs"
README_IMAGES = "index_files"


def execute(notebooks: list[str]) -> None:
    "Run each notebook top to bottom in a fresh shell and save its outputs; stop at the first error."
    from execnb.nbio import read_nb, write_nb
    from execnb.shell import CaptureShell

    import matplotlib.pyplot as plt

    for path in map(Path, notebooks):
        plt.close("all")  # figures a previous notebook left open would be shown in this one's first cell
        path = path.resolve()
        nb = read_nb(path)
        shell = CaptureShell(path.parent, mpl_format="png")
        with contextlib.chdir(path.parent):  # relative paths in a notebook mean what they mean under nbdev_test
            for cell in nb.cells:
                if cell.cell_type != "code" or re.search(r"^#\|\s*eval:\s*false", cell.source, re.M):
                    continue
                shell.cell(cell)
                if shell.exc:
                    sys.exit(f"{path}: a cell failed:\n{cell.source}\n{shell.exc!r}")
        write_nb(nb, path)
        print(f"executed {path}")


def _settings() -> dict:
    cfg = ConfigParser(delimiters=["="])
    cfg.read(ROOT / "settings.ini", encoding="utf-8")
    return dict(cfg["DEFAULT"])


def _directives(source: str) -> tuple[dict, str]:
    "A code cell's `#| key: value` directives, and its code without them."
    opts, code = {}, []
    for line in source.splitlines():
        m = re.match(r"#\|\s*([\w-]+)\s*:?\s*(.*)", line)
        if m:
            opts[m[1]] = m[2].strip()
        else:
            code.append(line)
    return opts, "\n".join(code).strip()


def _output_markdown(out: dict, image_name: str) -> str:
    "One notebook output as GitHub Markdown; pictures are written beside the README."
    if out["output_type"] == "stream":
        return "```\n" + "".join(out["text"]).rstrip() + "\n```"
    data = out.get("data", {})
    if "image/png" in data:
        (ROOT / README_IMAGES).mkdir(exist_ok=True)
        (ROOT / README_IMAGES / image_name).write_bytes(base64.b64decode("".join(data["image/png"])))
        return f"![]({README_IMAGES}/{image_name})"
    if "text/markdown" in data:
        return "".join(data["text/markdown"]).strip()
    if "text/plain" in data:
        return "```\n" + "".join(data["text/plain"]).rstrip() + "\n```"
    return ""


def readme() -> None:
    "Write README.md (and its pictures) from nbs/index.ipynb, with site-relative links made absolute."
    nb = json.loads((NBS / "index.ipynb").read_text())
    site = _settings()["doc_host"] + _settings()["doc_baseurl"]
    shutil.rmtree(ROOT / README_IMAGES, ignore_errors=True)
    parts = [
        "<!-- Generated from nbs/index.ipynb by `python tools/docs.py readme`: edit the notebook, not this file. -->"
    ]
    for i, cell in enumerate(nb["cells"]):
        source = "".join(cell["source"])
        if cell["cell_type"] == "markdown":
            parts.append(re.sub(r"\]\((?!https?:)([\w-]+\.html)\)", rf"]({site}/\1)", source))
            continue
        opts, code = _directives(source)
        if "hide" in opts or opts.get("include") == "false":
            continue
        if code and opts.get("echo") != "false":
            parts.append("```python\n" + code + "\n```")
        for j, out in enumerate(cell.get("outputs", [])):
            md = _output_markdown(out, f"cell-{i}-output-{j}.png")
            if md:
                parts.append(md)
    (ROOT / "README.md").write_text("\n\n".join(parts) + "\n")
    print("wrote README.md")


def _apply_output_files(proc: Path) -> None:
    "Rename processed notebooks to their `output-file` names (00_boxes.ipynb -> boxes.ipynb), as Quarto does."
    sidebar = proc / "sidebar.yml"
    text = sidebar.read_text()
    for nb in proc.glob("*.ipynb"):
        m = re.search(r"output-file:\s*([\w-]+)\.html", "".join(json.loads(nb.read_text())["cells"][0]["source"]))
        if m and m[1] != nb.stem:
            nb.replace(nb.with_name(m[1] + ".ipynb"))
            text = re.sub(rf"\b{re.escape(nb.name)}\b", m[1] + ".ipynb", text)
    sidebar.write_text(text)


# Settings that only Quarto's own build reads (README as commonmark, kept .md files, nbdev's page names, handled above)
QUARTO_ONLY = ("format commonmark is not built", "keep-md is ignored", "output-file is not read")


def _drop_remote_imports(site: Path) -> None:
    "Remove CSS `@import`s of remote stylesheets (the theme's web fonts): the offline site uses local fonts."
    for css in site.rglob("*.css"):
        text = css.read_text()
        local = re.sub(r"@import\s+url\(\s*['\"]?https?://[^)]*\)\s*;?", "", text)
        if local != text:
            css.write_text(local)


def build(out: Path) -> Path:
    "Build the offline site into `out` and return the path of its home page."
    from nbdev.doclinks import _build_modidx
    from nbdev.quarto import nbdev_sidebar, refresh_quarto_yml
    from nbdev.serve import proc_nbs
    from smalldocs.site import build as smalldocs_build

    refresh_quarto_yml()
    _build_modidx()
    nbdev_sidebar.__wrapped__(path=NBS)
    proc = proc_nbs(NBS, n_workers=0, force=True)
    _apply_output_files(proc)
    site = smalldocs_build(proc, quiet=True)
    for warning in site.warnings:
        if not any(q in warning for q in QUARTO_ONLY):
            print(f"docs warning: {warning}", file=sys.stderr)
    built = proc / "_docs"
    _drop_remote_imports(built)
    shutil.rmtree(out, ignore_errors=True)
    shutil.copytree(built, out)
    print(f"built {len(list(out.glob('*.html')))} pages into {out}")
    return out / "index.html"


@contextlib.contextmanager
def serve(directory: Path):
    "Serve `directory` on 127.0.0.1 on a free port, in a thread; yields the base URL."

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(directory)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def chromium():
    "Headless Debian Chromium through Selenium and Debian's chromedriver, with no network but loopback."
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1280,1000",
        f"--user-data-dir={tempfile.mkdtemp(prefix='boxrefine-chromium-')}",
    ):
        opts.add_argument(flag)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})  # the console, for pages that report errors there
    return webdriver.Chrome(service=Service(shutil.which("chromedriver") or "/usr/bin/chromedriver"), options=opts)


PAGE_REPORT = """return {
  title: document.title,
  figures: [...document.images].filter(i => i.complete && i.naturalWidth > 0).length,
  text: document.body.innerText,
  resources: performance.getEntriesByType('resource').map(r => r.name)
};"""


def check(site: Path, screenshot: Path, pages=("index.html",)) -> dict:
    "Open `pages` of the built site in headless Chromium; return what each shows, and screenshot the first."
    report = {}
    with serve(site) as base:
        driver = chromium()
        try:
            for page in pages:
                driver.get(f"{base}/{page}")
                report[page] = driver.execute_script(PAGE_REPORT)
                if page == pages[0]:  # the whole page, figures included
                    height = driver.execute_script("return document.documentElement.scrollHeight")
                    driver.set_window_size(1280, min(height + 100, 8000))
                    screenshot.parent.mkdir(parents=True, exist_ok=True)
                    driver.save_screenshot(str(screenshot))
        finally:
            driver.quit()
    for page, seen in report.items():
        seen["external"] = [r for r in seen.pop("resources") if not r.startswith(base)]
    return report


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("execute").add_argument("notebooks", nargs="+")
    sub.add_parser("readme")
    sub.add_parser("build").add_argument("--out", type=Path, default=ROOT / "_build" / "site")
    c = sub.add_parser("check")
    c.add_argument("--site", type=Path, default=ROOT / "_build" / "site")
    c.add_argument("--screenshot", type=Path, default=ROOT / "_build" / "docs-screenshot.png")
    args = p.parse_args(argv)
    if args.command == "execute":
        execute(args.notebooks)
    elif args.command == "readme":
        readme()
    elif args.command == "build":
        build(args.out)
    else:
        report = check(args.site, args.screenshot)
        print(json.dumps({k: {**v, "text": v["text"][:200]} for k, v in report.items()}, indent=1))
        print(f"screenshot: {args.screenshot}")


if __name__ == "__main__":
    main()
