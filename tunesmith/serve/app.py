"""The OpenAI-compatible HTTP API: FastAPI routes over the model pool and the batching engine.

/v1/models, /v1/chat/completions, /v1/completions (plain and SSE streaming ending in `data: [DONE]`), /health,
/metrics (Prometheus text). Errors keep OpenAI's shape ({"error": {"message", "type", "param", "code"}}) and
status codes: 4xx for requests that would fail again (the openai client retries 408/409/429/5xx only).
"""

from __future__ import annotations

import asyncio
import hmac
import json
import secrets
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from tunesmith.data.iris import compact, compact_messages, expand
from tunesmith.generate import BASE_ADAPTER, RowRequest, encode_chat
from tunesmith.serve.config import ServeConfig
from tunesmith.serve.engine import Engine, Job, QueueFull, run_job
from tunesmith.serve.models import Entry, ModelPool
from tunesmith.serve.schemas import ChatRequest, CompletionRequest


class ApiError(Exception):
    def __init__(self, status: int, message: str, type_: str = "invalid_request_error", code: str | None = None,
                 param: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.code, self.param, self.headers = status, message, type_, code, param, headers

    def response(self) -> JSONResponse:
        return JSONResponse({"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}},
                            status_code=self.status, headers=self.headers)


class Metrics:
    """Prometheus metrics in the app's own registry (several apps in one process never collide)."""

    def __init__(self):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = r = CollectorRegistry()
        self.requests = Counter("tunesmith_requests", "HTTP API requests", ["endpoint", "model", "status"], registry=r)
        self.tokens = Counter("tunesmith_tokens", "Tokens processed", ["model", "kind"], registry=r)
        self.latency = Histogram("tunesmith_request_seconds", "Request latency", ["endpoint"], registry=r,
                                 buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120, 300))
        self.queue_seconds = Histogram("tunesmith_queue_seconds", "Time a request waited for its batch", registry=r)
        self.batch_size = Histogram("tunesmith_batch_size",
                                    "Rows generating together: when a batch starts and after requests join it", registry=r,
                                    buckets=(1, 2, 4, 8, 16, 32, 64))
        self.rails = Counter("tunesmith_rail_decisions", "Guardrail decisions", ["model", "rail", "action"], registry=r)
        self.queued = Gauge("tunesmith_queue_depth", "Requests waiting for a batch", registry=r)


def create_app(cfg: ServeConfig, pool: ModelPool, keys: list[str]) -> FastAPI:
    metrics = Metrics()
    engine_box: dict[str, Engine] = {}

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        engine_box["engine"] = Engine(cfg.batching.max_batch_size, cfg.batching.wait_ms, cfg.limits.max_queue,
                                      cfg.precision, metrics)
        app.state.engine = engine_box["engine"]
        yield
        # uvicorn has already stopped accepting connections and waited for open requests; finish what is queued.
        await asyncio.get_running_loop().run_in_executor(None, engine_box["engine"].stop, cfg.limits.request_timeout_s)

    app = FastAPI(title="tunesmith", version="1", lifespan=lifespan)
    app.state.pool, app.state.metrics = pool, metrics
    max_bytes = cfg.limits.max_request_bytes

    @app.middleware("http")
    async def limit_and_authenticate(request: Request, call_next):
        length = request.headers.get("content-length")
        if length is not None and (not length.isdigit() or int(length) > max_bytes):
            return ApiError(413, f"request body larger than {max_bytes} bytes", code="request_too_large").response()
        if request.url.path.startswith("/v1/") and keys:
            auth = request.headers.get("authorization", "")
            given = auth[7:].strip() if auth.lower().startswith("bearer ") else ""
            if not any(hmac.compare_digest(given.encode(), k.encode()) for k in keys):
                return ApiError(401, "missing or invalid API key (send Authorization: Bearer KEY)",
                                code="invalid_api_key").response()
        return await call_next(request)

    @app.exception_handler(ApiError)
    async def api_error(_request, exc: ApiError):
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def invalid(_request, exc: RequestValidationError):
        problems = []
        for e in exc.errors():
            where = ".".join(str(p) for p in e["loc"] if p != "body")
            problems.append(f"{where or 'body'}: {e['msg']}")
        first = exc.errors()[0]["loc"] if exc.errors() else ()
        return ApiError(400, "; ".join(problems[:10]), param=".".join(str(p) for p in first if p != "body") or None).response()

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request, exc: StarletteHTTPException):
        return ApiError(exc.status_code, str(exc.detail), code="not_found" if exc.status_code == 404 else None).response()

    @app.exception_handler(Exception)
    async def crashed(_request, exc: Exception):
        return ApiError(500, f"internal error: {type(exc).__name__}", type_="server_error").response()

    # ---- info ----
    @app.get("/health")
    async def health():
        engine = engine_box.get("engine")
        return {"status": "ok", "models": list(pool.entries), "queued": engine.queued if engine else 0,
                "generating": engine.busy if engine else 0}

    @app.get("/metrics")
    async def prometheus():
        from prometheus_client import generate_latest

        metrics.queued.set(engine_box["engine"].queued if "engine" in engine_box else 0)
        return PlainTextResponse(generate_latest(metrics.registry).decode(), media_type="text/plain; version=0.0.4")

    @app.get("/v1/models")
    async def list_models():
        return {"object": "list", "data": [{"id": e.id, "object": "model", "created": e.created, "owned_by": "tunesmith"}
                                           for e in pool.entries.values()]}

    @app.get("/v1/models/{model_id}")
    async def get_model(model_id: str):
        entry = _entry(model_id)
        return {"id": entry.id, "object": "model", "created": entry.created, "owned_by": "tunesmith"}

    # ---- generation ----
    def _entry(name: str) -> Entry:
        entry = pool.get(name)
        if entry is None:
            raise ApiError(404, f"model {name!r} not served here; GET /v1/models lists the ones that are",
                           code="model_not_found", param="model")
        return entry

    def _row(entry: Entry, prompt_ids: list[int], body, constraint) -> RowRequest:
        limit = body.token_limit or cfg.limits.default_max_tokens
        if limit > cfg.limits.max_tokens:
            raise ApiError(400, f"max_tokens {limit} > this server's limit {cfg.limits.max_tokens}", param="max_tokens")
        if len(prompt_ids) > cfg.limits.max_prompt_tokens:
            raise ApiError(400, f"the prompt has {len(prompt_ids)} tokens; this server takes at most "
                                f"{cfg.limits.max_prompt_tokens}", code="context_length_exceeded", param="messages")
        if len(prompt_ids) + limit > entry.group.max_positions:
            raise ApiError(400, f"prompt ({len(prompt_ids)} tokens) + max_tokens ({limit}) exceeds the model's context "
                                f"of {entry.group.max_positions}", code="context_length_exceeded", param="max_tokens")
        adapter = entry.adapter or (BASE_ADAPTER if hasattr(entry.group.model, "peft_config") else None)
        seed = body.seed if body.seed is not None else secrets.randbits(31)
        return RowRequest(prompt_ids, max_new_tokens=limit, temperature=body.temperature, top_p=body.top_p, seed=seed,
                          stop=body.stops, adapter=adapter, constraint=constraint)

    def _constraint(entry: Entry, body):
        fmt = getattr(body, "response_format", None)
        if fmt is not None and fmt.type != "text":
            from tunesmith.guardrails.config import StructuredOutput
            from tunesmith.guardrails.structured import GrammarConstraint, grammar_of, ll_tokenizer

            schema = fmt.json_schema.schema_ if fmt.type == "json_schema" and fmt.json_schema else {"type": "object"}
            try:
                grammar = grammar_of(StructuredOutput(json_schema=schema))
                return GrammarConstraint(ll_tokenizer(entry.group.tokenizer, entry.group.model.config.vocab_size), grammar)
            except Exception as e:
                raise ApiError(400, f"response_format: the JSON schema cannot be used: {e}", param="response_format") from None
        if entry.guard is not None and entry.guard.constraint is not None:
            return entry.guard.constraint()
        return None

    async def _generate(request: Request, endpoint: str, entry: Entry, messages: list[dict] | None, prompt: str | None,
                        body) -> JSONResponse | StreamingResponse:
        started = time.perf_counter()
        guard = entry.guard
        guarded = None
        rid = ("chatcmpl-" if endpoint == "chat" else "cmpl-") + uuid.uuid4().hex[:24]
        created = int(time.time())
        if guard is not None:
            conversation = messages if messages is not None else [{"role": "user", "content": prompt or ""}]
            guarded = guard.check_input(conversation)
            _audit(entry, guarded.decisions, rid)
            if guarded.blocked:
                metrics.requests.labels(endpoint, entry.id, "refused").inc()
                return _reply(endpoint, rid, created, entry.id, body, guard.cfg.refusal, "content_filter", 0, 0)
            if messages is not None:
                messages = guarded.messages
            else:
                prompt = guarded.messages[0]["content"]
        tokenizer, prefixes = entry.group.tokenizer, entry.iri_prefixes  # IRIs as the run read and wrote them
        if messages is not None:
            messages = compact_messages(messages, prefixes)
        prompt_ids = (encode_chat(tokenizer, messages) if messages is not None
                      else tokenizer(compact(prompt or "", prefixes), add_special_tokens=False)["input_ids"])
        row = _row(entry, prompt_ids, body, _constraint(entry, body))
        loop = asyncio.get_running_loop()
        job = Job(entry.group, row, loop, asyncio.Queue())
        # streamed as it is written, unless the whole answer is needed first (output rails, IRIs to expand)
        stream_live = body.stream and not (guard is not None and guard.buffers_output) and not prefixes
        if stream_live:
            row.on_text = lambda piece: job.post("text", piece)
        engine: Engine = engine_box["engine"]
        timeout = cfg.limits.request_timeout_s

        def finish(result) -> tuple[str, str, bool]:
            text, reason = expand(result.text, prefixes), result.finish_reason
            if reason == "cancelled":
                reason = "length"
            if guard is not None:
                checked = guard.check_output(text, guarded, reason)
                _audit(entry, checked.decisions, rid)
                text = checked.text
                if checked.blocked:
                    reason = "content_filter"
            metrics.tokens.labels(entry.id, "prompt").inc(result.prompt_tokens)
            metrics.tokens.labels(entry.id, "completion").inc(result.completion_tokens)
            metrics.latency.labels(endpoint).observe(time.perf_counter() - started)
            metrics.requests.labels(endpoint, entry.id, "ok").inc()
            return text, reason, text != result.text

        if not body.stream:
            try:
                result = await run_job(engine, job, timeout)
            except QueueFull as e:
                metrics.requests.labels(endpoint, entry.id, "busy").inc()
                raise ApiError(429, f"server busy: {e}", type_="rate_limit_error", headers={"Retry-After": "1"}) from None
            except asyncio.TimeoutError:
                metrics.requests.labels(endpoint, entry.id, "timeout").inc()
                raise ApiError(504, f"generation took longer than {timeout:g} s", type_="timeout") from None
            text, reason, _ = finish(result)
            return _reply(endpoint, rid, created, entry.id, body, text, reason, result.prompt_tokens,
                          result.completion_tokens)

        try:
            engine.submit(job)
        except QueueFull as e:
            metrics.requests.labels(endpoint, entry.id, "busy").inc()
            raise ApiError(429, f"server busy: {e}", type_="rate_limit_error", headers={"Retry-After": "1"}) from None

        async def events() -> AsyncIterator[str]:
            deadline = time.perf_counter() + timeout
            try:
                if endpoint == "chat":
                    yield _sse(_chunk(endpoint, rid, created, entry.id, {"role": "assistant", "content": ""}, None))
                while True:
                    try:
                        kind, value = await asyncio.wait_for(job.events.get(), max(0.0, deadline - time.perf_counter()))
                    except asyncio.TimeoutError:
                        job.cancel.set()
                        yield _sse({"error": {"message": f"generation took longer than {timeout:g} s", "type": "timeout",
                                              "param": None, "code": None}})
                        return
                    if kind == "text":
                        yield _sse(_chunk(endpoint, rid, created, entry.id, _delta(endpoint, value), None))
                    elif kind == "error":
                        yield _sse({"error": {"message": f"internal error: {type(value).__name__}", "type": "server_error",
                                              "param": None, "code": None}})
                        return
                    else:
                        text, reason, _ = finish(value)
                        if not stream_live and text:
                            yield _sse(_chunk(endpoint, rid, created, entry.id, _delta(endpoint, text), None))
                        yield _sse(_chunk(endpoint, rid, created, entry.id, _delta(endpoint, None), reason))
                        if body.stream_options and body.stream_options.include_usage:
                            usage = _usage(value.prompt_tokens, value.completion_tokens)
                            yield _sse({"id": rid, "object": _object(endpoint, True), "created": created,
                                        "model": entry.id, "choices": [], "usage": usage})
                        yield "data: [DONE]\n\n"
                        return
            finally:
                job.cancel.set()  # the client went away (or we are done): stop generating for it

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    def _audit(entry: Entry, decisions, rid: str) -> None:
        if entry.guard is None:
            return
        entry.guard.audit.write(decisions, model=entry.id, request=rid)
        for d in decisions:
            metrics.rails.labels(entry.id, d.rail, d.action).inc()

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatRequest, request: Request):
        entry = _entry(body.model)
        messages = [{"role": "system" if m.role == "developer" else m.role, "content": m.text()} for m in body.messages]
        return await _generate(request, "chat", entry, messages, None, body)

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request):
        entry = _entry(body.model)
        return await _generate(request, "completion", entry, None, body.text, body)

    return app


