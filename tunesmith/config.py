"""Run configuration: YAML validated by pydantic.

Unknown keys are rejected, every error is reported at once with the YAML file and line it comes from, and
every field can be overridden from the command line as `section.key=value` (the value parsed as YAML).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from tunesmith.records import TunesmithError


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelConfig(Strict):
    name: str = Field("smollm2-135m-instruct", description="Embedded model name, a local HF folder, or a .gguf file")
    device: Literal["auto", "cpu", "cuda"] = "auto"


class TemplateConfig(Strict):
    """Turns any row into a chat: `{field}` placeholders are filled from the row's columns."""

    prompt: str
    completion: str
    system: str | None = None


class DataConfig(Strict):
    train: str = Field(..., description="Training file: .jsonl, .json, .csv or .parquet")
    valid: str | None = None
    format: Literal["auto", "messages", "alpaca", "prompt_completion", "text", "template"] = "auto"
    template: TemplateConfig | None = None
    system_prompt: str | None = Field(None, description="Added as a system message to every chat that has none")
    max_seq_len: int = Field(512, ge=8)
    truncation: Literal["error", "right", "drop"] = Field(
        "error", description="Examples longer than max_seq_len: fail listing them, cut the end, or drop them"
    )
    on_bad_rows: Literal["error", "skip"] = "error"
    train_on: Literal["assistant", "last_assistant", "all"] = "assistant"
    limit: int | None = Field(None, ge=1, description="Use only the first N rows (quick experiments)")

    @model_validator(mode="after")
    def _template_needs_fields(self) -> DataConfig:
        if self.format == "template" and self.template is None:
            raise ValueError("format 'template' needs a `template:` section with `prompt` and `completion`")
        return self


class LoraMethod(Strict):
    name: Literal["lora"] = "lora"
    r: int = Field(16, ge=1)
    alpha: float = 32.0
    # peft's dropout copies every input activation; 0 is ~35% faster on CPU and fine for short runs.
    dropout: float = Field(0.0, ge=0.0, lt=1.0)
    target_modules: list[str] | Literal["all-linear"] = "all-linear"


class FullMethod(Strict):
    name: Literal["full"] = "full"


MethodConfig = Annotated[LoraMethod | FullMethod, Field(discriminator="name")]


