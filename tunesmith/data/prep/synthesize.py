"""`tunesmith data generate`: a teacher writes question/answer pairs about each chunk.

Three prompting strategies: `json_list` asks for all N pairs of a chunk in one JSON reply (capable
teachers); `question_then_answer` asks for one question per call, each opening with a different
question word, and then for its answer; `question_for_sentence` picks a sentence of the chunk as the
answer and asks only for a question it answers — extractive, so grounded by construction, which is
what a very small local teacher (SmolLM2-135M) can do reliably.
Every pair passes the same filters; each one that fails is written to the rejects file with its reason.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal, Optional

import typer
from pydantic import Field, field_validator

from tunesmith.cli import ConfigArg, ForceOpt, OutOpt, SetOpt, console
from tunesmith.config import Strict
from tunesmith.data.prep.artifacts import skip_if_up_to_date, write_step_outputs
from tunesmith.hooks import check_hook_path, import_callable
from tunesmith.data.prep.progress import Progress, rich_progress
from tunesmith.data.prep.rows import ChatRow, Chunk, Reject, parse_rows
from tunesmith.data.prep.teacher import Teacher, TeacherConfig, TeacherFailure, make_teacher
from tunesmith.files import read_json, read_jsonl
from tunesmith.records import DataError, TunesmithError

Validator = Callable[[str], Any]


class TaskConfig(Strict):
    """What the fine-tuned model should learn to produce; the teacher is told the same."""

    name: str = "qa"
    kind: Literal["free", "json", "query"] = Field("free", description="free text answers, JSON answers, or queries/code")
    instructions: str = Field("Ask about facts stated in the text.", description="What to ask about, added to the teacher prompt")
    answer_format: str = Field("a short answer in one or two sentences", description="How answers must look, told to the teacher")
    system_prompt: str | None = Field(None, description="System message put in front of every generated chat")
    include_context: bool = Field(False, description="Put the chunk into the user turn (reading comprehension) instead of closed-book")
    json_schema: str | None = Field(None, description="JSON Schema file every answer must match (kind json)")
    validator: str | None = Field(None, description="Dotted path pkg.module:function that accepts or rejects an answer")
    grounding_min: float | None = Field(
        0.6, ge=0, le=1, description="Share of the answer's words that must occur in the chunk (None: no check; off for queries)"
    )

    @field_validator("validator")
    @classmethod
    def _dotted_path(cls, value: str | None) -> str | None:
        return None if value is None else check_hook_path(value)


class GenerateConfig(Strict):
    teacher: TeacherConfig = TeacherConfig()
    task: TaskConfig = TaskConfig()
    pairs_per_chunk: int = Field(3, ge=1)
    strategy: Literal["json_list", "question_then_answer", "question_for_sentence"] = "json_list"
    question_starts: list[str] = Field(["What", "How", "Which", "Why", "When", "Where", "Who"], min_length=1)
    min_question_chars: int = Field(10, ge=1)
    max_question_chars: int = Field(400, ge=1)
    min_answer_chars: int = Field(1, ge=1)
    max_answer_chars: int = Field(2000, ge=1)
    deduplicate: bool = True


SYSTEM = "You write training data for a domain assistant. Follow the requested output format exactly."


def json_list_prompt(chunk: str, config: GenerateConfig) -> list[dict[str, str]]:
    task = config.task
    return [
        {"role": "system", "content": SYSTEM},
        {
            "role": "user",
            "content": (
                f"Text:\n<<<\n{chunk}\n>>>\n\nWrite {config.pairs_per_chunk} different question/answer pairs about this text. "
                f"{task.instructions} Each answer must be {task.answer_format}. "
                'Reply with only a JSON array: [{"question": "...", "answer": "..."}, ...]'
            ),
        },
    ]


def question_prompt(chunk: str, start: str, config: GenerateConfig) -> list[dict[str, str]]:
    return [
        {
            "role": "user",
            "content": (
                f"Text:\n{chunk}\n\nWrite one question that starts with \"{start}\" and is answered by the text above. "
                f"{config.task.instructions} Reply with the question only."
            ),
        }
    ]


def sentence_question_prompt(chunk: str, sentence: str, start: str, config: GenerateConfig) -> list[dict[str, str]]:
    return [
        {
            "role": "user",
            "content": (
                f"Text:\n{chunk}\n\nSentence: {sentence}\n\nWrite one question that starts with \"{start}\" and is answered by "
                f"the sentence above. {config.task.instructions} Reply with the question only."
            ),
        }
    ]


# A sentence ends at . ! ? before whitespace and a capital/digit, or at a line break; headings are not answers.
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9\"'(])|\n+")


def answer_sentences(chunk: str, min_words: int = 5) -> list[str]:
    """Candidate answers: the chunk's sentences with enough words, headings and list markers removed."""
    sentences = []
    for piece in _SENTENCE_END.split(chunk):
        piece = piece.strip().lstrip("-*• ").strip()
        if piece and not piece.startswith("#") and len(piece.split()) >= min_words:
            sentences.append(piece)
    return sentences


