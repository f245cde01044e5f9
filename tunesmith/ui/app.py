"""The web UI: FastAPI pages (Jinja templates, htmx, uPlot; all assets vendored, nothing from a CDN) over the ordinary
commands and folders.

- Data: `tunesmith data show`'s own functions render the rows as the trainer sees them; prep manifests beside them.
- Train: `tunesmith train` in a subprocess writing an ordinary run folder; run pages tail that folder (metrics.jsonl,
  train_summary.json, checkpoints) over server-sent events, so runs started in a terminal show up too.
- Evaluate: `tunesmith eval` in a subprocess; reports are the ordinary report folders, two can be compared.
- Chat: `tunesmith serve`'s app per chosen model (tunesmith/ui/chat.py).

Safety: every path in a request goes through `Workspace.resolve`; off loopback every request needs the access
token; requests that change something must come from the UI's own pages (Origin / Sec-Fetch-Site); the Host header
must name a loopback address when the UI listens on one (no DNS rebinding); malformed requests get a 4xx.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import re
import tempfile
import time
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlencode, urlsplit

import yaml
from fastapi import FastAPI, Form, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from tunesmith.records import DataError, TunesmithError
from tunesmith.serve.config import is_loopback
from tunesmith.ui.chat import ChatSlots
from tunesmith.ui.config import UiConfig
from tunesmith.ui.jobs import Busy, Jobs, exit_code_in_log, last_error, tail
from tunesmith.ui.workspace import (
    EVAL_LAUNCH, TRAIN_LAUNCH, UI_FILE_PREFIX, Refused, Workspace, MetricsTail, manifest_chain, read_metrics_rows, run_state,
)

HERE = Path(__file__).parent
COOKIE = "tunesmith_ui"
RUN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
REPORT_FILES = re.compile(r"report\.(html|md|json)|plots/[A-Za-z0-9_-]+\.png")
TRAIN_LOG, EVAL_LOG = f"{UI_FILE_PREFIX}train.log", f"{UI_FILE_PREFIX}eval.log"
STARTER_TRAIN_YAML = """\
# A run config, as `tunesmith train` reads it (README: Configuration). The fields above the box override it.
model:
  name: smollm2-135m-instruct
data:
  train: data/train.jsonl
  format: auto
  max_seq_len: 512
method:
  name: lora
train:
  epochs: 1
  batch_size: 2
  lr: 1.0e-3
  log_every: 5
  save_every: 50
