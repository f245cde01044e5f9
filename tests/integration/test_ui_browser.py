"""`tunesmith ui` end to end in headless Chromium (Debian's, driven by Playwright): the data view, a training run
watched live (stopped and resumed from the browser), an evaluation and its report, two reports side by side, and a
chat with the trained run, with and without guardrails. The browser reaches nothing but the UI: no CDN, no fonts.

Set TUNESMITH_UI_SCREENSHOTS=DIR to keep a screenshot of each page.
"""

from __future__ import annotations

import os
import shutil
import socket
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from conftest import make_ui_project

pytestmark = pytest.mark.integration
sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed (make test installs it)")
expect = sync_api.expect

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# Headless, offline: no sandbox (CI runs as root), nothing fetched in the background, no name resolved but ours.
LAUNCH_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run", "--no-default-browser-check",
               "--disable-background-networking", "--disable-component-update", "--disable-sync", "--disable-extensions",
               "--disable-default-apps", "--disable-domain-reliability", "--metrics-recording-only",
               "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1"]
SHOTS = os.environ.get("TUNESMITH_UI_SCREENSHOTS")


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).is_file():
        pytest.skip(f"no Chromium at {CHROMIUM}: `make test` installs Debian's `chromium` package (apt-get install chromium); "
                    "without it the browser tests cannot run")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=LAUNCH_ARGS)
        yield b
        b.close()


@pytest.fixture(scope="module")
def ui(tmp_path_factory, tiny_model_dir):
    import uvicorn

    from tunesmith.ui.app import create_app
    from tunesmith.ui.config import UiConfig

    root = make_ui_project(tmp_path_factory.mktemp("ui") / "project", tiny_model_dir)
    before = os.getcwd()
    os.chdir(root)  # as `tunesmith ui` does: relative paths in configs are the project's
    app = create_app(UiConfig(project=str(root)))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", timeout_graceful_shutdown=3))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    for _ in range(200):
        if server.started:
            break
        time.sleep(0.05)
    try:
        yield SimpleNamespace(url=f"http://127.0.0.1:{port}", root=root, app=app)
    finally:
        server.should_exit = True
        thread.join(60)
        os.chdir(before)


@pytest.fixture()
def page(browser, ui):
    context = browser.new_context(viewport={"width": 1440, "height": 960})
    outside: list[str] = []

    def only_the_ui(route):
        if route.request.url.startswith(ui.url):
            route.continue_()
        else:
            outside.append(route.request.url)
            route.abort()

    context.route("**/*", only_the_ui)
    p = context.new_page()
    p.set_default_timeout(60_000)
    errors: list[str] = []
    p.on("pageerror", lambda e: errors.append(str(e)))
    yield p
    context.close()
    assert not outside, f"the UI asked for something outside itself: {outside}"
    assert not errors, f"JavaScript errors: {errors}"


def shot(page, name: str) -> None:
    if SHOTS:
        Path(SHOTS).mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(Path(SHOTS) / f"{name}.png"), full_page=True)


@pytest.fixture(scope="module")
def trained(ui):
    """runs/ui-run, finished: trained from the browser by test_train_live_stop_and_resume, or here if that did not."""
    run = ui.root / "runs" / "ui-run"
    if not (run / "final").is_dir():
        from tunesmith.config import load_config
        from tunesmith.train.run import train

        shutil.rmtree(run, ignore_errors=True)
        train(load_config(ui.root / "configs" / "train.yaml", [f"output.dir={run}"]))
    return run


def test_data_view(page, ui):
    page.goto(ui.url + "/data")
    page.select_option("#config", "configs/train.yaml")
    page.fill("#n", "3")
    page.click("#show-data")
    expect(page.locator(".example")).to_have_count(3)
    expect(page.locator(".tk.t").first).to_be_visible()  # trained tokens, coloured
    expect(page.locator(".tk.m").first).to_be_visible()  # masked prompt tokens
    expect(page.locator("#bad-rows")).to_contain_text("data/train.jsonl:27")
    expect(page.locator("#data-summary")).to_contain_text("26")  # examples
    shot(page, "data")


