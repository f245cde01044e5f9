"""`tunesmith data relabel`: the teacher answers every training prompt (sequence-level distillation).

Each row of a training file is read exactly as `tunesmith train` reads it (format, template, system prompt: the
settings of the `relabel:` section, the same keys as a run config's `data:` section); the conversation up to its last
assistant turn goes to the teacher, and the output row is that conversation with the teacher's answer as the last
turn (the original answer kept as `reference`). The student then trains on the output with the ordinary causal_lm
objective. This works across tokenizers, since only text passes between the two models (Kim & Rush 2016).

The teacher is the one of `tunesmith data generate` (tunesmith/data/prep/teacher.py): `kind: local` loads a
tunesmith run folder or a model and answers through tunesmith's one generation path, `kind: openai` asks any
OpenAI-compatible endpoint; replies are cached, so a rerun asks only for what is missing. Greedy by default
(temperature 0): the teacher's mode, which is what sequence-level KD approximates.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal, Optional

import typer
from pydantic import Field

from tunesmith.cli import ConfigArg, ForceOpt, InputOpt, OutOpt, SetOpt, console
from tunesmith.config import DataConfig, Strict, TemplateConfig
from tunesmith.data.iris import expand
from tunesmith.data.prep.progress import Progress
from tunesmith.data.prep.artifacts import skip_if_up_to_date, write_step_outputs
from tunesmith.data.prep.rows import ChatRow, Reject
from tunesmith.data.prep.teacher import Teacher, TeacherConfig, TeacherFailure, make_teacher
from tunesmith.records import DataError, TunesmithError


class RelabelConfig(Strict):
    teacher: TeacherConfig = TeacherConfig(kind="local", temperature=0.0, max_tokens=256)
    format: Literal["auto", "messages", "alpaca", "prompt_completion", "template"] = "auto"
    template: TemplateConfig | None = None
    system_prompt: str | None = Field(None, description="Added as a system message to every chat that has none")
    limit: int | None = Field(None, ge=1, description="Only the first N rows (as data.limit of the student's run config)")
    decode_unicode_escapes: bool = Field(False, description="As data.decode_unicode_escapes of the run config")
    iri_prefixes: dict[str, str] = Field(default_factory=dict, description="As data.iri_prefixes of the teacher's run "
                                         "config: the teacher reads and answers compact IRIs; the output is written out")


def relabel_rows(path: Path, cfg: RelabelConfig, teacher: Teacher,
                 progress: Progress | None = None) -> tuple[list[ChatRow], list[Reject]]:
    """(rows with the teacher's answers, rows the teacher could not answer)."""
    from tunesmith.data.formats import load_examples

    data_cfg = DataConfig(train=str(path), format=cfg.format, template=cfg.template, system_prompt=cfg.system_prompt,
                          limit=cfg.limit, decode_unicode_escapes=cfg.decode_unicode_escapes,
                          iri_prefixes=cfg.iri_prefixes)
    examples, issues = load_examples(path, data_cfg)
    if issues:
        raise DataError(issues, hint="relabel reads rows as `tunesmith train` does: set relabel.format / relabel.template")
    prompts, kept = [], []
    for example in examples:
        roles = [m["role"] for m in example.messages] if example.is_chat else []
        if "assistant" not in roles:
            raise TunesmithError(f"{example.source}: no assistant turn to replace (raw text rows have no prompt to answer)")
        last = len(roles) - 1 - roles[::-1].index("assistant")
        prompts.append([dict(m) for m in example.messages[:last]])
        kept.append((example, example.messages[last]["content"]))
    progress = progress or Progress()
    progress.phase("relabel: teacher answers", len(prompts))
    replies = teacher.complete(prompts, progress.advance)
    rows, rejects = [], []
    for (example, reference), prompt, reply in zip(kept, prompts, replies):
        if isinstance(reply, TeacherFailure) or not reply.strip():
            reason = reply.reason if isinstance(reply, TeacherFailure) else "empty answer"
            rejects.append(Reject(reason=reason, source=str(example.source), prompt=prompt[-1]["content"]))
            continue
        messages = prompt + [{"role": "assistant", "content": reply.strip()}]
        rows.append(ChatRow.model_validate({  # the row's other fields (labels such as query_type) are kept
            **example.meta, "source": str(example.source), "teacher": teacher.config.model,
            # written out as the data is (full IRIs): the student's data.iri_prefixes compacts them again
            "messages": [{**m, "content": expand(m["content"], cfg.iri_prefixes)} for m in messages],
            "reference": expand(reference, cfg.iri_prefixes)}))
    return rows, rejects


def relabel_command(
    input: InputOpt, out: OutOpt, config: ConfigArg = None, overrides: SetOpt = None,
    teacher: Annotated[Optional[str], typer.Option(help="The teacher: a run folder or model (kind local), or the endpoint's model name (relabel.teacher.model)")] = None,
    kind: Annotated[Optional[str], typer.Option(help="local or openai (relabel.teacher.kind)")] = None,
    force: ForceOpt = False,
) -> None:
    """A teacher answers every training prompt; the output trains a student (sequence-level distillation)."""
    from tunesmith.data.prep.config import step_settings
    from tunesmith.data.prep.progress import rich_progress

    cfg = step_settings("relabel", config, overrides, {"relabel.teacher.model": teacher, "relabel.teacher.kind": kind})
    settings = cfg.model_dump(mode="json")
    if skip_if_up_to_date(out, "relabel", settings, [input], force):
        return
    with make_teacher(cfg.teacher) as the_teacher, rich_progress() as progress:
        rows, rejects = relabel_rows(input, cfg, the_teacher, progress)
    rejects_file = write_step_outputs(out, "relabel", settings, [input], rows, rejects, {
        "rows": len(rows) + len(rejects), "answered": len(rows), "rejected": len(rejects),
        "teacher_requests": the_teacher.calls, "cache_hits": the_teacher.cache_hits})
    console.print(f"{out}: {len(rows)} rows answered by {cfg.teacher.model}, {len(rejects)} rejected (see {rejects_file}); "
                  f"{the_teacher.calls} teacher requests, {the_teacher.cache_hits} from cache. Next: train the student on "
                  f"it with the causal_lm objective (configs/distill-seqkd.yaml)")
