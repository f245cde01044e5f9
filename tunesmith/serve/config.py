"""`tunesmith serve` settings: which models under which names, their guardrails, limits, batching, keys.

A YAML file read by `tunesmith.config.read_config` (`tunesmith serve serve.yaml --set limits.max_tokens=512`), or
just run folders on the command line (`--run`).
"""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path

from pydantic import Field, model_validator

from tunesmith.config import Strict
from tunesmith.files import read_text
from tunesmith.guardrails.config import GuardrailsConfig
from tunesmith.models.precision import Precision
from tunesmith.records import TunesmithError
from tunesmith.redact import register_secret


class ServedModel(Strict):
    name: str | None = Field(None, description="The id clients ask for (default: the run folder's name, or the model's)")
    run: str | None = Field(None, description="A run folder written by `tunesmith train`")
    model: str | None = Field(None, description="A base model name or folder, served as is")
    guardrails: GuardrailsConfig | str | None = Field(None, description="Inline, or a guardrails YAML file")

    @model_validator(mode="after")
    def _one_source(self) -> ServedModel:
        if (self.run is None) == (self.model is None):
            raise ValueError("each served model needs exactly one of `run` or `model`")
        return self

    @property
    def id(self) -> str:
        return self.name or (Path(self.run).name if self.run else Path(self.model).name)  # type: ignore[arg-type]


class Limits(Strict):
    max_request_bytes: int = Field(1_000_000, ge=1024)
    max_prompt_tokens: int = Field(2048, ge=1)
    max_tokens: int = Field(1024, ge=1, description="The most tokens one request may ask for")
    default_max_tokens: int = Field(256, ge=1, description="When a request does not say")
    request_timeout_s: float = Field(300.0, gt=0, description="A request still generating after this is ended (504)")
    max_queue: int = Field(256, ge=1, description="Requests waiting beyond this are refused with 429")


class Batching(Strict):
    max_batch_size: int = Field(16, ge=1)
    wait_ms: float = Field(20.0, ge=0, description="How long the first request of a batch waits for others")


class ServeConfig(Strict):
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    models: list[ServedModel] = Field(default_factory=list)
    api_keys: list[str] = Field(default_factory=list, description="Accepted Bearer keys (also: TUNESMITH_API_KEYS, --api-key-file)")
    no_auth: bool = Field(False, description="Serve without keys; refused unless host is a loopback address")
    device: str = "auto"
    precision: Precision = Field("auto", description="auto (bf16 where the hardware has it natively), bf16 or fp32")
    limits: Limits = Field(default_factory=Limits)
    batching: Batching = Field(default_factory=Batching)

    @model_validator(mode="after")
    def _unique_names(self) -> ServeConfig:
        ids = [m.id for m in self.models]
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        if dupes:
            raise ValueError(f"two served models share the name(s) {dupes}; give them distinct `name`s")
        return self


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def resolve_keys(cfg: ServeConfig, key_file: str | Path | None) -> list[str]:
    """Every accepted key; an error when there are none and serving without keys was not explicitly allowed."""
    keys = list(cfg.api_keys)
    keys += [k.strip() for k in os.environ.get("TUNESMITH_API_KEYS", "").split(",") if k.strip()]
    if key_file:
        path = Path(key_file)
        if not path.is_file():
            raise TunesmithError(f"API key file {path} not found")
        keys += [line.strip() for line in read_text(path).splitlines() if line.strip() and not line.startswith("#")]
    for key in keys:
        register_secret(key)  # a key that reaches an error message or a log is redacted there
    if cfg.no_auth:
        if not is_loopback(cfg.host):
            raise TunesmithError(f"--no-auth serves without API keys, which is only allowed on a loopback address "
                                 f"(127.0.0.1, ::1, localhost), not {cfg.host!r}")
        return []
    if not keys:
        raise TunesmithError("no API keys: pass --api-key-file FILE (one key a line) or set TUNESMITH_API_KEYS=k1,k2; "
                             "for local tests only, --no-auth on 127.0.0.1")
    short = [k for k in keys if len(k) < 16]
    if short:
        raise TunesmithError(f"{len(short)} API key(s) shorter than 16 characters; use long random keys "
                             "(python -c 'import secrets; print(secrets.token_urlsafe(32))')")
    return keys

