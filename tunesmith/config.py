"""Run configuration: YAML validated by pydantic.

Unknown keys are rejected, every error is reported at once with the YAML file and line it comes from, and
every field can be overridden from the command line as `section.key=value` (the value parsed as YAML).
`read_config` is the one reader for every config model: run, eval and prep configs alike.
"""

from __future__ import annotations

import copy
import string
from collections.abc import Iterable
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from tunesmith.data.iris import check_prefixes
from tunesmith.files import read_text
from tunesmith.methods.base import get_method, method_configs
from tunesmith.objectives.base import get_objective, objective_configs
from tunesmith.records import DataError, TunesmithError


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelConfig(Strict):
    name: str = Field("smollm2-135m-instruct", description="Embedded model name, a local HF folder, or a .gguf file")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    threads: int | None = Field(None, ge=1, description="CPU threads for torch and onnxruntime (None: TUNESMITH_THREADS, "
                                                         "else the cores this process may use; tunesmith/threads.py)")


class TemplateConfig(Strict):
    """Turns any row into a chat: `{field}` placeholders are filled from the row's columns."""

    prompt: str
    completion: str
    system: str | None = None
    variants: list[dict[str, str]] = Field(
        default_factory=list,
        description="data.train's rows are rendered once more per entry, with each named field read from another "
                    "column (e.g. [{question: paraphrased_question}]: every question also in its paraphrase); a row "
                    "whose column is missing, empty or gives the same prompt is not repeated. Validation and "
                    "evaluation rows are rendered once, as written")

    @model_validator(mode="after")
    def _variants_name_template_fields(self) -> TemplateConfig:
        used = {f for text in (self.prompt, self.completion, self.system or "") for _, f, _, _ in string.Formatter().parse(text) if f}
        unknown = sorted({f for variant in self.variants for f in variant} - used)
        if unknown:  # a typo would otherwise train on nothing new, silently
            raise ValueError(f"variants name field(s) {', '.join(unknown)} that the template does not use "
                             f"(it uses {', '.join(sorted(used)) or 'none'})")
        return self


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
    decode_unicode_escapes: bool = Field(
        False, description="Turn literal \\uXXXX text in string fields into the character it names (e.g. DBLP-QuAD's "
                           "'Jo\\u00E3o'), in training and evaluation alike")
    iri_prefixes: dict[str, str] = Field(
        default_factory=dict,
        description="Write IRIs of these namespaces as prefix:local in every message the model reads and writes (e.g. "
                    "{dblp: 'https://dblp.org/rdf/schema#'}: DBLP-QuAD's SPARQL answers 108 → 64 tokens); answers are "
                    "expanded back before they are scored or returned (tunesmith/data/iris.py)")

    @model_validator(mode="after")
    def _template_needs_fields(self) -> DataConfig:
        if self.format == "template" and self.template is None:
            raise ValueError("format 'template' needs a `template:` section with `prompt` and `completion`")
        if problems := check_prefixes(self.iri_prefixes):
            raise ValueError("data.iri_prefixes: " + "; ".join(problems))
        return self


def _union(configs: list[type[BaseModel]], what: str):
    """A discriminated union on `name` of every registered plug-in's config section (methods, objectives)."""
    if len(configs) == 1:
        return configs[0]
    return Annotated[Union[tuple(configs)], Field(discriminator="name", description=what)]


# Built from the registries: a new method or objective is one file in tunesmith/methods or tunesmith/objectives.
MethodConfig = _union(method_configs(), "The fine-tuning method (tunesmith/methods): what trains")
ObjectiveConfig = _union(objective_configs(), "What the model learns (tunesmith/objectives): causal_lm, classification, ...")


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
    batch_size: int = Field(64, ge=1, description="Rows generated together (fewer for long prompts: the KV cache stays "
                            "within 3 GB on a CPU, an eighth of memory below 24 GB)")
    stop_loops: int = Field(0, ge=0, description="As eval's generation.stop_loops: an answer whose last N+ tokens are one "
                            "block repeated 3+ times ends there (0: never); for metrics that score such an answer wrong")
    patience: int | None = Field(None, ge=1, description="Stop after this many probes without improvement (None: never)")
    min_delta: float = Field(0.0, ge=0, description="An improvement smaller than this (metric points) does not count")
    restore_best: bool = Field(False, description="The run's final output is the best probed model (run/best), not the "
                                                  "last step's: eval, generate, export and serve then use it")

    @model_validator(mode="after")
    def _known_metrics(self) -> ProbeConfig:
        from tunesmith.eval.metrics import REGISTRY

        unknown = [m for m in [self.metric, *self.metrics] if m not in REGISTRY]
        if unknown:
            raise ValueError(f"unknown metric(s) {unknown}; built-in: {', '.join(REGISTRY)}")
        return self


class OutputConfig(Strict):
    dir: str = "runs/latest"
    merge: bool = Field(False, description="Also write the merged model as safetensors")


class StageConfig(Strict):
    """One stage of a multi-stage run. It starts from the previous stage's output (the first from model.name); a
    section it does not set is the run's own (a section it sets replaces the run's whole section)."""

    name: str = Field(..., pattern=r"^[A-Za-z0-9_.-]+$", description="Names the stage's folder: stages/NN-name")
    data: DataConfig | None = None
    method: MethodConfig | None = None
    objective: ObjectiveConfig | None = None
    train: TrainConfig | None = None