def answer_prompt(chunk: str, question: str, config: GenerateConfig) -> list[dict[str, str]]:
    return [
        {
            "role": "user",
            "content": (
                f"Text:\n{chunk}\n\nQuestion: {question}\n\nAnswer the question using only the text above. "
                f"The answer must be {config.task.answer_format}. Reply with the answer only."
            ),
        }
    ]


class MalformedOutput(ValueError):
    pass


_FENCE = re.compile(r"^```[\w-]*\s*|\s*```$", re.M)
_QA_LINES = re.compile(r"(?:^|\n)\s*(?:\d+[.)]\s*)?Q(?:uestion)?\s*\d*\s*[:.]\s*(?P<q>.+?)\s*\n\s*A(?:nswer)?\s*\d*\s*[:.]\s*(?P<a>.+?)(?=\n\s*(?:\d+[.)]\s*)?Q(?:uestion)?\s*\d*\s*[:.]|\Z)", re.S | re.I)


def parse_pairs(reply: str) -> list[dict[str, str]]:
    """Pairs from a teacher reply: a JSON array (possibly fenced or wrapped in prose), else Q:/A: lines."""
    text = _FENCE.sub("", reply.strip())
    start, end = text.find("["), text.rfind("]")
    if start != -1 and end > start:
        try:
            items = json.loads(text[start : end + 1])
        except json.JSONDecodeError:
            items = None
        if isinstance(items, list):
            pairs = [
                {"question": item["question"].strip(), "answer": str(item["answer"]).strip() if not isinstance(item["answer"], (dict, list)) else json.dumps(item["answer"], ensure_ascii=False)}
                for item in items
                if isinstance(item, dict) and isinstance(item.get("question"), str) and item.get("answer") is not None
            ]
            if pairs:
                return pairs
    pairs = [{"question": m["q"].strip(), "answer": m["a"].strip()} for m in _QA_LINES.finditer(text)]
    if pairs:
        return pairs
    raise MalformedOutput(f"malformed teacher output (no JSON array of question/answer objects): {reply[:160]!r}")


def clean_question(reply: str) -> str:
    line = next((line.strip() for line in reply.strip().splitlines() if line.strip()), "")
    line = re.sub(r"^(?:Q(?:uestion)?\s*[:.]\s*|\d+[.)]\s*)", "", line, flags=re.I).strip().strip('"')
    return line


def clean_answer(reply: str, kind: str) -> str:
    text = reply.strip()
    if kind in ("json", "query"):
        return _FENCE.sub("", text).strip()
    return re.sub(r"^A(?:nswer)?\s*[:.]\s*", "", text, flags=re.I).strip()


_WORD = re.compile(r"\w+", re.U)


def grounding(answer: str, chunk: str) -> float:
    """Share of the answer's words (3+ letters) that the chunk contains.

    Hand-written because no maintained library scores lexical support of a short answer by its source;
    this cheap check catches answers the teacher invented rather than read.
    """
    chunk_words = {w.lower() for w in _WORD.findall(chunk)}
    words = [w.lower() for w in _WORD.findall(answer) if len(w) >= 3]
    if not words:
        return 1.0 if answer.strip().lower() in chunk.lower() else 0.0
    return sum(w in chunk_words for w in words) / len(words)


def load_validator(dotted: str) -> Validator:
    return import_callable(dotted, "task.validator")


def schema_validator(schema_path: str) -> Validator:
    import jsonschema

    try:
        schema = read_json(schema_path)
        jsonschema.Draft202012Validator.check_schema(schema)
    except DataError as e:
        raise TunesmithError(f"task.json_schema {e.issues[0]}") from None
    except jsonschema.SchemaError as e:
        raise TunesmithError(f"task.json_schema {schema_path}: not a usable JSON Schema ({e.message})") from None
    checker = jsonschema.Draft202012Validator(schema)

    def validate(answer: str) -> str | None:
        try:
            value = json.loads(answer)
        except json.JSONDecodeError as e:
            return f"answer is not valid JSON ({e.msg})"
        error = jsonschema.exceptions.best_match(checker.iter_errors(value))
        return None if error is None else f"answer does not match the schema: {error.message}"

    return validate


