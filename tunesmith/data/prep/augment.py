"""`tunesmith data augment`: more phrasings of the same prompts, where data is scarce.

Paraphrases come from the teacher (each asked in a different style, so even greedy decoding gives
distinct variants); template variation wraps the prompt in user-given templates (`{prompt}`). Every
variant keeps its original's fields (doc_id, topic, ...), so a grouped split keeps a prompt and all its
variants on the same side.
"""

from __future__ import annotations

import re
from contextlib import nullcontext
from pathlib import Path
from typing import Annotated, Optional

import typer
from pydantic import Field, field_validator

from tunesmith.cli import ConfigArg, ForceOpt, OutOpt, SetOpt, console
from tunesmith.config import Strict
from tunesmith.data.prep.artifacts import skip_if_up_to_date, write_step_outputs
from tunesmith.data.prep.progress import Progress, rich_progress
from tunesmith.data.prep.rows import ChatRow, Reject, parse_rows
from tunesmith.data.prep.teacher import Teacher, TeacherConfig, TeacherFailure, make_teacher
from tunesmith.files import read_jsonl

PARAPHRASE_STYLES = (
    "in different words",
    "more formally",
    "more briefly",
    "as a casual user would type it",
    "with a different sentence structure",
)


class AugmentConfig(Strict):
    teacher: TeacherConfig = TeacherConfig()
    paraphrases_per_row: int = Field(1, ge=0, le=len(PARAPHRASE_STYLES))
    templates: list[str] = Field(default_factory=list, description='Prompt templates with a {prompt} placeholder, e.g. "Quick question: {prompt}"')
    keep_original: bool = True
    max_length_ratio: float = Field(3.0, gt=1, description="Paraphrases longer than this times the original are rejected")

    @field_validator("templates")
    @classmethod
    def _has_placeholder(cls, templates: list[str]) -> list[str]:
        missing = [t for t in templates if "{prompt}" not in t]
        if missing:
            raise ValueError(f"every template needs a {{prompt}} placeholder; missing in {missing}")
        return templates


def _last_user_index(row: ChatRow) -> int | None:
    for i in range(len(row.messages or []) - 1, -1, -1):
        if row.messages[i].get("role") == "user" and isinstance(row.messages[i].get("content"), str):
            return i
    return None


def _with_prompt(row: ChatRow, index: int, prompt: str, how: str, origin: int) -> ChatRow:
    variant = row.model_copy(deep=True, update={"augmented": how, "augmented_from": origin})
    variant.messages[index]["content"] = prompt
    return variant


def paraphrase_prompt(prompt: str, style: str) -> list[dict[str, str]]:
    return [
        {
            "role": "user",
            # The question comes first and "do not answer" is explicit: small teachers otherwise answer it.
            "content": f"Question: {prompt}\n\nRewrite the question above {style}, keeping its meaning. Do not answer it. "
            "Reply with only the rewritten question.",
        }
    ]


def _clean_paraphrase(reply: str) -> str:
    line = next((line.strip() for line in reply.strip().splitlines() if line.strip()), "")
    return re.sub(r"^(?:rewritten question|question)\s*:\s*", "", line, flags=re.I).strip().strip('"')


def _normalized(text: str) -> str:
    return " ".join(re.findall(r"\w+", text.lower()))


def augment_rows(
    rows: list[ChatRow], config: AugmentConfig, teacher: Teacher | None, progress: Progress | None = None
) -> tuple[list[ChatRow], list[Reject]]:
    """(original + variant rows, rejected variants with reasons)."""
    progress = progress or Progress()
    out: list[ChatRow] = []
    rejects: list[Reject] = []
    seen: set[str] = set()
    targets: list[tuple[int, int, str]] = []  # (row number, message index, prompt)
    for number, row in enumerate(rows):
        index = _last_user_index(row)
        if index is None:
            rejects.append(Reject(reason="row has no user message to vary", row=number))
            if config.keep_original:
                out.append(row)
            continue
        prompt = row.messages[index]["content"]
        seen.add(_normalized(prompt))
        targets.append((number, index, prompt))
        if config.keep_original:
            out.append(row)

    for number, index, prompt in targets:
        for t, template in enumerate(config.templates):
            varied = template.replace("{prompt}", prompt)
            if _normalized(varied) in seen:
                continue
            seen.add(_normalized(varied))
            out.append(_with_prompt(rows[number], index, varied, f"template:{t}", number))

    if config.paraphrases_per_row and teacher is not None:
        jobs = [(n, i, p, style) for n, i, p in targets for style in PARAPHRASE_STYLES[: config.paraphrases_per_row]]
        progress.phase("augment: paraphrasing", len(jobs))
        replies = teacher.complete([paraphrase_prompt(p, style) for _, _, p, style in jobs], progress.advance)
        for (number, index, prompt, style), reply in zip(jobs, replies):
            if isinstance(reply, TeacherFailure):
                rejects.append(Reject(reason=reply.reason, row=number, prompt=prompt))
                continue
            paraphrase = _clean_paraphrase(reply)
            key = _normalized(paraphrase)
            if not key:
                reason = "malformed teacher output (empty paraphrase)"
            elif key in seen:
                reason = "duplicate of an existing prompt"
            elif prompt.rstrip().endswith("?") and not paraphrase.endswith("?"):
                reason = "not a question (the teacher answered instead of rephrasing)"
            elif len(paraphrase) > config.max_length_ratio * max(len(prompt), 1):
                reason = f"paraphrase longer than {config.max_length_ratio:g}x the original"
            else:
                reason = None
            if reason:
                rejects.append(Reject(reason=reason, row=number, prompt=prompt, paraphrase=paraphrase))
                continue
            seen.add(key)
            out.append(_with_prompt(rows[number], index, paraphrase, f"paraphrase:{style}", number))
    return out, rejects


def augment_command(
    input: Annotated[Path, typer.Option("--input", "-i", help="Pairs file (chat messages JSONL)", show_default=False)],
    out: OutOpt, config: ConfigArg = None, overrides: SetOpt = None,
    paraphrases: Annotated[Optional[int], typer.Option(help="Teacher paraphrases per prompt, 0: templates only (augment.paraphrases_per_row)")] = None,
    template: Annotated[Optional[list[str]], typer.Option(help='Prompt template with {prompt}, e.g. "Quick question: {prompt}"; repeatable (augment.templates)')] = None,
    force: ForceOpt = False,
) -> None:
    """Add paraphrased and template-varied prompts; variants keep their original's group keys."""
    from tunesmith.data.prep.config import step_settings

    cfg = step_settings("augment", config, overrides, {"augment.paraphrases_per_row": paraphrases, "augment.templates": template or None})
    settings = cfg.model_dump(mode="json")
    if skip_if_up_to_date(out, "augment", settings, [input], force):
        return
    rows = parse_rows(ChatRow, read_jsonl(input))
    with (make_teacher(cfg.teacher) if cfg.paraphrases_per_row else nullcontext()) as the_teacher, rich_progress() as progress:
        augmented, rejects = augment_rows(rows, cfg, the_teacher, progress)
    write_step_outputs(out, "augment", settings, [input], augmented, rejects,
                       {"input_rows": len(rows), "output_rows": len(augmented), "rejected": len(rejects)})
    console.print(f"{out}: {len(rows)} rows → {len(augmented)} ({len(rejects)} variants rejected)")