class RunConfig(Strict):
    model: ModelConfig = ModelConfig()
    data: DataConfig
    objective: ObjectiveConfig = Field(default_factory=lambda: get_objective("causal_lm").config())
    method: MethodConfig = Field(default_factory=lambda: get_method("lora").config())
    train: TrainConfig = TrainConfig()
    probe: ProbeConfig | None = None
    output: OutputConfig = OutputConfig()
    stages: list[StageConfig] | None = Field(
        None, description="Multi-stage: train these in order, each from the previous one's output (tunesmith/train/stages.py)")

    @model_validator(mode="after")
    def _plug_ins_agree(self) -> RunConfig:
        """Every problem between sections at once: the probe, the method's and the objective's own checks, stages."""
        problems = []
        if self.probe is not None and not self.data.valid:
            problems.append("probe: generation-based evaluation needs a validation file (data.valid)")
        if self.stages:
            from tunesmith.train.stages import stage_problems

            problems += stage_problems(self)
        else:
            problems += get_method(self.method.name).check(self) + get_objective(self.objective.name).check(self)
        if problems:
            raise ValueError("; ".join(problems))
        return self


class ConfigError(TunesmithError):
    pass


M = TypeVar("M", bound=BaseModel)
COMMAND_LINE = "<command line>"


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
    """`section.key=value` → (["section", "key"], value parsed as YAML)."""
    if "=" not in item:
        raise ConfigError(f"--set {item!r} must look like path.to.key=value, from the top of the config (e.g. train.lr=1e-4)")
    key, raw = item.split("=", 1)
    try:
        return key.strip().split("."), yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as e:  # a value YAML cannot read (an unclosed bracket, a control character)
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"--set {item!r}: its value is not valid YAML ({problem}); quote it to pass a string") from None


def set_path(data: dict[str, Any], path: list[str], value: Any, what: str) -> None:
    """Set `value` at a dotted path; a number indexes a list (`variants.0.run`), a missing section is created."""
    node: Any = data
    for i, part in enumerate(path):
        last = i == len(path) - 1
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                where = ".".join(path[:i])
                raise ConfigError(f"{what}: {where} is a list of {len(node)}; {part!r} is not one of its indices "
                                  f"(0..{len(node) - 1})" if node else f"{what}: {where} is an empty list")
            if last:
                node[int(part)] = value
            else:
                node = node[int(part)]
        elif isinstance(node, dict):
            if last:
                node[part] = value
            else:
                node = node.setdefault(part, {})
        else:
            raise ConfigError(f"{what}: {'.'.join(path[:i])!r} is not a section")


def _merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in top.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def _location_in_input(loc: tuple, data: Any) -> tuple[str, ...]:
    """The path of an error as the user wrote it: pydantic adds union tags to locations (method.lora.r,
    variants.0.tuned.run); they are the parts that the input does not have, and are dropped."""
    node, path = data, []
    for i, part in enumerate(loc):
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            node = node[part]
        elif i == len(loc) - 1 and isinstance(node, dict):
            pass  # a required key that is missing: its name belongs in the message
        else:
            continue
        path.append(str(part))
    return tuple(path)


def format_validation_errors(err: ValidationError, data: Any, source: str, lines: dict[tuple[str, ...], int],
                             from_command_line: dict[tuple[str, ...], str]) -> str:
    out = []
    for e in err.errors():
        loc = _location_in_input(tuple(e["loc"]), data)
        where = source
        for depth in range(len(loc), 0, -1):
            if loc[:depth] in from_command_line:
                where = from_command_line[loc[:depth]]
                break
            if loc[:depth] in lines:
                where = f"{source}:{lines[loc[:depth]]}"
                break
        msg = "unknown key (not a setting)" if e["type"] == "extra_forbidden" else e["msg"]
        out.append(f"  {where}: {'.'.join(loc) or '(top)'}: {msg}")
    return f"{len(out)} problem(s) in the config:\n" + "\n".join(out)


def read_config(model: type[M], path: str | Path | None = None, overrides: Iterable[str] = (), *,
                base: dict[str, Any] | None = None, options: dict[str, Any] | None = None) -> M:
    """The one config reader: every command's YAML goes through it.

    Layers, later ones winning: `base` (defaults under the file), the YAML file, `--set path.to.key=value`
    overrides (a dotted path from the top of the file; the value parsed as YAML), then a command's own options
    (`options`: dotted path → value; None means "not given"). Validated once by `model`; every problem is
    reported at once with the file and line (or the command-line setting) it comes from.
    """
    text, source = "", COMMAND_LINE
    data: dict[str, Any] = copy.deepcopy(base or {})
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} not found")
        try:
            text, source = read_text(path), str(path)
            loaded = yaml.safe_load(text)
        except DataError as e:
            raise ConfigError(str(e.issues[0])) from None
        except yaml.YAMLError as e:
            raise ConfigError(f"{source}: not valid YAML: {e}") from None
        except RecursionError:
            raise ConfigError(f"{source}: not usable YAML (nested too deeply)") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{source}: the top level must be a mapping of sections ({', '.join(model.model_fields)})")
        data = _merge(data, loaded or {})
    from_command_line: dict[tuple[str, ...], str] = {}
    for item in overrides:
        keys, value = parse_override(item)
        set_path(data, keys, value, f"--set {item!r}")
        from_command_line[tuple(keys)] = f"--set {item}"
    for dotted, value in (options or {}).items():
        if value is not None:
            set_path(data, dotted.split("."), value, f"option for {dotted}")
            from_command_line[tuple(dotted.split("."))] = COMMAND_LINE
    try:
        return model.model_validate(data)
    except ValidationError as e:
        lines = yaml_line_index(text) if text else {}
        raise ConfigError(format_validation_errors(e, data, source, lines, from_command_line)) from None


def load_config(path: str | Path | None = None, overrides: Iterable[str] = (), **layers: Any) -> RunConfig:
    """A run config (`tunesmith train`, `data show`): `read_config(RunConfig, ...)`."""
    return read_config(RunConfig, path, overrides, **layers)


def dump_config(cfg: BaseModel) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