def run_validator(validator: Validator, answer: str) -> str | None:
    try:
        verdict = validator(answer)
    except Exception as e:  # a user hook: whatever it raises is a rejection reason, not a crash
        return f"validator raised {type(e).__name__}: {e}"
    if verdict is None or verdict is True:
        return None
    return verdict if isinstance(verdict, str) else "validator rejected the answer"


def _normalized(text: str) -> str:
    return " ".join(_WORD.findall(text.lower()))


class PairFilter:
    def __init__(self, config: GenerateConfig):
        self.config = config
        task = config.task
        self.validators: list[Validator] = []
        if task.json_schema:
            self.validators.append(schema_validator(task.json_schema))
        if task.validator:
            self.validators.append(load_validator(task.validator))
        # Queries and JSON rarely reuse the chunk's words, so grounding only applies to free answers.
        self.grounding_min = task.grounding_min if task.kind == "free" else None
        self.seen: set[str] = set()

    def reject_reason(self, question: str, answer: str, chunk: str) -> str | None:
        c = self.config
        if not c.min_question_chars <= len(question) <= c.max_question_chars:
            return f"question length {len(question)} outside {c.min_question_chars}..{c.max_question_chars} characters"
        if not c.min_answer_chars <= len(answer) <= c.max_answer_chars:
            return f"answer length {len(answer)} outside {c.min_answer_chars}..{c.max_answer_chars} characters"
        for validator in self.validators:
            reason = run_validator(validator, answer)
            if reason:
                return reason
        if self.grounding_min is not None:
            score = grounding(answer, chunk)
            if score < self.grounding_min:
                return f"answer not grounded in the chunk ({score:.0%} of its words occur there, need {self.grounding_min:.0%})"
        if c.deduplicate:
            key = _normalized(question)
            if key in self.seen:
                return "duplicate question"
            self.seen.add(key)
        return None


def _training_row(question: str, answer: str, chunk: Chunk, config: GenerateConfig, teacher: Teacher) -> ChatRow:
    task = config.task
    user = f"{chunk.text}\n\n{question}" if task.include_context else question
    messages = [{"role": "system", "content": task.system_prompt}] if task.system_prompt else []
    messages += [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]
    return ChatRow(messages=messages, doc_id=chunk.doc_id, chunk_id=chunk.chunk_id, topic=chunk.topic,
                   source=chunk.source, task=task.name, teacher=teacher.config.model)


def _reject(reason: str, chunk: Chunk, question: str | None = None, answer: str | None = None) -> Reject:
    return Reject(reason=reason, chunk_id=chunk.chunk_id, source=chunk.source, question=question, answer=answer)


