"""JupyterLab in a real browser, as a learner meets it: the copies of every lesson that
`make lab` makes, opened and run in Chromium.

For each lesson (found by glob, so a new lesson is covered when it lands): its copy opens with
no output anywhere and every Predict's explanation folded, so no "Predict" answer is on screen
before its cell runs (not one phrase of any explanation is in the page's visible text); after
Run All every cell ran once, in order, and only cells tagged `raises-exception` show errors
(each of them does); the explanations are still folded, and one click on each fold shows it. JupyterLab runs on 127.0.0.1 with a token, over a temporary copy of the course
made by utils.workbooks (the repository is never touched), with the settings `make lab` writes
(no "Jupyter news?" pop-up). Chromium is Debian's, driven by Playwright; screenshots go to
build/screenshots/. Server and kernels are stopped by process group whatever happens.
"""

import json
import os
import re
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
    """A running JupyterLab over a copy of the course with its workbooks: yields (base_url, token,
    the copy's folder)."""
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
        yield base, token, root
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
    base, token, _ = lab
    assert request(f"{base}/api/contents")[0] == 403
    assert request(f"{base}/api/contents?token={token}")[0] == 200


def test_no_jupyter_news_question(lab):
    """`make lab`'s settings reach JupyterLab: news are never fetched, so it never asks."""
    base, token, _ = lab
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


VISIBLE_TEXT_JS = """() => document.querySelector('.jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook')
  .innerText.replace(/\\s+/g, ' ')"""
# Every rendered Markdown cell: how many <details> it shows, open or not, and its visible text.
MARKDOWN_JS = """() => {
  const panel = window.jupyterapp.shell.currentWidget;
  const cells = {};
  panel.content.widgets.forEach((widget, i) => {
    if (widget.model.type !== 'markdown') return;
    const rendered = widget.node.querySelector('.jp-RenderedMarkdown');
    const details = widget.node.querySelectorAll('.jp-RenderedMarkdown details');
    cells[i] = {rendered: !!rendered && rendered.childElementCount > 0, details: details.length,
                open: [...details].some(d => d.open), summary: details[0]?.querySelector('summary')?.innerText,
                text: (rendered?.innerText || '').replace(/\\s+/g, ' ')};
  });
  return cells;
}"""


def folded_answers(copy: Path) -> dict[int, str]:
    """Cell index -> a phrase of the explanation folded there, read from the copy's file: the
    longest run of plain words on one line (no code, math or markup around it, so the page
    shows it as written) that no other cell of the copy holds."""
    cells = json.loads(copy.read_text(encoding="utf-8"))["cells"]
    sources = ["".join(c["source"]) for c in cells]
    found = {}
    for i, source in enumerate(sources):
        m = re.fullmatch(r"<details>\n<summary>[^<]+</summary>\n\n(.*)\n\n</details>", source, re.S)
        if cells[i]["cell_type"] != "markdown" or not m:
            continue
        runs = [run.strip(" ,.;:'\"-") for line in m.group(1).splitlines()
                for run in re.split(r"[`*$_\[\]()<>\\|{}^~]", line)]
        runs = [run for run in runs if len(run.split()) >= 3 and re.fullmatch(r"[\w ,.;:'\"%-]+", run)
                and not any(run in other for k, other in enumerate(sources) if k != i)]
        assert runs, f"{copy.name}: no phrase to look for in the fold of cell {i}: {m.group(1)[:80]!r}"
        found[i] = " ".join(max(runs, key=len).split())
    return found


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


def center(page, index: int) -> None:
    page.evaluate(f"() => document.querySelectorAll('.jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook "
                  f".jp-Cell')[{index}].scrollIntoView({{block: 'center'}})")


def assert_folded(page, answers: dict[int, str], when: str) -> None:
    """Every fold is rendered closed, and no phrase of its explanation is on screen: nowhere in
    the notebook before anything ran (no outputs yet), in the fold's own cell after."""
    page.wait_for_function(f"() => Object.values(({MARKDOWN_JS})()).every(c => c.rendered)", timeout=60_000)
    markdown = page.evaluate(MARKDOWN_JS)
    visible = page.evaluate(VISIBLE_TEXT_JS) if when == "opened" else None
    for i, phrase in answers.items():
        cell = markdown[str(i)]
        assert cell["details"] == 1 and not cell["open"], f"{when}: the explanation in cell {i} is not folded"
        assert cell["summary"].startswith("Run the cell"), cell["summary"]
        assert phrase not in (visible or cell["text"]), f"{when}: an explanation is on screen: {phrase!r}"


@pytest.mark.parametrize("name", LESSONS)
def test_the_learners_copy_opens_blank_and_runs_every_cell(lab, browser, name):
    base, token, root = lab
    SHOTS.mkdir(parents=True, exist_ok=True)
    stem = name[:2]
    answers = folded_answers(root / workbooks.FOLDER / name)
    assert len(answers) >= 3, f"{name}: {len(answers)} folded explanations"
    page = browser.new_page(viewport=PROJECTOR)
    try:
        open_lesson(page, base, token, name)
        assert_folded(page, answers, "opened")
        before = page.evaluate(CELLS_JS)["cells"]
        # Without `make lab`'s settings this question is on screen by now, over the notebook.
        assert page.get_by_text("notified about official Jupyter news").count() == 0, "the news question shows"
        center(page, min(answers))  # the first Predict's code, and its folded explanation under it
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
        assert_folded(page, answers, "after Run All")

        # The learner has run the cell: one click on its fold shows the explanation.
        cells = page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook .jp-Cell")
        for i, phrase in answers.items():
            cells.nth(i).locator(".jp-RenderedMarkdown summary").click()
            opened = page.evaluate(MARKDOWN_JS)[str(i)]
            assert opened["open"] and phrase in opened["text"], f"one click did not show {phrase!r}"
            if i == min(answers):
                center(page, i)
                page.screenshot(path=str(SHOTS / f"{stem}-answer-opened.png"))
        assert phrase in page.evaluate(VISIBLE_TEXT_JS)
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


def test_reading_every_answer_and_saving_leaves_the_copy_untouched(lab, browser):
    """Unfolding is not saved: a learner who opens every fold of a fresh copy and saves it has
    not worked in it, so `make workbooks` still counts it as untouched (it follows its lesson)."""
    base, token, root = lab
    name = LESSONS[0]
    workbooks.refresh(name, root)  # afresh: Run All above may have autosaved outputs into it
    answers = folded_answers(root / workbooks.FOLDER / name)
    page = browser.new_page(viewport=PROJECTOR)
    try:
        open_lesson(page, base, token, name)
        assert_folded(page, answers, "opened")
        cells = page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook .jp-Cell")
        for i in answers:
            cells.nth(i).locator(".jp-RenderedMarkdown summary").click()
        assert all(c["open"] for i, c in page.evaluate(MARKDOWN_JS).items() if int(i) in answers)
        before = (root / workbooks.FOLDER / name).stat().st_mtime_ns
        page.evaluate("() => window.jupyterapp.commands.execute('docmanager:save')")
        page.wait_for_function("() => !window.jupyterapp.shell.currentWidget.context.model.dirty", timeout=30_000)
        assert (root / workbooks.FOLDER / name).stat().st_mtime_ns != before, "JupyterLab did not save"
    finally:
        page.close()
        shut_down_kernels(base, token)
    assert workbooks.make(root, quiet=True)[name] == "up to date"
