"""The served models: one base model in memory with every LoRA adapter on it, chosen per request by name.

LoRA runs on the same base are loaded as named peft adapters on one model, so requests for different adapters (and
for the base) generate in one batch through peft's per-row `adapter_names`; nothing global is switched per request.
Runs whose method cannot be mixed in a batch (full fine-tuning, DoRA, other peft methods) get their own merged model.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console

from tunesmith.files import read_json
from tunesmith.guardrails import Guard, load_guardrails
from tunesmith.records import TunesmithError
from tunesmith.serve.config import ServeConfig, ServedModel

console = Console(stderr=True)


@dataclass
class Group:
    """One model in memory; requests for any of its entries can share a batch."""

    key: str
    model: object
    tokenizer: object
    max_positions: int


@dataclass
class Entry:
    id: str
    group: Group
    adapter: str | None  # peft adapter name on the group's model; None: the model itself
    guard: Guard | None
    source: str
    created: int = 0
    meta: dict = field(default_factory=dict)
    iri_prefixes: dict = field(default_factory=dict)  # the run's data.iri_prefixes: prompts compacted, answers expanded


def _mixable_lora(run: Path) -> bool:
    cfg_path = run / "final" / "adapter_config.json"
    if not cfg_path.is_file():
        return False
    adapter = read_json(cfg_path)
    return adapter.get("peft_type") == "LORA" and not adapter.get("use_dora") and not adapter.get("modules_to_save")


class ModelPool:
    def __init__(self, cfg: ServeConfig):
        from tunesmith.config import load_config
        from tunesmith.generate import load_for_inference
        from tunesmith.models.loading import load_model, load_tokenizer, resolve_model
        from tunesmith.models.precision import prepare_for_inference

        self.entries: dict[str, Entry] = {}
        self.groups: dict[str, Group] = {}
        bases: dict[str, Group] = {}

        def base_group(name: str) -> Group:
            path = resolve_model(name)
            key = str(path.resolve())
            if key not in bases:
                model = load_model(path, device=cfg.device).eval()
                bases[key] = Group(key, model, load_tokenizer(path), _positions(model))
                self.groups[key] = bases[key]
            return bases[key]

        for served in cfg.models:
            source = served.run or served.model
            prefixes: dict = {}
            if served.model is not None:
                group, adapter = base_group(served.model), None
            else:
                from tunesmith.train.stages import last_stage_dir

                run = last_stage_dir(Path(served.run))  # type: ignore[arg-type]  # a multi-stage run serves its last stage
                if not (run / "config.yaml").is_file():
                    raise TunesmithError(f"{run} is not a tunesmith run folder (no config.yaml)")
                if not (run / "final").is_dir():
                    raise TunesmithError(f"{run} has no trained output yet ({run / 'final'} missing): did training finish?")
                run_cfg = load_config(run / "config.yaml")
                prefixes = run_cfg.data.iri_prefixes
                if _mixable_lora(run):
                    group = base_group(run_cfg.model.name)
                    group.model = _add_adapter(group.model, run / "final", served.id)
                    adapter = served.id
                else:
                    model, tokenizer = load_for_inference(run=run, device=cfg.device)
                    group = Group(f"run:{run.resolve()}", model, tokenizer, _positions(model))
                    self.groups[group.key] = group
                    adapter = None
            guard = None
            if served.guardrails is not None:
                gcfg = load_guardrails(served.guardrails) if isinstance(served.guardrails, str) else served.guardrails
                guard = Guard(gcfg, group.tokenizer, group.model.config.vocab_size)
            self.entries[served.id] = Entry(served.id, group, adapter, guard, str(source), int(time.time()),
                                            iri_prefixes=prefixes)
            console.print(f"[green]serving[/] {served.id} ({'adapter on ' + Path(group.key).name if adapter else source})"
                          f"{' with guardrails' if guard else ''}")
        for group in self.groups.values():  # an explicit bf16 without native support fails now, not per request
            prepare_for_inference(group.model, cfg.precision)  # every adapter added: weights stored at serving precision

    def get(self, name: str) -> Entry | None:
        return self.entries.get(name)


def _add_adapter(model, directory: Path, name: str):
    from peft import PeftModel

    if hasattr(model, "peft_config"):
        model.load_adapter(str(directory), adapter_name=name)
        return model.eval()
    return PeftModel.from_pretrained(model, str(directory), adapter_name=name).eval()


def _positions(model) -> int:
    return int(getattr(model.config, "max_position_embeddings", 0) or 1 << 30)


def served_models_from_runs(runs: list[str], base: str | None) -> list[ServedModel]:
    """`tunesmith serve --run RUN...`: each run under its folder name; the base model too when asked (or when no runs)."""
    from tunesmith.models.loading import DEFAULT_MODEL

    models = [ServedModel(run=r) for r in runs]
    if base or not runs:
        models.append(ServedModel(model=base or DEFAULT_MODEL))
    return models