def generate_pairs(
    chunks: list[Chunk], config: GenerateConfig, teacher: Teacher, progress: Progress | None = None
) -> tuple[list[ChatRow], list[Reject]]:
    """(accepted training rows, rejected pairs with reasons)."""
    progress = progress or Progress()
    pair_filter = PairFilter(config)
    candidates: list[tuple[Chunk, str, str]] = []  # (chunk, question, answer)
    rejects: list[Reject] = []

    if config.strategy == "json_list":
        progress.phase("generate: asking the teacher", len(chunks))
        replies = teacher.complete([json_list_prompt(c.text, config) for c in chunks], progress.advance)
        for chunk_row, reply in zip(chunks, replies):
            if isinstance(reply, TeacherFailure):
                rejects.append(_reject(reply.reason, chunk_row))
                continue
            try:
                pairs = parse_pairs(reply)
            except MalformedOutput as e:
                rejects.append(_reject(str(e), chunk_row))
                continue
            for pair in pairs[: config.pairs_per_chunk]:
                candidates.append((chunk_row, pair["question"], clean_answer(pair["answer"], config.task.kind)))
    elif config.strategy == "question_for_sentence":
        starts = config.question_starts
        jobs_s: list[tuple[Chunk, str, str]] = []  # (chunk, answer sentence, question start)
        for chunk_row in chunks:
            sentences = answer_sentences(chunk_row.text)
            if not sentences:
                rejects.append(_reject("chunk has no sentence to ask about", chunk_row))
                continue
            for i in range(min(config.pairs_per_chunk, len(sentences) * len(starts))):
                jobs_s.append((chunk_row, sentences[i % len(sentences)], starts[(i // len(sentences) + i) % len(starts)]))
        progress.phase("generate: questions", len(jobs_s))
        replies = teacher.complete([sentence_question_prompt(c.text, sent, s, config) for c, sent, s in jobs_s], progress.advance)
        for (chunk_row, sentence, _), reply in zip(jobs_s, replies):
            if isinstance(reply, TeacherFailure):
                rejects.append(_reject(reply.reason, chunk_row, answer=sentence))
                continue
            question = clean_question(reply)
            if not question.endswith("?"):
                rejects.append(_reject(f"malformed teacher output (not a question): {reply[:160]!r}", chunk_row, question=question, answer=sentence))
                continue
            candidates.append((chunk_row, question, sentence))
    else:
        starts = config.question_starts
        jobs = [(c, starts[i % len(starts)]) for c in chunks for i in range(config.pairs_per_chunk)]
        progress.phase("generate: questions", len(jobs))
        question_replies = teacher.complete([question_prompt(c.text, s, config) for c, s in jobs], progress.advance)
        asked: list[tuple[Chunk, str]] = []
        for (chunk_row, _), reply in zip(jobs, question_replies):
            if isinstance(reply, TeacherFailure):
                rejects.append(_reject(reply.reason, chunk_row))
                continue
            question = clean_question(reply)
            if not question.endswith("?"):
                rejects.append(_reject(f"malformed teacher output (not a question): {reply[:160]!r}", chunk_row, question=question))
                continue
            asked.append((chunk_row, question))
        progress.phase("generate: answers", len(asked))
        answer_replies = teacher.complete([answer_prompt(c.text, q, config) for c, q in asked], progress.advance)
        for (chunk_row, question), reply in zip(asked, answer_replies):
            if isinstance(reply, TeacherFailure):
                rejects.append(_reject(reply.reason, chunk_row, question=question))
                continue
            candidates.append((chunk_row, question, clean_answer(reply, config.task.kind)))

    accepted: list[ChatRow] = []
    for chunk_row, question, answer in candidates:
        reason = pair_filter.reject_reason(question, answer, chunk_row.text)
        if reason:
            rejects.append(_reject(reason, chunk_row, question, answer))
        else:
            accepted.append(_training_row(question, answer, chunk_row, config, teacher))
    return accepted, rejects


def reject_counts(rejects: list[Reject]) -> dict[str, int]:
    """Rejections by kind of reason (the part before any detail), for the manifest and stats."""
    counts: dict[str, int] = {}
    for reject in rejects:
        kind = re.split(r"[(:]", reject.reason, maxsplit=1)[0].strip()
        counts[kind] = counts.get(kind, 0) + 1
    return counts


def generate_command(
    input: Annotated[Path, typer.Option("--input", "-i", help="Chunks file from `tunesmith data ingest`", show_default=False)],
    out: OutOpt, config: ConfigArg = None, overrides: SetOpt = None,
    teacher: Annotated[Optional[str], typer.Option(help="local (transformers) or openai (any OpenAI-compatible endpoint) (generate.teacher.kind)")] = None,
    model: Annotated[Optional[str], typer.Option(help="Teacher model name (generate.teacher.model)")] = None,
    pairs_per_chunk: Annotated[Optional[int], typer.Option("--pairs-per-chunk", "-n", help="generate.pairs_per_chunk")] = None,
    strategy: Annotated[Optional[str], typer.Option(help="json_list, question_then_answer or question_for_sentence (generate.strategy)")] = None,
    force: ForceOpt = False,
) -> None:
    """Let a teacher LLM write question/answer pairs about every chunk, filtered; rejects kept with reasons."""
    from tunesmith.data.prep.config import step_settings

    cfg = step_settings("generate", config, overrides, {
        "generate.teacher.kind": teacher, "generate.teacher.model": model, "generate.pairs_per_chunk": pairs_per_chunk,
        "generate.strategy": strategy})
    settings = cfg.model_dump(mode="json")
    if skip_if_up_to_date(out, "generate", settings, [input], force):
        return
    chunks = parse_rows(Chunk, read_jsonl(input), hint="Pass the chunks file of `tunesmith data ingest` (each row needs `text`).")
    with make_teacher(cfg.teacher) as the_teacher, rich_progress() as progress:
        accepted, rejects = generate_pairs(chunks, cfg, the_teacher, progress)
    rejects_file = write_step_outputs(out, "generate", settings, [input], accepted, rejects, {
        "chunks": len(chunks), "accepted": len(accepted), "rejected": len(rejects),
        "rejected_by_reason": reject_counts(rejects), "teacher_requests": the_teacher.calls,
        "cache_hits": the_teacher.cache_hits})
    console.print(f"{out}: {len(accepted)} pairs kept, {len(rejects)} rejected (see {rejects_file}); "
                  f"{the_teacher.calls} teacher requests, {the_teacher.cache_hits} from cache")
