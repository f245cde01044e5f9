"""The forgetting panel: did tuning damage what the model could do before, on data it was not tuned on?

General data: the Self-Instruct seed tasks shipped in tunesmith/eval/data (see SOURCE.md there). For the base
model and each tuned model: perplexity of general text (instruction, input and human answer as plain text),
perplexity of the human answers given the instruction (chat), answers generated to the instructions (scored
against the human answers with chrF), and for tuned models the mean KL(base || tuned) of next-token
distributions over the human answers. A tuned model is flagged when any of these moves past its threshold.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from tunesmith.eval.metrics import corpus_chrf
from tunesmith.files import atomic_write_json, read_json, read_jsonl
from tunesmith.eval.scoring import answers_and_reference_loss, kl_and_loss, reference_loss
from tunesmith.records import Message, TunesmithError

SHIPPED_GENERAL_DATA = Path(__file__).resolve().parent / "data" / "seed_tasks.jsonl"
# How the scores are computed, in the cache key beside the version: a change that moves a number by rounding
# (2: the answers' perplexity scored in the generation prefill) must not meet scores cached before it.
SCORING = 2


@dataclass
class GeneralTask:
    prompt: list[Message]
    answer: str

    @property
    def as_text(self) -> str:
        return f"{self.prompt[-1]['content']}\n\n{self.answer}"


def load_general_tasks(path: str | Path | None = None, n: int = 40) -> list[GeneralTask]:
    """The first instance of each of the first n seed tasks, as (instruction [+ input]) -> human answer."""
    path = Path(path) if path else SHIPPED_GENERAL_DATA
    if not path.is_file():
        raise TunesmithError(f"forgetting.data {path} not found")
    tasks = []
    for where, row in read_jsonl(path):
        try:
            instance = row["instances"][0]
            prompt = row["instruction"] + (f"\n\n{instance['input']}" if instance.get("input", "").strip() else "")
            answer = instance["output"]
        except (KeyError, IndexError, TypeError, AttributeError):
            raise TunesmithError(f"{where}: expected a Self-Instruct seed task (instruction, instances[{{input, output}}])") from None
        if answer.strip():
            tasks.append(GeneralTask([{"role": "user", "content": prompt}], answer))
        if len(tasks) >= n:
            break
    return tasks


@dataclass
class GeneralScores:
    text_perplexity: float
    answer_perplexity: float
    answer_chrf: float
    kl_from_base: float | None  # None for the base model itself
    answers: list[str]
    seconds: float


def measure_general(model, tokenizer, tasks: list[GeneralTask], base_model=None, max_new_tokens: int = 96,
                    batch_size: int = 16, precision: str = "auto") -> GeneralScores:
    start = time.perf_counter()
    chats = [t.prompt + [{"role": "assistant", "content": t.answer}] for t in tasks]
    text = reference_loss(model, tokenizer, texts=[t.as_text for t in tasks], precision=precision)
    # the answers' loss: where there is a KL to measure, from its pass over the answered chats; else it rides in
    # the forwards that prefill the prompts for generation
    answers, answer, _ = answers_and_reference_loss(model, tokenizer, [t.prompt for t in tasks],
                                                 None if base_model is not None else [t.answer for t in tasks],
                                                 max_new_tokens=max_new_tokens, batch_size=batch_size,
                                                 precision=precision)
    kl = None
    if base_model is not None:
        kl, answer = kl_and_loss(base_model, model, tokenizer, chats=chats, precision=precision)
    return GeneralScores(text.perplexity, answer.perplexity, corpus_chrf(answers, [t.answer for t in tasks]), kl,
                         answers, time.perf_counter() - start)


def base_scores_path(cache_dir: str | Path, model: str, tasks: list[GeneralTask], max_new_tokens: int,
                     batch_size: int, precision: str, device: str = "cpu") -> Path:
    """Where the base model's panel scores are cached: keyed by its weights (not its name), the instructions and
    answers, and every setting that changes a number (batching, precision and the decoding attention's
    implementation move greedy answers), and the tunesmith version (the scoring code). They depend on nothing else,
    so every eval against the same base model measures them once."""
    import torch

    from tunesmith import __version__
    from tunesmith.models.attention import decode_implementation
    from tunesmith.models.loading import model_fingerprint

    decode = decode_implementation(precision, torch.device(device))
    digest = hashlib.sha256(json.dumps([model_fingerprint(model), [[t.prompt, t.answer] for t in tasks], max_new_tokens,
                                        batch_size, precision, __version__, torch.__version__, SCORING,
                                        decode]).encode())
    return Path(cache_dir) / "forgetting" / f"base-{digest.hexdigest()[:24]}.json"


def read_cached_scores(path: Path) -> GeneralScores | None:
    """The cached scores, or None when there are none (or the file is not a complete record: then measured again)."""
    if not path.is_file():
        return None
    try:
        return GeneralScores(**read_json(path))
    except (OSError, ValueError, TypeError, TunesmithError):
        return None


def write_cached_scores(path: Path, scores: GeneralScores) -> None:
    atomic_write_json(path, asdict(scores))


@dataclass
class ForgettingVerdict:
    text_perplexity_change: float  # relative: +0.05 = 5% higher than base
    answer_perplexity_change: float
    chrf_change: float  # points
    kl_from_base: float | None
    flagged: bool
    reasons: list[str]

    def to_dict(self) -> dict:
        return asdict(self)


def judge_forgetting(base: GeneralScores, tuned: GeneralScores, max_perplexity_increase: float, max_kl: float,
                     max_chrf_drop: float) -> ForgettingVerdict:
    text_change = tuned.text_perplexity / base.text_perplexity - 1
    answer_change = tuned.answer_perplexity / base.answer_perplexity - 1
    chrf_change = tuned.answer_chrf - base.answer_chrf
    reasons = []
    if text_change > max_perplexity_increase:
        reasons.append(f"general-text perplexity up {100 * text_change:.0f}% (threshold {100 * max_perplexity_increase:.0f}%)")
    if answer_change > max_perplexity_increase:
        reasons.append(f"perplexity of general answers up {100 * answer_change:.0f}% (threshold {100 * max_perplexity_increase:.0f}%)")
    if -chrf_change > max_chrf_drop:
        reasons.append(f"chrF of answers to general instructions down {-chrf_change:.1f} points (threshold {max_chrf_drop:g})")
    if tuned.kl_from_base is not None and tuned.kl_from_base > max_kl:
        reasons.append(f"KL(base || tuned) {tuned.kl_from_base:.3f} nats/token (threshold {max_kl:g})")
    return ForgettingVerdict(text_change, answer_change, chrf_change, tuned.kl_from_base, bool(reasons), reasons)
