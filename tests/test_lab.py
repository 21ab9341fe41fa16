"""The live widgets where users see them: a real JupyterLab kernel, in headless Chromium, during real training.

The page is driven as a user drives it (the Run menu, the slider's keys, clicks), and what it shows is read from
the page itself; the kernel is asked, through a second client, what the clicks did. Screenshots of each step are
kept in _build/lab/.
"""

import base64
import hashlib
import io
import json
import os
import secrets
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from jupyter_client import BlockingKernelClient
from PIL import Image
from selenium.common.exceptions import TimeoutException
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support.ui import Select, WebDriverWait

from boxrefine.machine import cpu_description

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
import docs  # noqa: E402

SHOTS = ROOT / "_build" / "lab"
PANEL = ".jp-NotebookPanel:not(.lm-mod-hidden)"  # the notebook on show
MONITOR = """\
from boxrefine.config import load_config
from boxrefine.data import load_sample
from boxrefine.train import split_records, train_refiner
from boxrefine.widgets import TrainingMonitor

train, val = split_records(load_sample(verbose=False).records, load_config().data)
config = load_config(overrides=["training.epochs=4", "data.batch_size=4"])
monitor = TrainingMonitor(n_images=2, budget=None)  # redrawn after every epoch: the test watches it change
learn = train_refiner(config, train[:8], val[:4], cbs=[monitor], progress=False)
---
costed = TrainingMonitor(n_images=2)  # the default refresh budget
train_refiner(config, train[:8], val[:4], cbs=[costed], progress=False)
print(f"monitor cost: {costed.overhead:.1%} of training time ({costed.refreshes} refreshes, {costed.skipped} skipped)")
"""
REVIEW = """\
from boxrefine.data import sample_paths
from boxrefine.widgets import ReviewSession, ReviewWidget

review = ReviewWidget(ReviewSession("refined.json", sample_paths().images, out="reviewed.json"))
review
"""


def notebook(path: Path, source: str) -> None:
    "A notebook with one code cell per part of `source` (parts split by lines of ---)."
    cells = [
        {"cell_type": "code", "metadata": {}, "execution_count": None, "outputs": [], "source": part.strip()}
        for part in source.split("---\n")
    ]
    kernel = {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}
    path.write_text(
        json.dumps({"cells": cells, "metadata": {"kernelspec": kernel}, "nbformat": 4, "nbformat_minor": 5})
    )


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    "JupyterLab on 127.0.0.1 with a token, its settings, kernels and logs in a folder of its own."
    root = tmp_path_factory.mktemp("lab")
    notebook(root / "monitor.ipynb", MONITOR)
    notebook(root / "review.ipynb", REVIEW)
    settings = root / ".settings" / "@jupyterlab" / "apputils-extension"
    settings.mkdir(parents=True)
    (settings / "notification.jupyterlab-settings").write_text('{"fetchNews": "false", "checkForUpdates": false}')
    port, token = free_port(), secrets.token_hex(16)
    env = {**os.environ, **{f"JUPYTER_{k}_DIR": str(root / f".{k.lower()}") for k in ("CONFIG", "RUNTIME")}}
    log = (root / "lab.log").open("w")
    server = subprocess.Popen(
        [sys.executable, "-m", "jupyter", "lab", "--no-browser", "--allow-root", "--ServerApp.ip=127.0.0.1",
         f"--ServerApp.port={port}", f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}",
         f"--LabApp.user_settings_dir={root / '.settings'}", f"--LabApp.workspaces_dir={root / '.workspaces'}",
         "--LabApp.extension_manager=readonly", "--LabApp.news_url=None"],  # fmt: skip
        env=env, stdout=log, stderr=subprocess.STDOUT, cwd=root,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=2)
            break
        except OSError:
            assert server.poll() is None and time.monotonic() < deadline, (root / "lab.log").read_text()[-3000:]
            time.sleep(0.2)
    yield {"url": url, "token": token, "root": root, "runtime": root / ".runtime"}
    server.terminate()
    server.wait(timeout=30)
    log.close()


@pytest.fixture(scope="module")
def browser():
    SHOTS.mkdir(parents=True, exist_ok=True)
    driver = docs.chromium()
    yield driver
    driver.quit()


