"""Teacher LLMs that write (and paraphrase) training data: an OpenAI-compatible endpoint or the local model.

Every reply is cached under the hash of everything that determines it (model, messages, sampling), so
re-running a step — or resuming one that was interrupted — asks the teacher only for what is missing.
The API key is read from the environment at call time and never stored, logged or put in an error.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import httpx
from pydantic import Field
from tenacity import RetryCallState, Retrying, retry_if_exception, stop_after_attempt, wait_random_exponential

from tunesmith.config import Strict
from tunesmith.data.prep.artifacts import sha256_of_text
from tunesmith.records import TunesmithError
from tunesmith.redact import redact, redacting_logger, register_secret

log = redacting_logger("tunesmith.prep.teacher")

Conversation = list[dict[str, str]]


class TeacherConfig(Strict):
    kind: Literal["openai", "local"] = Field("openai", description="openai: any OpenAI-compatible endpoint; local: transformers")
    model: str = Field("smollm2-135m-instruct", description="Model name sent to the endpoint, or the local model or run folder to load")
    base_url: str | None = Field(None, description="Endpoint base URL, e.g. http://localhost:8000/v1 (default: $base_url_env)")
    base_url_env: str = "OPENAI_BASE_URL"
    api_key_env: str = Field("OPENAI_API_KEY", description="Environment variable holding the API key (optional for local servers)")
    temperature: float = Field(0.7, ge=0)
    max_tokens: int = Field(512, ge=1)
    concurrency: int = Field(4, ge=1, description="Requests in flight at once (openai)")
    batch_size: int = Field(8, ge=1, description="Conversations per generate call (local)")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    timeout_s: float = Field(60.0, gt=0)
    max_retries: int = Field(5, ge=0, description="Retries after a rate limit, server error or timeout")
    backoff_initial_s: float = Field(1.0, ge=0)
    backoff_max_s: float = Field(60.0, ge=0)
    cache: str | None = Field(".cache/teacher.sqlite", description="Response cache file (None: no cache)")


@dataclass
class TeacherFailure:
    """A request the teacher could not answer after all retries; the item is rejected with this reason."""

    reason: str


class TeacherUnavailable(TunesmithError):
    pass


class RetryableTeacherError(Exception):
    def __init__(self, message: str, retry_after: float | None = None):
        super().__init__(message)
        self.retry_after = retry_after


class ResponseCache:
    """sqlite file: key (sha256 of the request) → reply text. Safe to share between threads."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False)
        self._db.execute("CREATE TABLE IF NOT EXISTS replies (key TEXT PRIMARY KEY, reply TEXT NOT NULL)")
        self._db.commit()

    def get(self, key: str) -> str | None:
        with self._lock:
            row = self._db.execute("SELECT reply FROM replies WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def put(self, key: str, reply: str) -> None:
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO replies VALUES (?, ?)", (key, reply))
            self._db.commit()

    def close(self) -> None:
        with self._lock:
            self._db.close()


class Teacher:
    """Answers a list of conversations; subclasses implement `_complete_uncached` for the cache misses."""

    def __init__(self, config: TeacherConfig):
        self.config = config
        self.cache = ResponseCache(config.cache) if config.cache else None
        self.calls = 0  # requests actually sent (cache misses), for the manifest
        self.cache_hits = 0

    def identity(self) -> dict:
        return {"kind": self.config.kind, "model": self.config.model}

    def cache_key(self, conversation: Conversation) -> str:
        request = {
            **self.identity(),
            "messages": conversation,
            "temperature": self.config.temperature,
            "max_tokens": self.config.max_tokens,
        }
        return sha256_of_text(json.dumps(request, sort_keys=True, ensure_ascii=False))

    def complete(self, conversations: list[Conversation], on_done: Callable[[int], None] | None = None) -> list[str | TeacherFailure]:
        results: list[str | TeacherFailure | None] = [None] * len(conversations)
        keys = [self.cache_key(c) for c in conversations]
        missing: list[int] = []
        for i, key in enumerate(keys):
            cached = self.cache.get(key) if self.cache else None
            if cached is None:
                missing.append(i)
            else:
                results[i] = cached
                self.cache_hits += 1
        if on_done and len(missing) < len(conversations):
            on_done(len(conversations) - len(missing))
        if missing:
            replies = self._complete_uncached([conversations[i] for i in missing], on_done)
            self.calls += len(missing)
            for i, reply in zip(missing, replies):
                results[i] = reply
                if isinstance(reply, str) and self.cache:
                    self.cache.put(keys[i], reply)
        return results  # type: ignore[return-value]

    def _complete_uncached(self, conversations: list[Conversation], on_done: Callable[[int], None] | None) -> list[str | TeacherFailure]:
        raise NotImplementedError

    def close(self) -> None:
        if self.cache:
            self.cache.close()

    def __enter__(self) -> Teacher:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _wait_for(config: TeacherConfig) -> Callable[[RetryCallState], float]:
    """Exponential backoff with jitter, but never sooner than the server's Retry-After asks."""
    exponential = wait_random_exponential(multiplier=config.backoff_initial_s, max=config.backoff_max_s)

    def wait(state: RetryCallState) -> float:
        backoff = exponential(state)
        error = state.outcome.exception() if state.outcome else None
        if isinstance(error, RetryableTeacherError) and error.retry_after is not None:
            return min(max(backoff, error.retry_after), max(config.backoff_max_s, error.retry_after))
        return backoff

    return wait


def _retry_after_seconds(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    try:
        return float(value) if value is not None else None
    except ValueError:
        return None  # an HTTP-date; the exponential backoff applies instead


class OpenAICompatibleTeacher(Teacher):
    """POST {base_url}/chat/completions, as served by vLLM, Ollama, llama.cpp server and hosted APIs."""

    def __init__(self, config: TeacherConfig):
        super().__init__(config)
        base_url = config.base_url or os.environ.get(config.base_url_env)
        if not base_url:
            raise TunesmithError(
                f"no teacher endpoint: set ${config.base_url_env} (e.g. http://localhost:8000/v1) "
                "or teacher.base_url, or use teacher.kind=local"
            )
        self.base_url = base_url.rstrip("/")
        self._client = httpx.Client(timeout=httpx.Timeout(config.timeout_s))

    def identity(self) -> dict:
        return {**super().identity(), "base_url": self.base_url}

    def _headers(self) -> dict[str, str]:
        api_key = os.environ.get(self.config.api_key_env)
        register_secret(api_key)  # whatever the variable is called, its value never reaches a file or a log
        return {"Authorization": f"Bearer {api_key}"} if api_key else {}

    def _post_once(self, conversation: Conversation) -> str:
        payload = {
            "model": self.config.model,
            "messages": conversation,
            "temperature": self.config.temperature,
            "max_tokens": self.config.max_tokens,
        }
        url = f"{self.base_url}/chat/completions"
        try:
            response = self._client.post(url, json=payload, headers=self._headers())
        except httpx.TimeoutException:
            raise RetryableTeacherError(f"no answer within {self.config.timeout_s:g}s") from None
        except httpx.TransportError as e:
            raise TeacherUnavailable(
                f"teacher endpoint {self.base_url} is unreachable ({type(e).__name__}); start the server "
                f"or point ${self.config.base_url_env} at a running one"
            ) from None
        if response.status_code == 429:
            raise RetryableTeacherError("rate limited (HTTP 429)", _retry_after_seconds(response))
        if response.status_code >= 500:
            raise RetryableTeacherError(f"server error (HTTP {response.status_code})", _retry_after_seconds(response))
        if response.status_code in (401, 403):
            raise TeacherUnavailable(
                f"teacher endpoint refused the credentials (HTTP {response.status_code}); check ${self.config.api_key_env}"
            )
        if response.status_code == 404:
            raise TeacherUnavailable(
                f"{url} not found (HTTP 404); the base URL usually ends in /v1, and model {self.config.model!r} must exist there"
            )
        if response.status_code >= 400:
            # Some endpoints echo the request, headers included: redacted before it is cut (a cut key would escape).
            raise _PermanentFailure(f"request rejected (HTTP {response.status_code}): {redact(response.text)[:200]}")
        try:
            content = response.json()["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError):
            raise _PermanentFailure(f"malformed teacher response (not an OpenAI chat completion): {redact(response.text)[:200]!r}") from None
        if not isinstance(content, str):
            raise _PermanentFailure("malformed teacher response: message content is not text")
        return content

    def _post(self, conversation: Conversation) -> str | TeacherFailure:
        retrying = Retrying(
            retry=retry_if_exception(lambda e: isinstance(e, RetryableTeacherError)),
            stop=stop_after_attempt(self.config.max_retries + 1),
            wait=_wait_for(self.config),
            before_sleep=lambda state: log.warning(
                "teacher: %s; retry %d of %d", state.outcome.exception(), state.attempt_number, self.config.max_retries
            ),
            reraise=True,
        )
        try:
            return retrying(self._post_once, conversation)
        except RetryableTeacherError as e:
            return TeacherFailure(f"teacher failed after {self.config.max_retries} retries: {e}")
        except _PermanentFailure as e:
            return TeacherFailure(str(e))

    def _complete_uncached(self, conversations, on_done):
        def run(conversation: Conversation) -> str | TeacherFailure:
            result = self._post(conversation)
            if on_done:
                on_done(1)
            return result

        with ThreadPoolExecutor(max_workers=self.config.concurrency) as pool:
            # list() re-raises the first TeacherUnavailable: an unreachable endpoint stops the step.
            return list(pool.map(run, conversations))

    def close(self) -> None:
        self._client.close()
        super().close()


class _PermanentFailure(Exception):
    """A reply that retrying will not fix (bad request, malformed body)."""


class LocalTeacher(Teacher):
    """The local model through transformers, in batches (no server needed)."""

    def __init__(self, config: TeacherConfig):
        super().__init__(config)
        self._model = None
        self._tokenizer = None

    def _complete_uncached(self, conversations, on_done):
        # Imported here: loading torch/transformers costs seconds, and the openai path never needs them.
        from tunesmith.generate import generate_chat, load_run_or_model

        if self._model is None:  # a tunesmith run folder (e.g. a tuned teacher for distillation) or a model
            self._model, self._tokenizer = load_run_or_model(self.config.model, device=self.config.device,
                                                                  precision="auto")
        replies: list[str | TeacherFailure] = []
        # Several batches per call: generate_chat sorts a call's prompts by length, so larger calls pad less;
        # smaller than everything at once so the progress bar moves.
        step = self.config.batch_size * 4
        for start in range(0, len(conversations), step):
            part = conversations[start : start + step]
            replies.extend(
                generate_chat(
                    self._model,
                    self._tokenizer,
                    part,
                    max_new_tokens=self.config.max_tokens,
                    batch_size=self.config.batch_size,
                    temperature=self.config.temperature,
                    show_progress=False,  # the prep step draws its own bar; rich allows one live display
                )
            )
            if on_done:
                on_done(len(part))
        return replies


def make_teacher(config: TeacherConfig) -> Teacher:
    return LocalTeacher(config) if config.kind == "local" else OpenAICompatibleTeacher(config)
