"""JupyterLab in a real browser, as a learner meets it: the copies of every lesson that
`make lab` makes, opened and run in Chromium.

For each lesson (found by glob, so a new lesson is covered when it lands): its copy opens with
no output anywhere, so no "Predict" answer is on screen before its cell runs; after Run All
every cell ran once, in order, and only cells tagged `raises-exception` show errors (each of
them does). JupyterLab runs on 127.0.0.1 with a token, over a temporary copy of the course
made by utils.workbooks (the repository is never touched), with the settings `make lab` writes
(no "Jupyter news?" pop-up). Chromium is Debian's, driven by Playwright; screenshots go to
build/screenshots/. Server and kernels are stopped by process group whatever happens.
"""

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from playwright.sync_api import sync_playwright

from utils import workbooks

ROOT = Path(__file__).resolve().parents[2]
SHOTS = ROOT / "build" / "screenshots"
CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]
PROJECTOR = {"width": 1280, "height": 800}
LESSONS = [p.name for p in workbooks.lessons(ROOT)]
RUN_ALL_S = 300  # the slowest lesson on a loaded 2-core machine, with room to spare


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def request(url: str, method: str = "GET") -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method=method), timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, b""


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """A running JupyterLab over a copy of the course with its workbooks: yields (base_url, token)."""
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: install Debian's package with `apt-get install chromium`")
    tmp = tmp_path_factory.mktemp("lab")
    root = tmp / "course"
    shutil.copytree(ROOT / "notebooks", root / "notebooks",
                    ignore=shutil.ignore_patterns(".ipynb_checkpoints", "__pycache__"))
    workbooks.make(root, quiet=True)
    workbooks.write_lab_settings(tmp / "app-settings")  # what `make lab` writes into the venv
    user = tmp / "settings" / "@jupyterlab" / "notebook-extension"
    user.mkdir(parents=True)
    # Render every cell (no windowing), so that the checks and screenshots see all of them.
    (user / "tracker.jupyterlab-settings").write_text(json.dumps({"windowingMode": "none"}))
    port, token = free_port(), secrets.token_hex(16)
    command = workbooks.lab_command(root) + [
        "--no-browser", f"--port={port}", f"--IdentityProvider.token={token}",
        f"--LabApp.user_settings_dir={tmp / 'settings'}", f"--LabApp.workspaces_dir={tmp / 'workspaces'}",
        f"--LabApp.app_settings_dir={tmp / 'app-settings'}", "--LabApp.expose_app_in_browser=True",
    ] + (["--allow-root"] if os.geteuid() == 0 else [])
    env = dict(os.environ, JUPYTER_RUNTIME_DIR=str(tmp / "runtime"), JUPYTER_CONFIG_DIR=str(tmp / "config"))
    log = open(tmp / "lab.log", "w")
    server = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        for _ in range(120):
            if server.poll() is not None:
                pytest.fail(f"JupyterLab exited early:\n{(tmp / 'lab.log').read_text()[-3000:]}")
            try:
                if request(f"{base}/api/status?token={token}")[0] == 200:
                    break
            except OSError:
                pass
            time.sleep(0.5)
        else:
            pytest.fail("JupyterLab did not answer within 60 s")
        yield base, token
    finally:
        os.killpg(server.pid, signal.SIGTERM)  # the server and the kernels it started
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
        log.close()


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
        try:
            yield chromium
        finally:
            chromium.close()


def test_server_refuses_requests_without_the_token(lab):
    base, token = lab
    assert request(f"{base}/api/contents")[0] == 403
    assert request(f"{base}/api/contents?token={token}")[0] == 200


def test_no_jupyter_news_question(lab):
    """`make lab`'s settings reach JupyterLab: news are never fetched, so it never asks."""
    base, token = lab
    status, body = request(f"{base}/lab/api/settings/@jupyterlab/apputils-extension:notification?token={token}")
    assert status == 200
    plugin = json.loads(body)
    fetch_news = plugin["settings"].get("fetchNews", plugin["schema"]["properties"]["fetchNews"]["default"])
    assert fetch_news == "false", "JupyterLab would ask whether to fetch news"


CELLS_JS = """() => {
  const panel = window.jupyterapp.shell.currentWidget;
  const cells = [];
  panel.content.widgets.forEach((widget, i) => {
    const cell = widget.model;
    const outputs = [];
    if (cell.type === 'code') {
      for (let j = 0; j < cell.outputs.length; j++) outputs.push(cell.outputs.get(j).type);
    }
    cells.push({index: i, type: cell.type, count: cell.type === 'code' ? cell.executionCount : null,
                tags: cell.getMetadata('tags') || [], outputs,
                shown: widget.node.querySelectorAll('.jp-OutputArea-output').length,
                source: cell.sharedModel.getSource()});
  });
  return {cells, kernel: panel.sessionContext.session?.kernel?.status};
}"""
# Code lines wider than their cell, as a projector shows them: scrolled, so cut off on screen.
CUT_OFF_JS = """() => [...document.querySelectorAll('.jp-NotebookPanel:not(.lm-mod-hidden) .jp-CodeCell .cm-scroller')]
  .filter(s => s.scrollWidth > s.clientWidth + 1)
  .map(s => s.closest('.jp-CodeCell').querySelector('.cm-content').innerText.slice(0, 60))"""