def until(driver, condition, what: str, seconds: float = 120):
    "Wait for `condition(driver)`; on a timeout, keep a screenshot named after `what` and fail saying it."
    try:
        return WebDriverWait(driver, seconds, poll_frequency=0.2).until(condition)
    except TimeoutException:
        shoot(driver, "failed-" + "-".join(what.split()[:6]))
        raise AssertionError(f"{what} (screenshot in {SHOTS})") from None


def shoot(driver, name: str) -> Path:
    path = SHOTS / f"{name}.png"
    driver.save_screenshot(str(path))
    return path


def open_and_run_all(driver, lab: dict, name: str) -> None:
    "Open a notebook in JupyterLab, wait for its kernel, and run every cell from the Run menu."
    driver.get(f"{lab['url']}/lab/tree/{name}?token={lab['token']}")
    until(
        driver,
        lambda d: (
            name in d.find_element(By.CSS_SELECTOR, "li.lm-TabBar-tab.jp-mod-current").text  # it has the focus
            and d.find_elements(By.XPATH, "//*[contains(text(), 'Python 3 (ipykernel) | Idle')]")
            and d.find_elements(By.CSS_SELECTOR, f"{PANEL} .jp-Notebook-ExecutionIndicator[data-status='idle']")
        ),
        f"{name} did not open with an idle kernel",
    )
    driver.find_element(By.XPATH, "//div[contains(@class, 'lm-MenuBar-itemLabel') and text()='Run']").click()
    run_all = "li.lm-Menu-item[data-command='runmenu:run-all']"
    until(driver, lambda d: d.find_elements(By.CSS_SELECTOR, run_all), "the Run menu did not open")[0].click()


def cells(driver) -> list:
    return driver.find_elements(By.CSS_SELECTOR, f"{PANEL} .jp-Notebook .jp-CodeCell")


def done(cell) -> bool:
    "Whether a cell has run to its end: its prompt shows a number, not [*] or [ ]."
    prompt = cell.find_element(By.CSS_SELECTOR, ".jp-InputPrompt").text
    return any(ch.isdigit() for ch in prompt)


PNG_OF = """const [img, done] = arguments;
if (!img.src.startsWith('blob:')) { done(null); return; }
fetch(img.src).then(r => r.blob()).then(b => new Promise(ok => {
  const f = new FileReader(); f.onload = () => ok(f.result.split(',')[1]); f.readAsDataURL(b); }))
  .then(done).catch(() => done(null));"""
PICTURES = {}  # digest -> PNG bytes, of the pictures seen


def picture(img) -> str | None:
    "A digest of the PNG an image element shows, read by the page from its source (None: it was just replaced)."
    data = img.parent.execute_async_script(PNG_OF, img)
    if not data:  # replaced while read, or nothing drawn yet
        return None
    png = base64.b64decode(data)
    assert png.startswith(b"\x89PNG"), png[:40]
    digest = hashlib.sha256(png).hexdigest()
    PICTURES[digest] = png
    return digest


def yellow_pixels(digest: str) -> int:
    "How many pixels of a picture seen have the predicted boxes' yellow."
    rgb = np.asarray(Image.open(io.BytesIO(PICTURES[digest])).convert("RGB")).astype(int)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    return int(((r > 220) & (g > 170) & (g < 235) & (b < 80)).sum())


def kernel_client(lab: dict, notebook_name: str) -> BlockingKernelClient:
    "A second client on the notebook's kernel, to ask it what the page's clicks did."
    sessions = json.loads(urllib.request.urlopen(f"{lab['url']}/api/sessions?token={lab['token']}").read())
    kernel = next(s["kernel"]["id"] for s in sessions if s["path"].endswith(notebook_name))
    client = BlockingKernelClient(connection_file=str(lab["runtime"] / f"kernel-{kernel}.json"))
    client.load_connection_file()
    client.start_channels()
    return client