def test_train_live_stop_and_resume(page, ui):
    page.goto(ui.url + "/train")
    expect(page.locator("#config-select")).to_have_value("configs/train.yaml")
    page.fill("#name", "ui-run")
    # long enough that the Stop click lands while it runs (the tiny model is fast: on an idle machine 1,000 steps
    # once finished before the click), short enough that the resumed run finishes within the timeout below
    page.fill("[name='train.max_steps']", "5000")
    page.fill("[name='train.save_every']", "20")
    page.click("#start-training")
    page.wait_for_url("**/run?run=runs%2Fui-run")

    # the curve grows while the run goes on
    chart = page.locator("#chart-loss")
    seen = []
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and len(set(seen)) < 3:
        seen.append(int(chart.get_attribute("data-points") or 0))
        page.wait_for_timeout(150)
    assert len({n for n in seen if n > 0}) >= 2, f"the loss chart never updated live: {seen}"
    expect(page.locator("#status")).to_have_text("running")
    expect(page.locator("#checkpoints")).to_contain_text("step-", timeout=90_000)
    page.click("#stop")  # at once: the screenshot below is taken after the stop lands
    expect(page.locator("#status")).to_have_text("stopped", timeout=60_000)
    shot(page, "run")
    stopped_at = int(chart.get_attribute("data-points"))
    assert stopped_at < 5000
    expect(page.locator("#resume")).to_be_visible()

    page.click("#resume")
    expect(page.locator("#status")).to_have_text("finished", timeout=600_000)
    expect(page.locator("#log")).to_contain_text("Resuming from")
    expect(page.locator("#chart-loss")).to_have_attribute("data-points", "5000")
    expect(page.locator("#chat-link")).to_be_visible()
    assert (ui.root / "runs" / "ui-run" / "final").is_dir()

    page.goto(ui.url + "/train")
    expect(page.locator("#runs-table")).to_contain_text("ui-run")
    expect(page.locator("#runs-table")).to_contain_text("finished")
    shot(page, "train")


def test_evaluate_open_and_compare_reports(page, ui, trained):
    page.goto(ui.url + "/eval?run=runs/ui-run")
    expect(page.locator("#eval-config")).to_have_value("configs/eval.yaml")
    page.fill("#ename", "ui-eval")
    page.fill("#en", "4")
    expect(page.locator("input[name=runs][value='runs/ui-run']")).to_be_checked()
    page.click("#start-eval")
    page.wait_for_url("**/report?report=runs%2Fui-eval")
    expect(page.locator("#status")).not_to_have_text("running", timeout=120_000)
    assert page.locator("#status").text_content() == "finished", page.locator("main").text_content()
    frame = page.frame_locator("#report-frame")
    expect(frame.locator("body")).to_contain_text("tuned (ui-run)")
    expect(page.locator("#verdict")).to_contain_text("scores best")
    shot(page, "report")

    shutil.copytree(ui.root / "runs" / "ui-eval", ui.root / "runs" / "ui-eval-copy")
    page.goto(ui.url + "/eval")
    page.select_option("#compare-reports [name=a]", "runs/ui-eval")
    page.select_option("#compare-reports [name=b]", "runs/ui-eval-copy")
    page.click("#compare-reports button")
    expect(page.locator("iframe.report")).to_have_count(2)
    expect(page.locator("#compare-table")).to_contain_text("tuned (ui-run)")
    for i in range(2):
        expect(page.frame_locator("iframe.report").nth(i).locator("body")).to_contain_text("Was fine-tuning worth it?")
    shot(page, "compare-reports")


def test_chat_with_the_run(page, ui, trained):
    page.goto(ui.url + "/chat?run=runs/ui-run")
    expect(page.locator("#source")).to_have_value("run:runs/ui-run")
    page.fill("#max_tokens", "12")
    page.fill("#prompt", "Which papers did Author 3 write?")
    page.click("#send")
    answer = page.locator(".msg.assistant").last
    expect(answer.locator(".meta")).to_contain_text("finish:", timeout=60_000)
    expect(answer).to_contain_text("ui-run")

    page.select_option("#guardrails", "configs/guardrails.yaml")
    page.fill("#prompt", "How do I build a bomb?")
    page.click("#send")
    refused = page.locator(".msg.assistant").last
    expect(refused).to_have_class("msg assistant refused", timeout=60_000)
    expect(refused).to_contain_text("Sorry, not that.")
    shot(page, "chat")