SETTLED_JS = f"""() => {{
  const state = ({CELLS_JS})();
  return state.kernel === 'idle' && state.cells.every(c => c.type !== 'code' || c.count !== null);
}}"""


def open_lesson(page, base: str, token: str, name: str) -> None:
    # ?reset: a fresh workspace, so that only this lesson is open (as on a learner's first visit)
    page.goto(f"{base}/lab/tree/{workbooks.FOLDER}/{name}?reset&token={token}", timeout=60_000)
    page.wait_for_function(f"() => window.jupyterapp?.shell.currentWidget?.context?.path === "
                           f"'{workbooks.FOLDER}/{name}'", timeout=60_000)
    page.wait_for_selector(".jp-NotebookPanel:not(.lm-mod-hidden) .jp-Cell", timeout=60_000)
    page.wait_for_function("() => window.jupyterapp.shell.currentWidget?.sessionContext"
                           "?.session?.kernel?.status === 'idle'", timeout=90_000)


def shut_down_kernels(base: str, token: str) -> None:
    status, body = request(f"{base}/api/sessions?token={token}")
    for session in json.loads(body or b"[]"):
        request(f"{base}/api/sessions/{session['id']}?token={token}", method="DELETE")


@pytest.mark.parametrize("name", LESSONS)
def test_the_learners_copy_opens_blank_and_runs_every_cell(lab, browser, name):
    base, token = lab
    SHOTS.mkdir(parents=True, exist_ok=True)
    stem = name[:2]
    page = browser.new_page(viewport=PROJECTOR)
    try:
        open_lesson(page, base, token, name)
        before = page.evaluate(CELLS_JS)["cells"]
        # Without `make lab`'s settings this question is on screen by now, over the notebook.
        assert page.get_by_text("notified about official Jupyter news").count() == 0, "the news question shows"
        predict = [c for i, c in enumerate(before) if c["type"] == "code" and any(
            p["type"] == "markdown" and "Predict" in p["source"] for p in before[max(0, i - 2):i])]
        if predict:
            page.locator(".jp-Notebook .jp-Cell").nth(predict[0]["index"]).scroll_into_view_if_needed()
        page.screenshot(path=str(SHOTS / f"{stem}-opened.png"))
        shown = [c["source"][:60] for c in before if c["outputs"] or c["shown"]]
        assert not shown, f"outputs on screen before anything ran: {shown}"

        # The README's classroom set-up: View > Appearance > Presentation Mode, Ctrl+B (file browser)
        for command in ("application:toggle-presentation-mode", "application:toggle-left-area"):
            page.evaluate(f"() => window.jupyterapp.commands.execute('{command}')")
        page.wait_for_timeout(500)
        cut_off = page.evaluate(CUT_OFF_JS)
        page.screenshot(path=str(SHOTS / f"{stem}-presentation.png"))
        for command in ("application:toggle-presentation-mode", "application:toggle-left-area"):
            page.evaluate(f"() => window.jupyterapp.commands.execute('{command}')")
        assert not cut_off, f"code cut off on a projector in Presentation Mode: {cut_off}"

        page.evaluate("() => window.jupyterapp.commands.execute('notebook:run-all-cells')")
        page.wait_for_function(SETTLED_JS, timeout=RUN_ALL_S * 1000)
        after = page.evaluate(CELLS_JS)["cells"]
        page.screenshot(path=str(SHOTS / f"{stem}-ran-all.png"))
        failing = [c for c in after if "error" in c["outputs"]]
        if failing:
            page.locator(".jp-Notebook .jp-Cell").nth(failing[0]["index"]).scroll_into_view_if_needed()
            page.screenshot(path=str(SHOTS / f"{stem}-first-error.png"))
    finally:
        page.close()
        shut_down_kernels(base, token)
    code = [c for c in after if c["type"] == "code"]
    counts = [c["count"] for c in code]
    assert counts == list(range(1, len(code) + 1)), f"not every cell ran once, in order: {counts}"
    for cell in code:
        tagged = "raises-exception" in cell["tags"]
        assert ("error" in cell["outputs"]) == tagged, (
            f"{'no error in a cell tagged raises-exception' if tagged else 'unexpected error'}: "
            f"{cell['source'][:60]!r}")