"""
# The form's fields: (dotted setting, label, input type). Empty fields leave the YAML's value.
TRAIN_FIELDS = [
    ("model.name", "Base model", "text"), ("data.train", "Training data", "data"), ("data.valid", "Validation data", "data"),
    ("data.max_seq_len", "Max sequence length", "number"), ("train.epochs", "Epochs", "number"),
    ("train.max_steps", "Max steps", "number"), ("train.lr", "Learning rate", "text"),
    ("train.batch_size", "Batch size", "number"), ("train.grad_accum", "Gradient accumulation", "number"),
    ("train.log_every", "Log every (steps)", "number"), ("train.save_every", "Checkpoint every (steps)", "number"),
]


class UiError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


def create_app(cfg: UiConfig, token: str | None = None) -> FastAPI:
    """The UI app. `token`: required on every request (cookie, ?token= once, or a Bearer header) when given."""
    workspace = Workspace.from_config(cfg)
    jobs = Jobs(cfg.max_jobs)
    chats = ChatSlots(cfg.chat_models, cfg.device, cfg.precision)
    templates = Jinja2Templates(directory=str(HERE / "templates"))
    templates.env.filters.update(duration=duration, num=num, metric=_metric_name)
    loopback_only = is_loopback(cfg.host)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        app.state.stopping = True
        await asyncio.get_running_loop().run_in_executor(None, jobs.shutdown)
        await chats.close()

    app = FastAPI(title="tunesmith ui", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.workspace, app.state.jobs, app.state.chats, app.state.stopping = workspace, jobs, chats, False

    # ---- the gate: size, host, token, origin ----
    @app.middleware("http")
    async def gate(request: Request, call_next):
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > cfg.max_request_bytes):
            return _plain(413, f"request body larger than {cfg.max_request_bytes} bytes")
        host = urlsplit("//" + request.headers.get("host", "")).hostname or ""
        if loopback_only and not is_loopback(host):
            return _plain(400, f"unexpected Host {host!r}: this UI answers on a loopback address only")
        if token is not None:
            given = request.cookies.get(COOKIE) or _bearer(request) or ""
            from_query = request.query_params.get("token")
            if from_query and hmac.compare_digest(from_query.encode(), token.encode()):
                rest = [(k, v) for k, v in request.query_params.multi_items() if k != "token"]
                response = RedirectResponse(request.url.path + ("?" + urlencode(rest) if rest else ""), status_code=303)
                response.set_cookie(COOKIE, token, httponly=True, samesite="strict")
                return response
            if not hmac.compare_digest(given.encode(), token.encode()):
                return _plain(401, "this UI needs its access token: open the address that `tunesmith ui` printed "
                                   "(it ends in ?token=...)")
        if request.method not in ("GET", "HEAD", "OPTIONS"):
            origin = request.headers.get("origin")
            if origin and urlsplit(origin).netloc != request.headers.get("host"):
                return _plain(403, "cross-site request refused")
            if request.headers.get("sec-fetch-site") == "cross-site":
                return _plain(403, "cross-site request refused")
        response = await call_next(request)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("X-Frame-Options", "SAMEORIGIN")
        return response

    # ---- errors: a page, a fragment (htmx) or JSON, always with the right 4xx/5xx ----
    def problem(request: Request, status: int, message: str):
        if request.url.path.startswith(("/chat/", "/api/")) or "application/json" in request.headers.get("accept", ""):
            return JSONResponse({"error": {"message": message}}, status_code=status)
        if request.headers.get("hx-request"):
            return templates.TemplateResponse(request, "_error.html", {"message": message}, status_code=status)
        return templates.TemplateResponse(request, "error.html", {"message": message, "status": status, "page": ""},
                                          status_code=status)

    @app.exception_handler(UiError)
    async def ui_error(request: Request, exc: UiError):
        return problem(request, exc.status, exc.message)

    @app.exception_handler(Refused)
    async def refused(request: Request, exc: Refused):
        return problem(request, exc.status, str(exc))

    @app.exception_handler(Busy)
    async def busy(request: Request, exc: Busy):
        return problem(request, 409, str(exc))

    @app.exception_handler(TunesmithError)
    async def user_error(request: Request, exc: TunesmithError):
        return problem(request, 422, str(exc))

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        parts = [f"{'.'.join(str(p) for p in e['loc'] if p not in ('body', 'query'))}: {e['msg']}" for e in exc.errors()]
        return problem(request, 400, "malformed request: " + "; ".join(parts[:10]))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        return problem(request, exc.status_code, str(exc.detail))

    @app.exception_handler(Exception)
    async def crashed(request: Request, exc: Exception):
        return problem(request, 500, f"internal error: {type(exc).__name__}: {exc}")

    def page(request: Request, template: str, **context) -> HTMLResponse:
        return templates.TemplateResponse(request, template, {"page": template.split(".")[0], "ws": workspace, **context})

    # ---- overview ----
    @app.get("/")
    async def home():
        return RedirectResponse("/train", status_code=303)

    @app.get("/health")
    async def health():
        return {"status": "ok", "jobs": len(jobs.running()), "chat_models": len(chats.slots)}

    # ---- data ----
    @app.get("/data", response_class=HTMLResponse)
    def data_page(request: Request, config: str = "", input: str = "",
                  n: Annotated[int, Query(ge=1, le=200)] = 5, overrides: str = ""):
        context: dict[str, Any] = {"configs": workspace.configs("train"), "runs": workspace.run_dirs(),
                                   "data_files": workspace.data_files(), "config": config, "input": input, "n": n,
                                   "overrides": overrides, "view": None}
        if config or input:
            context["view"] = data_view(config, input, n, overrides)
        return page(request, "data.html", **context)

    def data_view(config: str, input: str, n: int, overrides: str) -> dict[str, Any]:
        from tunesmith.config import load_config
        from tunesmith.data.show import inspect, length_bins, token_pieces

        config_path = workspace.resolve(config) if config else None
        data_path = workspace.show(workspace.resolve(input)) if input else None
        try:
            cfg = load_config(config_path, _override_lines(overrides), options={"data.train": data_path})
        except TunesmithError as e:
            return {"error": str(e)}
        original = cfg.data.on_bad_rows
        cfg = cfg.model_copy(deep=True)
        cfg.data.on_bad_rows = "skip"  # every bad row listed with its file:line, not only the first error
        problems = workspace.check_config_paths(cfg)
        if problems:
            raise Refused("\n".join(problems))
        try:
            tokenizer, data = inspect(cfg)
        except DataError as e:
            return {"error": str(e), "issues": [str(i) for i in e.issues]}
        lengths = [len(t) for t in data.tokenized]
        bins = length_bins(lengths)
        examples = [{"source": str(t.source), "tokens": len(t), "trained": t.n_trained, "truncated": t.truncated,
                     "pieces": token_pieces(tokenizer, t)} for t in data.tokenized[:n]]
        data_file = workspace.resolve(cfg.data.train)
        return {"summary": data.summary(), "bins": bins, "top": max(c for _, _, c in bins), "examples": examples,
                "skipped": [str(i) for i in data.skipped], "stops_on_bad_rows": original == "error",
                "data_file": workspace.show(data_file), "cfg": cfg, "manifests": manifest_chain(workspace, data_file)}

    # ---- train ----
    @app.get("/train", response_class=HTMLResponse)
    def train_page(request: Request, config: str = ""):
        return page(request, "train.html", **train_form_context(config), runs_html=None)

    def train_form_context(config: str) -> dict[str, Any]:
        from tunesmith.methods.base import registry

        configs = workspace.configs("train")
        chosen = workspace.resolve(config) if config else (configs[0] if configs else None)
        text = chosen.read_text(encoding="utf-8-sig") if chosen else STARTER_TRAIN_YAML
        doc = yaml.safe_load(text) if text.strip() else {}
        method = ((doc or {}).get("method") or {}).get("name", "lora") if isinstance(doc, dict) else "lora"
        stem = chosen.stem if chosen else "run"
        fields = [(dotted, label, kind, _field_hint(doc if isinstance(doc, dict) else {}, dotted))
                  for dotted, label, kind in TRAIN_FIELDS]
        return {"ws": workspace, "configs": configs, "chosen": workspace.show(chosen) if chosen else "", "yaml_text": text,
                "methods": sorted(registry()), "method": method, "fields": fields,
                "data_files": workspace.data_files(), "runs_dir": workspace.show(workspace.new_runs_dir),
                "default_name": f"{stem}-{time.strftime('%Y%m%d-%H%M%S')}"}

    @app.get("/train/form", response_class=HTMLResponse)
    def train_form(request: Request, config: str = ""):
        return templates.TemplateResponse(request, "_train_form.html", train_form_context(config))

    @app.get("/train/runs", response_class=HTMLResponse)
    def train_runs(request: Request):
        states = [run_state(p, jobs.for_target(p)) for p in workspace.run_dirs()]
        return templates.TemplateResponse(request, "_runs.html", {"states": states, "ws": workspace})

    @app.post("/train/start")
    async def train_start(request: Request, name: Annotated[str, Form(max_length=64)],
                          yaml_text: Annotated[str, Form(max_length=200_000)],
                          method: Annotated[str, Form(max_length=64)] = ""):
        form = await request.form()  # the settings fields, named by their dotted paths (parsed once, cached)
        return await run_in_threadpool(start_training, name, yaml_text, method, form)

    def start_training(name: str, yaml_text: str, method: str, form) -> Response:
        from tunesmith.config import load_config

        if not RUN_NAME.fullmatch(name):
            raise UiError(400, "run name: letters, digits, '.', '_' and '-' only (at most 64), starting with a letter or digit")
        run_dir = workspace.new_runs_dir / name
        if (run_dir / "config.yaml").exists() or (jobs.for_target(run_dir) and jobs.for_target(run_dir).running):
            raise UiError(409, f"{workspace.show(run_dir)} holds a run already: choose another name, or open it and resume it")
        overrides = _train_overrides(form, yaml_text, method)
        overrides.append(f"output.dir={workspace.show(run_dir)}")
        cfg = _validated(lambda path: load_config(path, overrides), yaml_text)
        problems = workspace.check_config_paths(cfg)
        if problems:
            raise UiError(403, "\n".join(problems))
        from tunesmith.files import atomic_write_text

        launch = run_dir / TRAIN_LAUNCH
        atomic_write_text(launch, yaml_text)
        args = ["train", workspace.show(launch), *[a for o in overrides for a in ("--set", o)]]
        jobs.start("train", run_dir, args, workspace.project, run_dir / TRAIN_LOG)
        return _redirect(f"/run?{urlencode({'run': workspace.show(run_dir)})}")

    # ---- one run ----
    @app.get("/run", response_class=HTMLResponse)
    def run_page(request: Request, run: str):
        path = workspace.run_dir(run)
        state = run_state(path, jobs.for_target(path))
        _note_failed_from_log(state, path)
        return page(request, "run.html", state=state, run=workspace.show(path), name=path.name,
                    config_text=_text_or_empty(path / "config.yaml") or _text_or_empty(path / TRAIN_LAUNCH),
                    job=jobs.for_target(path), log_text=tail(path / TRAIN_LOG, 400),
                    data_report=_json_or_none(path / "data_report.json"))

    @app.get("/run/events")
    async def run_events(request: Request, run: str):
        path = workspace.run_dir(run)

        async def events():
            last_state, last_log, sent_at = None, None, 0.0
            metrics = MetricsTail(path / "metrics.jsonl")
            while not app.state.stopping:
                rows, restarted = metrics.read()
                if restarted:
                    yield _sse("reset", {})
                if rows:
                    yield _sse("metrics", rows)
                job = jobs.for_target(path)
                state = run_state(path, job)
                _note_failed_from_log(state, path)
                payload = state.to_json()
                if payload != last_state or time.monotonic() - sent_at > 10:
                    yield _sse("state", payload)
                    last_state, sent_at = payload, time.monotonic()
                log = tail(path / TRAIN_LOG, 400)
                if log != last_log:
                    yield _sse("log", {"text": log})
                    last_log = log
                if await request.is_disconnected():
                    return
                await asyncio.sleep(0.5 if state.status.startswith("running") else 2.0)

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    @app.post("/run/stop", response_class=HTMLResponse)
    def run_stop(request: Request, run: Annotated[str, Form(max_length=1024)]):
        path = workspace.run_dir(run)
        job = jobs.for_target(path)
        if job is None or not job.running:
            raise UiError(409, f"{path.name} is not running from this UI (a run started in a terminal stops with Ctrl-C there)")
        job.stop()
        return templates.TemplateResponse(request, "_notice.html", {
            "message": "Stopping: the current step finishes, then the process exits. Resume continues from the last checkpoint."})

    @app.post("/run/resume")
    def run_resume(request: Request, run: Annotated[str, Form(max_length=1024)]):
        from tunesmith.config import load_config

        path = workspace.run_dir(run)
        state = run_state(path, jobs.for_target(path))
        if state.status in ("running", "running elsewhere"):
            raise UiError(409, f"{path.name} is {state.status}")
        if state.has_final:
            raise UiError(409, f"{path.name} finished already (its final/ folder exists)")
        if not state.checkpoints:
            raise UiError(409, f"{path.name} has no checkpoint to resume from (set train.save_every for the next run)")
        cfg = load_config(path / "config.yaml")
        if workspace.resolve(cfg.output.dir, must_exist=False) != path:
            raise UiError(409, f"this run's output.dir ({cfg.output.dir}) does not lead back to it from the project "
                               f"folder; resume it in a terminal: tunesmith train {path / 'config.yaml'} --resume")
        problems = workspace.check_config_paths(cfg)
        if problems:
            raise UiError(403, "\n".join(problems))
        jobs.start("train", path, ["train", workspace.show(path / "config.yaml"), "--resume"], workspace.project,
                   path / TRAIN_LOG)
        return _redirect(f"/run?{urlencode({'run': workspace.show(path)})}")

    @app.get("/runs/compare", response_class=HTMLResponse)
    def runs_compare(request: Request, a: str, b: str):
        paths = [workspace.run_dir(a), workspace.run_dir(b)]
        sides = []
        for p in paths:
            rows = read_metrics_rows(p / "metrics.jsonl")
            sides.append({"run": workspace.show(p), "name": p.name, "state": run_state(p, jobs.for_target(p)),
                          "rows": rows, "config": _flatten(_yaml_or_none(p / "config.yaml") or {})})
        keys = sorted(set(sides[0]["config"]) | set(sides[1]["config"]))
        differ = [(k, sides[0]["config"].get(k), sides[1]["config"].get(k)) for k in keys
                  if sides[0]["config"].get(k) != sides[1]["config"].get(k)]
        return page(request, "compare_runs.html", sides=sides, differ=differ)

    # ---- evaluate ----
    @app.get("/eval", response_class=HTMLResponse)
    def eval_page(request: Request, config: str = "", run: str = ""):
        return page(request, "eval.html", **eval_form_context(config, run), reports=report_rows())

    def eval_form_context(config: str, run: str = "") -> dict[str, Any]:
        configs = workspace.configs("eval")
        chosen = workspace.resolve(config) if config else (configs[0] if configs else None)
        finished = [p for p in workspace.run_dirs() if (p / "final").is_dir()]
        preselect = workspace.show(workspace.run_dir(run)) if run else ""
        return {"ws": workspace, "configs": configs, "chosen": workspace.show(chosen) if chosen else "",
                "yaml_text": chosen.read_text(encoding="utf-8-sig") if chosen else "",
                "finished_runs": [workspace.show(p) for p in finished], "preselect": preselect,
                "runs_dir": workspace.show(workspace.new_runs_dir),
                "default_name": f"eval-{time.strftime('%Y%m%d-%H%M%S')}"}

    @app.get("/eval/form", response_class=HTMLResponse)
    def eval_form(request: Request, config: str = ""):
        return templates.TemplateResponse(request, "_eval_form.html", eval_form_context(config))

    def report_rows() -> list[dict[str, Any]]:
        rows = []
        for p in workspace.report_dirs():
            job = jobs.for_target(p)
            report = _json_or_none(p / "report.json")
            status = "running" if job and job.running else "finished" if report else _failed_or_stopped(p / EVAL_LOG, job)
            winner = (report or {}).get("comparisons", {}).get("winner")
            rows.append({"path": workspace.show(p), "name": p.name, "status": status, "winner": winner,
                         "title": (report or {}).get("title", ""), "n_test": (report or {}).get("n_test"),
                         "headline": (report or {}).get("headline")})
        return rows

    @app.get("/eval/reports", response_class=HTMLResponse)
    def eval_reports(request: Request):
        return templates.TemplateResponse(request, "_reports.html", {"reports": report_rows()})

    @app.post("/eval/start")
    def eval_start(request: Request, name: Annotated[str, Form(max_length=64)],
                   yaml_text: Annotated[str, Form(max_length=200_000)],
                   n: Annotated[int | None, Form(ge=1, le=100_000)] = None,
                   no_forgetting: Annotated[bool, Form()] = False,
                   runs: Annotated[list[str] | None, Form()] = None):
        from tunesmith.config import read_config
        from tunesmith.eval.config import EvalConfig

        if not RUN_NAME.fullmatch(name):
            raise UiError(400, "report name: letters, digits, '.', '_' and '-' only (at most 64)")
        out = workspace.new_runs_dir / name
        if (out / "report.json").exists() or (jobs.for_target(out) and jobs.for_target(out).running):
            raise UiError(409, f"{workspace.show(out)} holds a report already: choose another name")
        yaml_text = _with_tuned_variants(yaml_text, [workspace.show(workspace.run_dir(r)) for r in runs or []])
        args_options = ["-o", workspace.show(out)] + (["-n", str(n)] if n else []) + (["--no-forgetting"] if no_forgetting else [])
        cfg = _validated(lambda path: read_config(EvalConfig, path, options={
            "report.dir": workspace.show(out), "data.n": n, "forgetting.enabled": False if no_forgetting else None}), yaml_text)
        problems = workspace.check_config_paths(cfg)
        if problems:
            raise UiError(403, "\n".join(problems))
        from tunesmith.files import atomic_write_text

        launch = out / EVAL_LAUNCH
        atomic_write_text(launch, yaml_text)
        jobs.start("eval", out, ["eval", workspace.show(launch), *args_options], workspace.project, out / EVAL_LOG)
        return _redirect(f"/report?{urlencode({'report': workspace.show(out)})}")

    @app.get("/report", response_class=HTMLResponse)
    def report_page(request: Request, report: str):
        path = workspace.report_dir(report)
        data = _json_or_none(path / "report.json")
        job = jobs.for_target(path)
        verdict_lines: list[str] = []
        if data is not None and not (job and job.running):
            from tunesmith.eval.report import verdict
            from tunesmith.eval.results import EvalReport

            verdict_lines = [line.replace("**", "") for line in verdict(EvalReport.model_validate(data))]
        status = "running" if job and job.running else "finished" if data else _failed_or_stopped(path / EVAL_LOG, job)
        return page(request, "report.html", report=workspace.show(path), name=path.name, data=data, status=status,
                    verdict=verdict_lines, log_text=tail(path / EVAL_LOG, 200), error=last_error(path / EVAL_LOG),
                    has_html=(path / "report.html").is_file())

    @app.get("/report/status", response_class=HTMLResponse)
    def report_status(request: Request, report: str):
        path = workspace.report_dir(report)
        job = jobs.for_target(path)
        if job is None or not job.running:
            return Response(status_code=200, headers={"HX-Refresh": "true"})
        return templates.TemplateResponse(request, "_log.html", {"log_text": tail(path / EVAL_LOG, 200)})

    @app.get("/report/file")
    def report_file(report: str, name: str):
        if not REPORT_FILES.fullmatch(name):
            raise UiError(400, "only report.html, report.md, report.json and plots/*.png are served from a report folder")
        path = workspace.resolve(str(workspace.report_dir(report) / name))
        media = {".html": "text/html", ".md": "text/markdown", ".json": "application/json", ".png": "image/png"}[path.suffix]
        # The report page is our own static HTML: no script may run in it, whatever a prediction contains.
        return FileResponse(path, media_type=media, headers={
            "Content-Security-Policy": "default-src 'none'; img-src data: 'self'; style-src 'unsafe-inline'; sandbox"})

    @app.get("/reports/compare", response_class=HTMLResponse)
    def reports_compare(request: Request, a: str, b: str):
        sides = []
        for given in (a, b):
            path = workspace.report_dir(given)
            data = _json_or_none(path / "report.json")
            if data is None:
                raise UiError(404, f"{given}: no report.json (has the evaluation finished?)")
            sides.append({"report": workspace.show(path), "name": path.name, "data": data,
                          "scores": {v["name"]: v for v in data.get("variants", [])}})
        names = list(dict.fromkeys(n for s in sides for n in s["scores"]))
        same_headline = sides[0]["data"].get("headline") == sides[1]["data"].get("headline")
        return page(request, "compare_reports.html", sides=sides, variants=names, same_headline=same_headline)

    # ---- chat ----
    @app.get("/chat", response_class=HTMLResponse)
    def chat_page(request: Request, run: str = ""):
        from tunesmith.models.loading import DEFAULT_MODEL

        finished = [p for p in workspace.run_dirs() if (p / "final").is_dir()]
        bases: dict[str, None] = {DEFAULT_MODEL: None}
        for p in finished:
            doc = _yaml_or_none(p / "config.yaml")
            name = ((doc or {}).get("model") or {}).get("name") if isinstance(doc, dict) else None
            if isinstance(name, str):
                bases[name] = None
        selected = f"run:{workspace.show(workspace.run_dir(run))}" if run else (
            f"run:{workspace.show(finished[0])}" if finished else f"model:{DEFAULT_MODEL}")
        return page(request, "chat.html", runs=[workspace.show(p) for p in finished], bases=list(bases),
                    guardrails=[workspace.show(p) for p in workspace.configs("guardrails")], selected=selected)

    @app.post("/chat/open")
    async def chat_open(source: Annotated[str, Form(max_length=1100)], guardrails: Annotated[str, Form(max_length=1024)] = ""):
        kind, _, value = source.partition(":")
        rails = str(workspace.resolve(guardrails)) if guardrails else None
        if kind == "run":
            path = workspace.run_dir(value)
            if not (path / "final").is_dir():
                raise UiError(409, f"{path.name} has no trained output yet (final/ is missing)")
            slot = await chats.open(run=str(path), guardrails=rails, label=path.name)
        elif kind == "model" and value:
            problems = workspace.check_model_name(value, "model")
            if problems:
                raise UiError(403, "\n".join(problems))
            slot = await chats.open(model=value, guardrails=rails, label=value)
        else:
            raise UiError(400, "source must be run:<run folder> or model:<model name>")
        return {"url": f"/chat/api/{slot.key}/v1/chat/completions", "model": slot.model_id, "label": slot.label,
                "guardrails": workspace.show(Path(rails)) if rails else None}

    app.mount("/chat/api", chats)
    app.mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")
    return app


# ---- helpers ----

def _plain(status: int, message: str) -> Response:
    return Response(message + "\n", status_code=status, media_type="text/plain")


def _bearer(request: Request) -> str | None:
    auth = request.headers.get("authorization", "")
    return auth[7:].strip() if auth.lower().startswith("bearer ") else None


def _redirect(url: str) -> Response:
    """After a form posted with htmx: the browser goes to `url` (a plain form post gets a 303)."""
    return Response(status_code=200, headers={"HX-Redirect": url})


def _sse(event: str, data: Any) -> str:
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


def _override_lines(text: str) -> list[str]:
    """`--set` overrides typed one a line (`train.lr=1e-4`); blank lines and # comments are skipped."""
    return [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]


