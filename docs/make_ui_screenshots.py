"""The README's screenshots of `tunesmith ui`, taken in headless Chromium on the real SmolLM2 and DBLP-QuAD.

    .venv/bin/python docs/make_ui_screenshots.py      # about 7 minutes on one CPU thread; writes docs/images/ui-*.png

Everything happens through the browser, as a user would do it: the data view, two short LoRA runs started from the
Train form (one shot while it trains), two evaluations started from the Evaluate form, their reports side by side,
the two runs side by side, and a chat with a run (then with the SPARQL grammar of examples/guardrails/sparql.yaml).
Runs and reports go to runs/ui-demo/ (git-ignored).
"""

from __future__ import annotations

import shutil
import socket
import sys
import threading
import time
from pathlib import Path

import uvicorn
import yaml
from playwright.sync_api import expect, sync_playwright

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "tests" / "integration")]

from test_ui_browser import LAUNCH_ARGS  # noqa: E402  (the browser tests' offline Chromium flags)

from tunesmith.ui.app import create_app  # noqa: E402
from tunesmith.ui.config import UiConfig  # noqa: E402

OUT = ROOT / "docs" / "images"
RUNS = "runs/ui-demo"
QUESTION = "What are the papers written by the person Wei Wang?\nEntities: <https://dblp.org/pid/w/WeiWang2>"


def serve() -> str:
    app = create_app(UiConfig(project=str(ROOT), runs=[RUNS]))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.05)
    return f"http://127.0.0.1:{port}"


def shot(page, name: str, full: bool = False) -> None:
    page.wait_for_timeout(400)
    page.screenshot(path=str(OUT / f"ui-{name}.png"), full_page=full)
    print("wrote", OUT / f"ui-{name}.png")


def train(page, url: str, name: str, lr: str, steps: str, shoot_at: int | None = None) -> None:
    page.goto(url + "/train")
    page.select_option("#config-select", "configs/dblp-quad-lora.yaml")
    page.wait_for_timeout(500)
    page.fill("#name", name)
    page.fill("[name='train.max_steps']", steps)
    page.fill("[name='train.lr']", lr)
    page.fill("[name='train.log_every']", "2")
    page.fill("[name='train.save_every']", "20")
    page.click("#start-training")
    page.wait_for_url("**/run?*")
    if shoot_at is not None:
        page.wait_for_function(f"Number(document.querySelector('#chart-loss').dataset.points || 0) >= {shoot_at}",
                               timeout=900_000)
        shot(page, "run")
    expect(page.locator("#status")).to_have_text("finished", timeout=900_000)


def evaluate(page, url: str, name: str, runs: list[str], few_shot: bool) -> None:
    cfg = yaml.safe_load((ROOT / "examples/dblp_quad/eval.yaml").read_text())
    cfg["variants"] = [{"kind": "base"}] + ([{"kind": "few_shot", "k": 3, "select": "similar"}] if few_shot else [])
    cfg["report"]["title"] = "DBLP-QuAD: was fine-tuning worth it?"
    page.goto(url + "/eval")
    page.select_option("#eval-config", "examples/dblp_quad/eval.yaml")
    page.wait_for_timeout(500)
    page.fill("#ename", name)
    page.fill("#en", "16")
    page.check("input[name=no_forgetting]")
    page.fill("#eval-yaml", yaml.safe_dump(cfg, sort_keys=False, allow_unicode=True))
    for run in runs:
        page.check(f"input[name=runs][value='{RUNS}/{run}']")
    page.click("#start-eval")
    page.wait_for_url("**/report?*")
    expect(page.locator("#status")).not_to_have_text("running", timeout=1_800_000)


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(ROOT / RUNS, ignore_errors=True)
    url = serve()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=shutil.which("chromium") or "/usr/bin/chromium", args=LAUNCH_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        page.set_default_timeout(120_000)

        page.goto(url + "/data?config=configs/dblp-quad-lora.yaml&n=3")
        shot(page, "data")

        train(page, url, "lora-lr1e-3", "1.0e-3", "40", shoot_at=12)
        train(page, url, "lora-lr3e-4", "3.0e-4", "40")
        page.goto(url + "/train")
        page.wait_for_selector("#runs-table")
        shot(page, "train")
        page.goto(url + f"/runs/compare?a={RUNS}/lora-lr1e-3&b={RUNS}/lora-lr3e-4")
        shot(page, "compare-runs")

        evaluate(page, url, "eval-lr1e-3", ["lora-lr1e-3"], few_shot=True)
        page.wait_for_timeout(1500)
        shot(page, "report")
        evaluate(page, url, "eval-lr3e-4", ["lora-lr3e-4"], few_shot=False)
        page.goto(url + f"/reports/compare?a={RUNS}/eval-lr1e-3&b={RUNS}/eval-lr3e-4")
        page.wait_for_timeout(1500)
        shot(page, "compare-reports")

        page.goto(url + f"/chat?run={RUNS}/lora-lr1e-3")
        page.fill("#max_tokens", "120")
        page.fill("#prompt", QUESTION)
        page.click("#send")
        expect(page.locator(".msg.assistant .meta").last).to_contain_text("finish", timeout=300_000)
        page.select_option("#guardrails", "examples/guardrails/sparql.yaml")
        page.fill("#prompt", "Which venue did the person Jiawei Han publish in most?\nEntities: <https://dblp.org/pid/h/JiaweiHan>")
        page.click("#send")
        expect(page.locator(".msg.assistant .meta").last).to_contain_text("finish", timeout=300_000)
        page.fill("#prompt", "Hi! Can you tell me a joke?")
        page.select_option("#source", "model:smollm2-135m-instruct")
        page.select_option("#guardrails", "")
        page.click("#send")
        expect(page.locator(".msg.assistant .meta").last).to_contain_text("finish", timeout=300_000)
        shot(page, "chat")
        browser.close()


if __name__ == "__main__":
    main()