def ask(client: BlockingKernelClient, expression: str, setup: str = ""):
    "The value of a JSON-able Python expression in the kernel, after the statements `setup`."
    out = []
    reply = client.execute_interactive(
        f"{setup}\nimport json as _j; print(_j.dumps({expression}))",
        store_history=False,
        timeout=60,
        output_hook=lambda msg: out.append(msg["content"].get("text", "")) if msg["msg_type"] == "stream" else None,
    )
    assert reply["content"]["status"] == "ok", reply["content"]
    return json.loads("".join(out))


def wait_for_change(driver, img_of, before: str, what: str) -> str:
    "Wait until the image `img_of(driver)` shows something other than `before`; return what it shows."
    return until(driver, lambda d: (p := picture(img_of(d))) not in (before, None) and p, what, 30)


def widget_errors(driver, lab: dict) -> list:
    "What the page, the browser's console and the server's log say went wrong with widgets or the kernel."
    page = driver.find_element(By.TAG_NAME, "body").text
    shown = [line for line in page.splitlines() if "Error displaying widget" in line or "Traceback" in line]
    errors = driver.find_elements(
        By.CSS_SELECTOR, ".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']"
    )
    stderr = [e.text for e in errors if "Error" in e.text]
    console = [
        e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE" and "favicon" not in e["message"]
    ]
    server = [line for line in (lab["root"] / "lab.log").read_text().splitlines() if line.startswith("[E ")]
    return shown + stderr + console + server


def test_the_monitor_changes_during_training_and_its_controls_answer_at_once(lab, browser):
    open_and_run_all(browser, lab, "monitor.ipynb")
    first = lambda d: cells(d)[0]  # noqa: E731
    images = lambda d: first(d).find_elements(By.CSS_SELECTOR, ".widget-image")  # noqa: E731
    pred = lambda d: first(d).find_element(By.XPATH, ".//label[.//span[text()='pred']]//input[@type='checkbox']")  # noqa: E731
    until(browser, lambda d: len(images(d)) == 2, "the monitor's panel never appeared")
    shoot(browser, "01-monitor-appears")
    curves, boxes, hidden_while_training = set(), {}, 0  # boxes: picture -> its yellow (predicted box) pixels
    while not done(first(browser)):  # training: watch the two pictures
        c, b = (picture(i) for i in images(browser))
        curves.add(c)
        if b is not None and b not in boxes:
            boxes[b] = yellow_pixels(b)
            hidden_while_training += len(boxes) > 2 and boxes[b] == 0
            shoot(browser, f"02-monitor-during-training-{len(boxes)}")
            if len(boxes) == 2:
                pred(browser).click()  # hide the predicted boxes while the cell still trains
        time.sleep(0.2)
    curves.discard(None)
    # 4 epochs, a refresh after each and one at the end: most are seen while the cell runs (a poll can miss one)
    assert len(boxes) >= 3 and len(curves) >= 3, (len(boxes), len(curves))
    assert all(n > 0 for n in list(boxes.values())[:2])  # before the click: predicted boxes drawn
    assert hidden_while_training >= 1, list(boxes.values())  # the click was answered while training ran
    until(browser, lambda d: done(cells(d)[1]), "the second training never finished")
    output = cells(browser)[1].find_element(By.CSS_SELECTOR, ".jp-OutputArea").text.splitlines()
    cost = next(line for line in output if line.startswith("monitor cost:"))
    (SHOTS / "monitor-cost.txt").write_text(
        f"{cost} (live kernel, CPU {cpu_description()})\n"
    )  # kept with the screenshots
    kernel = kernel_client(lab, "monitor.ipynb")
    try:
        assert ask(kernel, "[monitor.page, sorted(monitor.kinds)]") == [0, ["noisy", "true"]]
        shoot(browser, "03-monitor-after-training")

        shown = picture(images(browser)[1])
        first(browser).find_element(By.CSS_SELECTOR, ".noUi-handle").send_keys(Keys.ARROW_RIGHT)  # page 2
        shown = wait_for_change(browser, lambda d: images(d)[1], shown, "the page slider redrew nothing")
        page, title, third = ask(
            kernel, "[monitor.page, monitor.last_figures[1].axes[0].get_title(), learn.valid_dl.dataset[2]['image_id']]"
        )
        assert (page, title) == (1, f"image {third}")
        shoot(browser, "04-monitor-page-2")

        pred(browser).click()  # the predicted boxes again
        shown = wait_for_change(browser, lambda d: images(d)[1], shown, "showing the predicted boxes redrew nothing")
        assert yellow_pixels(shown) > 0
        drawn = "[len(drawn_boxes(monitor.last_figures[1].axes[0], k)) for k in ('true', 'noisy', 'pred')]"
        true, noisy, predicted = ask(kernel, drawn, setup="from boxrefine.widgets import drawn_boxes")
        assert true > 0 and noisy == predicted == true
        assert ask(kernel, "sorted(monitor.kinds)") == ["noisy", "pred", "true"]
        shoot(browser, "05-monitor-pred-shown")
    finally:
        kernel.stop_channels()
    assert widget_errors(browser, lab) == []