def _train_overrides(form, yaml_text: str, method: str) -> list[str]:
    """The form's non-empty fields as `--set` overrides, exactly as they would be typed after `tunesmith train`."""
    overrides = []
    for dotted, _, _ in TRAIN_FIELDS:
        value = form.get(dotted)
        if isinstance(value, str) and value.strip():
            if "\n" in value or len(value) > 1024:
                raise UiError(400, f"{dotted}: one line, at most 1024 characters")
            overrides.append(f"{dotted}={value.strip()}")
    if method:
        try:
            doc = yaml.safe_load(yaml_text) if yaml_text.strip() else {}
        except yaml.YAMLError:
            doc = None  # the config reader reports it, with its line
        current = ((doc or {}).get("method") or {}).get("name") if isinstance(doc, dict) and isinstance(doc.get("method"), dict) else None
        if method != (current or "lora"):
            # Another method starts from its own defaults (the YAML's settings belong to the old one).
            overrides.append(f"method={json.dumps({'name': method})}")
    return overrides


def _field_hint(doc: dict, dotted: str) -> str:
    """What a form field stands for while it is empty: the YAML's value, else the setting's default."""
    from pydantic import BaseModel

    from tunesmith.config import RunConfig

    section, key = dotted.split(".")
    values = doc.get(section) if isinstance(doc.get(section), dict) else {}
    if values.get(key) is not None:
        return f"{values[key]} (YAML)"
    model = RunConfig.model_fields[section].annotation
    field = model.model_fields.get(key) if isinstance(model, type) and issubclass(model, BaseModel) else None
    if field is None or field.is_required():
        return "required" if field is not None else ""
    return "none" if field.default is None else f"{field.default} (default)"


