"""Multi-stage training: one config with `stages:` (e.g. continued pretraining on raw domain text → instruction
tuning → a narrower sub-domain), each stage an ordinary run that starts from the previous stage's output.

Layout of the run folder: `config.yaml` (the whole config), `stages/NN-name/` (each stage's own run folder, with
its resolved config whose model is the previous stage's output), `lineage.json` (per stage: parent model, data
files and their SHA-256, method, objective, config, result). A stage that is not the last hands on a plain model
folder: its own `final` for full fine-tuning, else its adapter merged (`stages/NN-name/merged`, fp32). An
interrupted run resumes (`train --resume`) at the stage it stopped in: finished stages are skipped, the stage
in progress resumes from its last checkpoint.
"""

from __future__ import annotations

from pathlib import Path

STAGES_DIR = "stages"
LINEAGE_FILE = "lineage.json"


def stage_problems(cfg) -> list[str]:
    """What cannot work in a multi-stage config: a stage before the last must leave a model the next can start from."""
    from tunesmith.methods.base import get_method
    from tunesmith.objectives.base import get_objective

    problems = []
    names = [s.name for s in cfg.stages]
    if len(set(names)) != len(names):
        problems.append(f"stages: names must differ ({', '.join(names)})")
    for i in range(len(cfg.stages)):
        stage = stage_config(cfg, i)
        method = get_method(stage.method.name)
        problems += [f"stages.{i} ({stage_name(cfg, i)}): {p}" for p in method.check(stage) + get_objective(stage.objective.name).check(stage)]
        if i < len(cfg.stages) - 1 and not method.mergeable:
            problems.append(f"stages.{i} ({stage_name(cfg, i)}): method {method.name} does not merge into the model, so the "
                            "next stage cannot start from its output; use full, freeze, lora or ia3 before the last stage")
    return problems


def stage_name(cfg, i: int) -> str:
    return f"{i + 1:02d}-{cfg.stages[i].name}"


def stage_dir(cfg, i: int) -> Path:
    return Path(cfg.output.dir) / STAGES_DIR / stage_name(cfg, i)


def stage_config(cfg, i: int, parent: str | None = None):
    """Stage i as an ordinary run config: the run's sections, replaced by those the stage sets."""
    stage = cfg.stages[i]
    sections = {key: getattr(stage, key) if getattr(stage, key) is not None else getattr(cfg, key)
                for key in ("data", "method", "objective", "train")}
    model = cfg.model.model_copy(update={"name": parent or (str(model_handed_on(cfg, i - 1)) if i else cfg.model.name)})
    last = i == len(cfg.stages) - 1
    return type(cfg).model_construct(
        model=model, **sections, probe=cfg.probe if last else None,
        output=cfg.output.model_copy(update={"dir": str(stage_dir(cfg, i)), "merge": cfg.output.merge and last}),
        stages=None)


def model_handed_on(cfg, i: int) -> Path:
    """The model folder stage i leaves for stage i+1."""
    folder = stage_dir(cfg, i)
    method = cfg.stages[i].method or cfg.method
    return folder / "final" if method.name == "full" else folder / "merged"


def last_stage_dir(run: Path) -> Path:
    """The folder of a run that holds the trained output: the last stage's for a multi-stage run, else the run."""
    stages = Path(run) / STAGES_DIR
    if stages.is_dir():
        done = sorted(p for p in stages.iterdir() if (p / "config.yaml").is_file())
        if done:
            return done[-1]
    return Path(run)


def file_sha256(path: str | None) -> str | None:
    from tunesmith.files import sha256_file

    return sha256_file(path) if path and Path(path).is_file() else None


def train_stages(cfg, resume: bool = False):
    """Every stage in order; returns the last stage's TrainResult. Lineage is written after each stage."""
    from dataclasses import asdict

    from rich.console import Console

    from tunesmith.config import dump_config
    from tunesmith.export import ExportOptions, export_run
    from tunesmith.files import atomic_write_json, atomic_write_text, read_json
    from tunesmith.train.run import _open_run_dir, train

    import os

    from tunesmith.records import TunesmithError
    from tunesmith.train.launch import distributed_problems

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise TunesmithError("; ".join(distributed_problems(cfg)))
    console = Console(stderr=True)
    run_dir = _open_run_dir(cfg, resume)
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / "config.yaml", dump_config(cfg))
    lineage_path = run_dir / LINEAGE_FILE
    lineage = read_json(lineage_path) if resume and lineage_path.is_file() else []
    result = None
    for i in range(len(cfg.stages)):
        stage = stage_config(cfg, i)
        folder = stage_dir(cfg, i)
        done = (folder / "train_summary.json").is_file()
        console.rule(f"[bold]stage {i + 1}/{len(cfg.stages)}: {cfg.stages[i].name}[/] ({stage.method.name}, "
                     f"{stage.objective.name}) from {stage.model.name}" + (" [dim](done)[/]" if done else ""))
        if not done:
            result = train(stage, resume=(folder / "config.yaml").is_file())
        else:
            from tunesmith.train.run import TrainResult

            result = TrainResult(**read_json(folder / "train_summary.json"))
        handed_on = model_handed_on(cfg, i)
        if i < len(cfg.stages) - 1 and not (handed_on / "config.json").is_file():
            # fp32, no parity generation: the merge itself is proven (merged logits == unmerged logits)
            export_run(folder, "hf", ExportOptions(quant="f32", out=handed_on, parity=False))
        entry = {"stage": i + 1, "name": cfg.stages[i].name, "folder": str(folder), "parent": stage.model.name,
                 "method": stage.method.name, "objective": stage.objective.name,
                 "data": {k: {"path": p, "sha256": file_sha256(p)} for k in ("train", "valid")
                          if (p := getattr(stage.data, k))},
                 "hands_on": str(handed_on) if i < len(cfg.stages) - 1 else None,
                 "config": dump_config(stage), "result": asdict(result)}
        lineage = [e for e in lineage if e["stage"] != i + 1] + [entry]
        atomic_write_json(lineage_path, sorted(lineage, key=lambda e: e["stage"]))
    return result
