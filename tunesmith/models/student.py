"""`tunesmith student`: a smaller model made from a teacher by keeping a subset of its blocks (layer dropping).

The student is an ordinary transformers model folder (config, safetensors, tokenizer) of the teacher's architecture
with fewer blocks: block i of the student is a copy of teacher block `layers[i]`; embeddings, final norm and LM head
are the teacher's. Default: every other block from the first (DistilBERT's initialisation; for a 30-block SmolLM2,
15 blocks). It starts far below the teacher and is meant to be trained next, ideally distilled from that same
teacher (objective `distill`, docs/distillation.md). `student.json` in the folder records where it came from; a
distillation run copies it into its own lineage.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Optional

import typer

from tunesmith.cli import OutOpt, console
from tunesmith.records import TunesmithError

BLOCK_KEY = re.compile(r"(^|\.)(layers|h|blocks)\.(\d+)\.")  # Llama/Qwen/Mistral/Gemma/Phi: layers.N; GPT-2: h.N


def parse_layers(text: str | None, n: int) -> list[int]:
    """"0,2,4" or "0-5,29" (inclusive ranges) → sorted block indices; None → every other block from 0."""
    if not text:
        return list(range(0, n, 2))
    chosen: set[int] = set()
    for part in text.replace(" ", "").split(","):
        match = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
        if not match:
            raise TunesmithError(f"--layers {text!r}: use block indices and ranges such as 0,2,4 or 0-5,29")
        a, b = int(match[1]), int(match[2] or match[1])
        chosen.update(range(min(a, b), max(a, b) + 1))
    bad = sorted(i for i in chosen if i >= n)
    if bad:
        raise TunesmithError(f"--layers {text!r}: the teacher has blocks 0-{n - 1}; {bad} do not exist")
    if not chosen:
        raise TunesmithError("--layers: keep at least one block")
    return sorted(chosen)


def make_student(teacher: str, out: Path, layers: str | None = None) -> dict:
    """Write the student folder; returns its lineage (also written to student.json)."""
    import torch

    from tunesmith.files import atomic_dir, atomic_write_json
    from tunesmith.generate import is_run_folder, load_run_or_model
    from tunesmith.methods.base import count_parameters
    from tunesmith.models.loading import model_fingerprint
    from tunesmith.objectives.distill import STUDENT_FILE

    model, tokenizer = load_run_or_model(teacher, device="cpu")
    if hasattr(model, "peft_config"):
        raise TunesmithError(f"{teacher}: its method keeps trained layers beside the base (it does not merge), so its "
                             "blocks cannot be copied into a plain model; use a run of full, freeze, lora or ia3")
    config = model.config
    n = getattr(config, "num_hidden_layers", None)
    if not isinstance(n, int):
        raise TunesmithError(f"{type(model).__name__}: its config has no num_hidden_layers; tunesmith student cannot drop blocks")
    kept = parse_layers(layers, n)
    new_index = {old: new for new, old in enumerate(kept)}
    state = {}
    for key, tensor in model.state_dict().items():
        match = BLOCK_KEY.search(key)
        if match is None:
            state[key] = tensor
        elif int(match[3]) in new_index:
            state[key[:match.start(3)] + str(new_index[int(match[3])]) + key[match.end(3):]] = tensor
    student_config = config.__class__.from_dict(config.to_dict())
    student_config.num_hidden_layers = len(kept)
    if isinstance(getattr(config, "layer_types", None), list):  # per-block attention kinds (sliding/full)
        student_config.layer_types = [config.layer_types[i] for i in kept]
    torch.manual_seed(0)  # every weight is overwritten below; seeded anyway, so the folder is reproducible
    student = type(model)(student_config)
    missing, unexpected = student.load_state_dict(state, strict=False)
    if unexpected or [k for k in missing if not (config.tie_word_embeddings and k.endswith("lm_head.weight"))]:
        raise TunesmithError(f"{type(model).__name__}: blocks are not named like layers.N ({(unexpected or missing)[:3]}); "
                             "tunesmith student supports decoder models whose blocks are numbered modules")
    student.tie_weights()
    student.generation_config = model.generation_config
    lineage = {
        "made_by": "tunesmith student", "teacher": teacher, "teacher_is_run": is_run_folder(teacher),
        "teacher_fingerprint": model_fingerprint(teacher), "teacher_blocks": n, "kept_blocks": kept,
        "parameters": {"teacher": count_parameters(model)[1], "student": count_parameters(student)[1]},
    }
    with atomic_dir(out) as folder:
        student.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        atomic_write_json(folder / STUDENT_FILE, lineage)
    return lineage


def student_command(
    teacher: Annotated[str, typer.Argument(help="A tunesmith run folder, or a model (local folder, embedded name)", show_default=False)],
    out: OutOpt,
    layers: Annotated[Optional[str], typer.Option(help="Teacher blocks to keep, e.g. 0,2,4 or 0-5,29 (default: every other block from 0)")] = None,
) -> None:
    """Make a smaller student from a teacher by keeping a subset of its blocks (a plain transformers folder)."""
    lineage = make_student(teacher, out, layers)
    p = lineage["parameters"]
    console.print(f"[green]Student[/] {out}: blocks {lineage['kept_blocks']} of {lineage['teacher_blocks']}, "
                  f"{p['student']:,} parameters ({100 * p['student'] / p['teacher']:.0f}% of the teacher). Next: train it, "
                  f"e.g. with objective distill and teacher {teacher} (configs/distill-logits.yaml, model.name={out})")