def _validated(read, yaml_text: str):
    """Validate YAML typed into the UI with the config reader every command uses, so the errors are the CLI's; the
    temporary file's name in them reads as `your YAML`."""
    with tempfile.TemporaryDirectory(prefix="tunesmith-ui-") as folder:
        path = Path(folder) / "config.yaml"
        path.write_text(yaml_text, encoding="utf-8")
        try:
            return read(path)
        except TunesmithError as e:
            raise UiError(422, str(e).replace(str(path), "your YAML")) from None


def _with_tuned_variants(yaml_text: str, runs: list[str]) -> str:
    """The eval YAML with a `tuned` variant for each run picked in the form (unless it lists that run already)."""
    if not runs:
        return yaml_text
    try:
        doc = yaml.safe_load(yaml_text) or {}
    except yaml.YAMLError:
        return yaml_text  # the config reader reports the error with its line
    if not isinstance(doc, dict):
        return yaml_text
    if isinstance(doc.get("variants"), list):
        variants = doc["variants"]
    else:  # the YAML leaves them to the eval config's default: keep those, add the runs
        from tunesmith.eval.config import EvalConfig

        variants = [v.model_dump(mode="json") for v in EvalConfig.model_fields["variants"].default_factory()]
    listed = {v.get("run") for v in variants if isinstance(v, dict)}
    doc["variants"] = variants + [{"kind": "tuned", "run": r} for r in runs if r not in listed]
    return yaml.safe_dump(doc, sort_keys=False, allow_unicode=True)