def test_the_review_widget_records_clicks_on_disk(lab, browser):
    from boxrefine.data import sample_paths
    from boxrefine.inference import refine_dataset
    from boxrefine.widgets import NUDGES, ReviewSession

    refined = lab["root"] / "refined.json"
    refine_dataset(sample_paths().annotations, refined, images=sample_paths().images, min_gain=-1.0, max_images=2,
                   progress=False, verbose=False)  # fmt: skip
    order = ReviewSession(refined, sample_paths().images, out=lab["root"] / "expected.json").order("moved")
    open_and_run_all(browser, lab, "review.ipynb")
    panel = lambda d: cells(d)[0]  # noqa: E731
    until(browser, lambda d: panel(d).find_elements(By.CSS_SELECTOR, ".widget-select select"), "no review panel")
    shoot(browser, "06-review-opens")

    def choose(index: int) -> None:
        Select(panel(browser).find_element(By.CSS_SELECTOR, ".widget-select select")).select_by_index(index)

    def click(label: str) -> None:
        panel(browser).find_element(By.XPATH, f".//button[normalize-space()='{label}']").click()

    def status() -> str:
        return panel(browser).find_element(By.CSS_SELECTOR, ".widget-html").text

    decisions = lab["root"] / "reviewed.json.decisions.json"
    for index, clicks in ((0, ["accept"]), (1, ["reject"]), (2, ["left ←", "left ←", "bottom ↓"])):
        choose(index)
        image = panel(browser).find_element(By.CSS_SELECTOR, ".widget-image")
        before = picture(image)
        for label in clicks:
            said = status()
            click(label)  # the kernel records it and says so in the panel's status line
            until(browser, lambda d: status() != said and f"#{order[index]}:" in status(), f"{label} did nothing", 30)
        if clicks[0] in NUDGES:
            wait_for_change(browser, lambda d: panel(d).find_element(By.CSS_SELECTOR, ".widget-image"), before,
                            "the nudges did not move the drawn box")  # fmt: skip
        shoot(browser, f"07-review-{index}-{clicks[0].split()[0]}")
    click("write")
    until(browser, lambda d: "wrote" in status(), "write wrote nothing", 30)
    shoot(browser, "08-review-written")
    saved = json.loads(decisions.read_text())["decisions"]
    assert {json.loads(k): v for k, v in saved.items()} == {
        order[0]: {"action": "accept"},
        order[1]: {"action": "reject"},
        order[2]: {"action": "nudge", "delta": [-2.0, 0.0, 0.0, 1.0]},
    }
    reviewed = {a["id"]: a for a in json.loads((lab["root"] / "reviewed.json").read_text())["annotations"]}
    source = {a["id"]: a for a in json.loads(refined.read_text())["annotations"]}
    assert [reviewed[i]["review"] for i in order[:3]] == ["accept", "reject", "nudge"]
    assert reviewed[order[0]]["bbox"] == source[order[0]]["bbox"]
    assert reviewed[order[1]]["bbox"] == source[order[1]]["bbox_input"]
    x, y, w, h = source[order[2]]["bbox"]
    assert reviewed[order[2]]["bbox"] == pytest.approx([x - 2, y, w + 2, h + 1], abs=0.02)
    assert all(reviewed[i]["review"] == "pending" for i in order[3:])
    assert widget_errors(browser, lab) == []
