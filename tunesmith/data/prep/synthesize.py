"""`tunesmith data generate`: question/answer pairs about each chunk, by one of several strategies.

Strategies are functions behind one registry (`STRATEGIES`, see `strategy_help()`); each turns chunks into
candidate pairs. Teacher strategies: `json_list` asks for all N pairs of a chunk in one JSON reply (capable
teachers); `question_then_answer` asks for one question per call, each opening with a different question
word, and then for its answer; `question_for_sentence` picks a sentence of the chunk as the answer and asks
only for a question it answers (extractive, what a very small local teacher can do). Without an LLM:
`facts` reads each sentence's structure and entities (tunesmith/data/prep/facts.py) and renders every fact
as several questions and cloze items, the path that teaches a small model the documents' facts.
Every candidate then passes the same checks (`PairFilter`: the question check, grounding, validators,
duplicates); each one that fails is written to the rejects file with its reason.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from contextlib import nullcontext
from typing import Annotated, Any, Literal, Optional

import typer
from pydantic import Field, field_validator

from tunesmith.cli import ConfigArg, ForceOpt, OutOpt, SetOpt, console
from tunesmith.config import Strict
from tunesmith.data.prep.artifacts import skip_if_up_to_date, write_step_outputs
from tunesmith.data.prep.facts import FactsConfig
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
    strategy: str = Field("json_list", description="How pairs are made; see STRATEGIES (tunesmith data generate --help)")
    question_starts: list[str] = Field(["What", "How", "Which", "Why", "When", "Where", "Who"], min_length=1)
    min_question_chars: int = Field(10, ge=1)
    max_question_chars: int = Field(400, ge=1)
    min_answer_chars: int = Field(1, ge=1)
    max_answer_chars: int = Field(2000, ge=1)
    deduplicate: bool = True
    require_subject: bool | None = Field(
        None, description="Reject questions that name nothing of their chunk or refer to 'the text', and questions "
                          "that contain their own answer (None: for free-text answers, not for JSON or queries)")
    facts: FactsConfig = Field(default_factory=FactsConfig, description="Settings of the `facts` strategy")

    @field_validator("strategy")
    @classmethod
    def _known_strategy(cls, value: str) -> str:
        if value not in STRATEGIES:
            raise ValueError(f"unknown strategy {value!r}; one of: {', '.join(STRATEGIES)}")
        return value


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


def user_turn(text: str) -> list[dict[str, str]]:
    """A prompt of one user message (the teacher's chat template adds the rest)."""
    return [{"role": "user", "content": text}]


def question_prompt(chunk: str, start: str, config: GenerateConfig) -> list[dict[str, str]]:
    return user_turn(
        f"Text:\n{chunk}\n\nWrite one question that starts with \"{start}\" and is answered by the text above. "
        f"{config.task.instructions} Reply with the question only."
    )


def sentence_question_prompt(chunk: str, sentence: str, start: str, config: GenerateConfig) -> list[dict[str, str]]:
    return user_turn(
        f"Text:\n{chunk}\n\nSentence: {sentence}\n\nWrite one question that starts with \"{start}\" and is answered by "
        f"the sentence above. {config.task.instructions} Reply with the question only."
    )


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
    return user_turn(
        f"Text:\n{chunk}\n\nQuestion: {question}\n\nAnswer the question using only the text above. "
        f"The answer must be {config.task.answer_format}. Reply with the answer only."
    )


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


# "What is the answer to this question?", "What does the text say?": questions about the page, not its subject.
SELF_REFERENCE = re.compile(r"\b(?:the|this|that|above|following|given)\s+(?:text|passage|document|article|paragraph|"
                            r"sentence|excerpt|section|chunk|question)\b", re.I)
GENERIC_WORDS = {
    "what", "which", "when", "where", "who", "whom", "whose", "why", "how", "does", "did", "do", "is", "are", "was",
    "were", "the", "this", "that", "these", "those", "there", "their", "about", "with", "from", "into", "for", "and",
    "text", "passage", "document", "article", "paragraph", "sentence", "section", "chapter", "author", "information",
    "answer", "question", "origin", "source", "example", "topic", "content", "context", "statement", "thing",
    "things", "something", "mentioned", "described", "stated", "given", "provided", "following", "above", "main",
    "idea", "purpose", "meaning", "mean", "meant", "said", "says", "tell", "explain", "describe", "have", "has",
}


def names_subject(question: str, chunk: str) -> bool:
    """Does the question name something the chunk is about: a content word (not a question or filler word) of the chunk?

    Hand-written, like `grounding`: a cheap lexical check that catches questions a small teacher writes about
    the page itself ("What is the origin of the information in the text?").
    """
    def stem(word: str) -> str:  # "payload" and "payloads" are one word here
        return word.lower()[:5]

    chunk_stems = {stem(w) for w in _WORD.findall(chunk)}
    return any(stem(w) in chunk_stems and w.lower() not in GENERIC_WORDS and (len(w) >= 3 or w.isdigit())
               for w in _WORD.findall(question))


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
        self.require_subject = config.require_subject if config.require_subject is not None else task.kind == "free"

    def question_problem(self, question: str, chunk: Chunk | str, form: str = "question") -> str | None:
        """Why a question is unusable, or None: the one question check every strategy goes through."""
        c = self.config
        text = chunk if isinstance(chunk, str) else chunk.text
        if not c.min_question_chars <= len(question) <= c.max_question_chars:
            return f"question length {len(question)} outside {c.min_question_chars}..{c.max_question_chars} characters"
        if form == "question" and not question.rstrip().endswith("?"):
            return f"malformed teacher output (not a question): {question[:160]!r}"
        if self.require_subject:
            if SELF_REFERENCE.search(question):
                return f"question refers to the text instead of naming its subject: {question[:120]!r}"
            if not names_subject(question, text):
                return f"question names nothing the chunk is about: {question[:120]!r}"
        return None

    def reject_reason(self, question: str, answer: str, chunk: Chunk | str, form: str = "question") -> str | None:
        c = self.config
        text = chunk if isinstance(chunk, str) else chunk.text
        reason = self.question_problem(question, text, form)
        if reason:
            return reason
        if not c.min_answer_chars <= len(answer) <= c.max_answer_chars:
            return f"answer length {len(answer)} outside {c.min_answer_chars}..{c.max_answer_chars} characters"
        for validator in self.validators:
            reason = run_validator(validator, answer)
            if reason:
                return reason
        if self.grounding_min is not None:
            score = grounding(answer, text)
            if score < self.grounding_min:
                return f"answer not grounded in the chunk ({score:.0%} of its words occur there, need {self.grounding_min:.0%})"
        short = _normalized(answer)
        if self.require_subject and len(short) >= 3 and re.search(rf"\b{re.escape(short)}\b", _normalized(question)):
            return "question gives its answer away"
        if c.deduplicate:
            key = _normalized(question)
            if key in self.seen:
                return "duplicate question"
            self.seen.add(key)
        return None


@dataclass
class Candidate:
    """A question/answer pair a strategy proposes for a chunk, before the filters."""

    chunk: Chunk
    question: str
    answer: str
    form: Literal["question", "instruction"] = "question"  # instructions ("Fill in the blank: ...") need no "?"
    meta: dict[str, Any] = field(default_factory=dict)  # extra fields for the training row


Rejects = list[Reject]
QuestionCheck = Callable[[str, Chunk, str], "str | None"]  # (question, chunk row, form) → reason or None


@dataclass(frozen=True)
class Strategy:
    """One way of turning chunks into candidate pairs; `uses_teacher`: needs an LLM (teacher settings apply)."""

    name: str
    run: Callable[[list[Chunk], GenerateConfig, Teacher | None, Progress, QuestionCheck], tuple[list[Candidate], Rejects]]
    uses_teacher: bool
    help: str


STRATEGIES: dict[str, Strategy] = {}


def strategy(name: str, *, uses_teacher: bool, help: str):
    def register(run):
        STRATEGIES[name] = Strategy(name, run, uses_teacher, help)
        return run

    return register


@strategy("json_list", uses_teacher=True, help="the teacher writes all pairs of a chunk as one JSON array (capable teachers)")
def _json_list(chunks, config, teacher, progress, check_question):
    progress.phase("generate: asking the teacher", len(chunks))
    replies = teacher.complete([json_list_prompt(c.text, config) for c in chunks], progress.advance)
    candidates, rejects = [], []
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
            candidates.append(Candidate(chunk_row, pair["question"], clean_answer(pair["answer"], config.task.kind)))
    return candidates, rejects


@strategy("question_then_answer", uses_teacher=True,
          help="one question per call, each opening with another question word, then its answer")
def _question_then_answer(chunks, config, teacher, progress, check_question):
    starts = config.question_starts
    jobs = [(c, starts[i % len(starts)]) for c in chunks for i in range(config.pairs_per_chunk)]
    progress.phase("generate: questions", len(jobs))
    question_replies = teacher.complete([question_prompt(c.text, s, config) for c, s in jobs], progress.advance)
    rejects: Rejects = []
    asked: list[tuple[Chunk, str]] = []
    for (chunk_row, _), reply in zip(jobs, question_replies):
        if isinstance(reply, TeacherFailure):
            rejects.append(_reject(reply.reason, chunk_row))
            continue
        question = clean_question(reply)
        reason = check_question(question, chunk_row, "question")  # early, so no answer is asked for a bad question
        if reason:
            rejects.append(_reject(reason, chunk_row, question=question))
            continue
        asked.append((chunk_row, question))
    progress.phase("generate: answers", len(asked))
    answer_replies = teacher.complete([answer_prompt(c.text, q, config) for c, q in asked], progress.advance)
    candidates = []
    for (chunk_row, question), reply in zip(asked, answer_replies):
        if isinstance(reply, TeacherFailure):
            rejects.append(_reject(reply.reason, chunk_row, question=question))
            continue
        candidates.append(Candidate(chunk_row, question, clean_answer(reply, config.task.kind)))
    return candidates, rejects


@strategy("question_for_sentence", uses_teacher=True,
          help="a sentence of the chunk is the answer, the teacher writes a question for it (small local teachers)")
def _question_for_sentence(chunks, config, teacher, progress, check_question):
    starts = config.question_starts
    rejects: Rejects = []
    jobs: list[tuple[Chunk, str, str]] = []  # (chunk, answer sentence, question start)
    for chunk_row in chunks:
        sentences = answer_sentences(chunk_row.text)
        if not sentences:
            rejects.append(_reject("chunk has no sentence to ask about", chunk_row))
            continue
        for i in range(min(config.pairs_per_chunk, len(sentences) * len(starts))):
            jobs.append((chunk_row, sentences[i % len(sentences)], starts[(i // len(sentences) + i) % len(starts)]))
    progress.phase("generate: questions", len(jobs))
    replies = teacher.complete([sentence_question_prompt(c.text, sent, s, config) for c, sent, s in jobs], progress.advance)
    candidates = []
    for (chunk_row, sentence, _), reply in zip(jobs, replies):
        if isinstance(reply, TeacherFailure):
            rejects.append(_reject(reply.reason, chunk_row, answer=sentence))
            continue
        candidates.append(Candidate(chunk_row, clean_question(reply), sentence))
    return candidates, rejects


@strategy("facts", uses_teacher=False,
          help="no LLM: questions, cloze items and 'tell me about' from each sentence's structure and entities "
               "(spaCy), several renderings per fact — teaches the documents' facts")
def _facts(chunks, config, teacher, progress, check_question):
    from tunesmith.data.prep.facts import chunk_items, describe, load_spacy

    nlp = load_spacy()
    progress.phase("generate: reading facts", len(chunks))
    candidates, rejects = [], []
    for chunk_row in chunks:
        items, n_statements = chunk_items(chunk_row.text, chunk_row.topic or None, config.facts, nlp)
        if not items:
            rejects.append(_reject(f"no fact found in the chunk ({n_statements} statements)", chunk_row))
        for item in items:
            form = "instruction" if item.rendering in ("cloze", "about") else "question"
            candidates.append(Candidate(chunk_row, item.question, item.answer, form, describe(item)))
        progress.advance(1)
    return candidates, rejects


def strategy_help() -> str:
    return "; ".join(f"{s.name}: {s.help}" for s in STRATEGIES.values())


def _training_row(candidate: Candidate, config: GenerateConfig, teacher_name: str) -> ChatRow:
    task, chunk = config.task, candidate.chunk
    user = f"{chunk.text}\n\n{candidate.question}" if task.include_context else candidate.question
    messages = [{"role": "system", "content": task.system_prompt}] if task.system_prompt else []
    messages += [{"role": "user", "content": user}, {"role": "assistant", "content": candidate.answer}]
    return ChatRow(messages=messages, doc_id=chunk.doc_id, chunk_id=chunk.chunk_id, topic=chunk.topic,
                   source=chunk.source, task=task.name, teacher=teacher_name, strategy=config.strategy, **candidate.meta)


def _reject(reason: str, chunk: Chunk, question: str | None = None, answer: str | None = None) -> Reject:
    return Reject(reason=reason, chunk_id=chunk.chunk_id, source=chunk.source, question=question, answer=answer)


def generate_pairs(
    chunks: list[Chunk], config: GenerateConfig, teacher: Teacher | None = None, progress: Progress | None = None
) -> tuple[list[ChatRow], list[Reject]]:
    """(accepted training rows, rejected pairs with reasons): the configured strategy, then the same filters for all."""
    progress = progress or Progress()
    chosen = STRATEGIES[config.strategy]
    if chosen.uses_teacher and teacher is None:
        raise TunesmithError(f"strategy {chosen.name} needs a teacher (generate.teacher)")
    pair_filter = PairFilter(config)
    candidates, rejects = chosen.run(chunks, config, teacher, progress, pair_filter.question_problem)
    teacher_name = teacher.config.model if chosen.uses_teacher and teacher is not None else chosen.name
    accepted: list[ChatRow] = []
    for candidate in candidates:
        reason = pair_filter.reject_reason(candidate.question, candidate.answer, candidate.chunk, candidate.form)
        if reason:
            rejects.append(_reject(reason, candidate.chunk, candidate.question, candidate.answer))
        else:
            accepted.append(_training_row(candidate, config, teacher_name))
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
    strategy: Annotated[Optional[str], typer.Option(help="How pairs are made (generate.strategy, default json_list): " + strategy_help())] = None,
    force: ForceOpt = False,
) -> None:
    """Question/answer pairs about every chunk (by a teacher LLM or, strategy facts, without one), filtered; rejects kept with reasons."""
    from tunesmith.data.prep.config import step_settings

    cfg = step_settings("generate", config, overrides, {
        "generate.teacher.kind": teacher, "generate.teacher.model": model, "generate.pairs_per_chunk": pairs_per_chunk,
        "generate.strategy": strategy})
    settings = cfg.model_dump(mode="json")
    if skip_if_up_to_date(out, "generate", settings, [input], force):
        return
    chunks = parse_rows(Chunk, read_jsonl(input), hint="Pass the chunks file of `tunesmith data ingest` (each row needs `text`).")
    uses_teacher = STRATEGIES[cfg.strategy].uses_teacher
    with (make_teacher(cfg.teacher) if uses_teacher else nullcontext()) as the_teacher, rich_progress() as progress:
        accepted, rejects = generate_pairs(chunks, cfg, the_teacher, progress)
    calls, cache_hits = (the_teacher.calls, the_teacher.cache_hits) if the_teacher else (0, 0)
    rejects_file = write_step_outputs(out, "generate", settings, [input], accepted, rejects, {
        "chunks": len(chunks), "accepted": len(accepted), "rejected": len(rejects),
        "rejected_by_reason": reject_counts(rejects), "teacher_requests": calls, "cache_hits": cache_hits})
    console.print(f"{out}: {len(accepted)} pairs kept, {len(rejects)} rejected (see {rejects_file})"
                  + (f"; {calls} teacher requests, {cache_hits} from cache" if the_teacher else ""))