def _failed_or_stopped(log: Path, job) -> str:
    code = job.returncode if job is not None else exit_code_in_log(log)
    if code is None:
        return "running elsewhere" if job is None and log.is_file() and time.time() - log.stat().st_mtime < 60 else "incomplete"
    return "stopped" if code in (130, -2) else "failed"


def _note_failed_from_log(state, path: Path) -> None:
    """A run the UI started before it was restarted: its log's last line says how the command ended."""
    if state.status == "stopped" and exit_code_in_log(path / TRAIN_LOG) not in (None, 0, 130, -2):
        state.status, state.error = "failed", last_error(path / TRAIN_LOG)
    elif state.status == "not started" and exit_code_in_log(path / TRAIN_LOG) not in (None, 0):
        state.status, state.error = "failed", last_error(path / TRAIN_LOG)


def _flatten(doc: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(doc, dict):
        out: dict[str, Any] = {}
        for k, v in doc.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix.rstrip("."): doc}


def _metric_name(name: str) -> str:
    from tunesmith.eval.metrics import display_name

    return display_name(name)


def _text_or_empty(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""


def _json_or_none(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _yaml_or_none(path: Path):
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, yaml.YAMLError):
        return None


def duration(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m {seconds % 60:02d}s"
    return f"{seconds // 3600}h {seconds % 3600 // 60:02d}m"


def num(value: Any, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if value != value:
            return "–"
        return f"{value:,.{digits}f}" if abs(value) < 1e5 else f"{value:,.0f}"
    return str(value)
