"""The chat playground's models, each served by `tunesmith serve`'s own app.

Choosing a model (the base, or a run's adapter) with optional guardrails loads it into a `ModelPool` behind
`tunesmith.serve.app.create_app`, mounted at /chat/api/<slot>/v1/...: the browser then talks the OpenAI chat API
(streamed), through the serve stack's batching engine, limits, guardrails and error shapes. Nothing of generation
or of the rails is reimplemented here. The `chat_models` most recently used stay loaded.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections import OrderedDict
from contextlib import AsyncExitStack
from dataclasses import dataclass

from starlette.concurrency import run_in_threadpool


@dataclass
class Slot:
    key: str
    model_id: str  # the `model` the browser sends in its requests
    label: str
    app: object
    stack: AsyncExitStack


class ChatSlots:
    """An ASGI app: /<slot>/v1/... goes to that slot's serve app."""

    def __init__(self, capacity: int = 2, device: str = "auto", precision: str = "auto"):
        self.capacity, self.device, self.precision = capacity, device, precision
        self.slots: OrderedDict[str, Slot] = OrderedDict()
        self._lock = asyncio.Lock()

    @staticmethod
    def key_of(run: str | None, model: str | None, guardrails: str | None) -> str:
        return hashlib.sha256(json.dumps([run, model, guardrails]).encode()).hexdigest()[:16]

    async def open(self, *, run: str | None = None, model: str | None = None, guardrails: str | None = None,
                   label: str = "") -> Slot:
        """The slot serving this model (loaded now if it is not loaded yet)."""
        from tunesmith.serve.app import create_app
        from tunesmith.serve.config import ServeConfig, ServedModel
        from tunesmith.serve.models import ModelPool

        key = self.key_of(run, model, guardrails)
        async with self._lock:
            if key in self.slots:
                self.slots.move_to_end(key)
                return self.slots[key]
            served = ServedModel(name="playground", run=run, model=model, guardrails=guardrails)
            cfg = ServeConfig(models=[served], device=self.device, precision=self.precision, no_auth=True)
            pool = await run_in_threadpool(ModelPool, cfg)
            app = create_app(cfg, pool, keys=[])
            stack = AsyncExitStack()
            await stack.enter_async_context(app.router.lifespan_context(app))  # starts the serve app's engine
            self.slots[key] = slot = Slot(key, served.id, label, app, stack)
            while len(self.slots) > self.capacity:
                _, oldest = self.slots.popitem(last=False)
                await oldest.stack.aclose()
            return slot

    async def close(self) -> None:
        async with self._lock:
            while self.slots:
                _, slot = self.slots.popitem(last=False)
                await slot.stack.aclose()

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return
        root = scope.get("root_path", "")
        rest = scope["path"][len(root):] if scope["path"].startswith(root) else scope["path"]
        key, _, _ = rest.lstrip("/").partition("/")
        slot = self.slots.get(key)
        if slot is None:
            body = json.dumps({"error": {"message": "this model is not loaded (any more): choose it again",
                                         "type": "invalid_request_error", "param": None, "code": "model_not_loaded"}})
            await send({"type": "http.response.start", "status": 404,
                        "headers": [(b"content-type", b"application/json")]})
            await send({"type": "http.response.body", "body": body.encode()})
            return
        self.slots.move_to_end(key)
        await slot.app(dict(scope, root_path=f"{root}/{key}"), receive, send)