def _object(endpoint: str, chunk: bool) -> str:
    if endpoint == "chat":
        return "chat.completion.chunk" if chunk else "chat.completion"
    return "text_completion"


def _usage(prompt: int, completion: int) -> dict:
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _delta(endpoint: str, text: str | None) -> dict | str:
    if endpoint == "chat":
        return {} if text is None else {"content": text}
    return text or ""


def _chunk(endpoint: str, rid: str, created: int, model: str, delta, reason: str | None) -> dict:
    choice = ({"index": 0, "delta": delta, "finish_reason": reason, "logprobs": None} if endpoint == "chat"
              else {"index": 0, "text": delta, "finish_reason": reason, "logprobs": None})
    return {"id": rid, "object": _object(endpoint, True), "created": created, "model": model, "choices": [choice]}


def _sse(payload: dict) -> str:
    return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"


def _reply(endpoint: str, rid: str, created: int, model: str, body, text: str, reason: str, prompt: int,
           completion: int) -> JSONResponse | StreamingResponse:
    if body.stream:  # a refusal, streamed like an answer
        async def events():
            if endpoint == "chat":
                yield _sse(_chunk(endpoint, rid, created, model, {"role": "assistant", "content": ""}, None))
            yield _sse(_chunk(endpoint, rid, created, model, _delta(endpoint, text), None))
            yield _sse(_chunk(endpoint, rid, created, model, _delta(endpoint, None), reason))
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")
    if endpoint == "chat":
        choice = {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": reason, "logprobs": None}
    else:
        choice = {"index": 0, "text": text, "finish_reason": reason, "logprobs": None}
    return JSONResponse({"id": rid, "object": _object(endpoint, False), "created": created, "model": model,
                         "choices": [choice], "usage": _usage(prompt, completion)})