class TrainConfig(Strict):
    epochs: float = Field(1.0, gt=0)
    max_steps: int | None = Field(None, ge=1, description="Optimizer steps; overrides epochs")
    batch_size: int = Field(4, ge=1, description="Rows per micro-batch (a packed row holds several examples)")
    grad_accum: int = Field(1, ge=1)
    pack: bool = Field(True, description="Pack several examples per row, attention kept within each example")
    lr: float = Field(2e-4, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    warmup_ratio: float = Field(0.05, ge=0, le=1)
    schedule: Literal["cosine", "linear", "constant"] = "cosine"
    max_grad_norm: float | None = Field(1.0, gt=0)
    precision: Literal["auto", "bf16", "fp32"] = Field("auto", description="auto: bf16 where the hardware has it")
    seed: int = 0
    log_every: int = Field(10, ge=1)
    save_every: int | None = Field(None, ge=1, description="Checkpoint every N optimizer steps (None: only at the end)")
    keep_last: int = Field(2, ge=1)


class ProbeConfig(Strict):
    """Generation-based evaluation during training (tunesmith/eval/probe.py): needs data.valid."""

    every: int = Field(50, ge=1, description="Probe every N optimizer steps")
    n: int = Field(32, ge=1, description="Validation items generated at each probe (the first N)")
    metric: str = Field("exact_match", description="The metric that picks the best checkpoint")
    metrics: list[str] = Field(default_factory=lambda: ["exact_match", "token_f1"])
    max_new_tokens: int = Field(128, ge=1)
    batch_size: int = Field(16, ge=1)
    patience: int | None = Field(None, ge=1, description="Stop after this many probes without improvement (None: never)")
    min_delta: float = Field(0.0, ge=0, description="An improvement smaller than this (metric points) does not count")


class OutputConfig(Strict):
    dir: str = "runs/latest"
    merge: bool = Field(False, description="Also write the merged model as safetensors")


class RunConfig(Strict):
    model: ModelConfig = ModelConfig()
    data: DataConfig
    method: MethodConfig = LoraMethod()
    train: TrainConfig = TrainConfig()
    probe: ProbeConfig | None = None
    output: OutputConfig = OutputConfig()

    @model_validator(mode="after")
    def _probe_needs_valid(self) -> RunConfig:
        if self.probe is not None and not self.data.valid:
            raise ValueError("probe: generation-based evaluation needs a validation file (data.valid)")
        return self


class ConfigError(TunesmithError):
    pass


def yaml_line_index(text: str) -> dict[tuple[str, ...], int]:
    """Map each key path in a YAML document to its 1-based line, so errors can point into the file."""
    index: dict[tuple[str, ...], int] = {}

    def walk(node: yaml.Node, path: tuple[str, ...]) -> None:
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                child = path + (str(key.value),)
                index[child] = key.start_mark.line + 1
                walk(value, child)
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                index[path + (str(i),)] = item.start_mark.line + 1
                walk(item, path + (str(i),))

    root = yaml.compose(text)
    if root is not None:
        walk(root, ())
    return index


def parse_override(item: str) -> tuple[list[str], Any]:
    if "=" not in item:
        raise ConfigError(f"override {item!r} must look like section.key=value (e.g. train.lr=1e-4)")
    key, raw = item.split("=", 1)
    return key.strip().split("."), yaml.safe_load(raw) if raw.strip() else None


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    for item in overrides:
        path, value = parse_override(item)
        node = data
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {part!r} is not a section")
        node[path[-1]] = value
    return data


def format_validation_errors(err: ValidationError, source: str, lines: dict[tuple[str, ...], int]) -> str:
    out = []
    for e in err.errors():
        # Discriminated unions put the tag in the location (method.lora.r); the file has method.r.
        loc = tuple(str(p) for p in e["loc"] if p not in ("lora", "full"))
        where = source
        for depth in range(len(loc), 0, -1):
            if loc[:depth] in lines:
                where = f"{source}:{lines[loc[:depth]]}"
                break
        msg = "unknown key (not a setting)" if e["type"] == "extra_forbidden" else e["msg"]
        out.append(f"  {where}: {'.'.join(loc) or '(top)'}: {msg}")
    return f"{len(out)} problem(s) in the config:\n" + "\n".join(out)


def read_config_data(path: str | Path | None, overrides: list[str] | None, base: dict | None,
                     sections: str) -> tuple[dict[str, Any], str, str]:
    """A YAML file (if any) over `base`, then `section.key=value` overrides: (data, the file's text, its name)."""
    text, source = "", "<command line>"
    data: dict[str, Any] = dict(base or {})
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} not found")
        text, source = path.read_text(), str(path)
        try:
            loaded = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise ConfigError(f"{source}: not valid YAML: {e}") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{source}: the top level must be a mapping of sections ({sections})")
        data.update(loaded or {})
    return apply_overrides(data, overrides or []), text, source


def import_callable(dotted: str, what: str):
    """`package.module:function` named in a config (validators, metrics) → the function, or a clear error."""
    import importlib

    module_name, sep, attr = dotted.partition(":")
    if not sep or not module_name or not attr:
        raise TunesmithError(f"{what} {dotted!r} must look like package.module:function")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise TunesmithError(f"{what} {dotted!r}: cannot import {module_name!r} ({e}); is it on PYTHONPATH?") from None
    function = getattr(module, attr, None)
    if not callable(function):
        raise TunesmithError(f"{what} {dotted!r}: {module_name} has no function {attr!r}")
    return function


def load_config(path: str | Path | None = None, overrides: list[str] | None = None, base: dict | None = None) -> RunConfig:
    """Read a YAML config (or start from `base`), apply `section.key=value` overrides, validate everything."""
    data, text, source = read_config_data(path, overrides, base, "model, data, method, train, probe, output")
    try:
        return RunConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(format_validation_errors(e, source, yaml_line_index(text) if text else {})) from None


def dump_config(cfg: RunConfig) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
