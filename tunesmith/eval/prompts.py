"""The prompt of each variant for each test item: zero-shot, few-shot (k solved examples as earlier chat turns)
and RAG (retrieved passages above the question). Everything else (decoding, metrics) is the same for all variants.

Prompts are guarded against the length limit by dropping the least similar examples / passages first, and a
pool item whose prompt *is* the test prompt is never shown (it would hand the model the answer if the test set
leaked into the training set; the leakage check reports such items separately).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from tunesmith.data.tokenize import render_prompt
from tunesmith.eval.retrieval import VectorIndex
from tunesmith.records import Example, Message, TunesmithError


def prompt_of(example: Example) -> list[Message]:
    """The conversation up to (not including) the final assistant turn."""
    if not example.is_chat or not example.messages or example.messages[-1]["role"] != "assistant":
        raise TunesmithError(f"{example.source}: an eval item must be a chat ending with the assistant's reference answer")
    return example.messages[:-1]


def reference_of(example: Example) -> str:
    return example.messages[-1]["content"]


def question_of(example: Example) -> str:
    """The text retrieval searches with: the last user message."""
    return next(m["content"] for m in reversed(prompt_of(example)) if m["role"] == "user")


def _norm(text: str) -> str:
    return " ".join(text.split())


def _same(a: str, b: str) -> bool:
    return _norm(a) == _norm(b)


@dataclass
class BuiltPrompt:
    conversation: list[Message]
    shown: list[int]  # indices (pool items or passages) put in the prompt, in prompt order
    dropped: int = 0  # how many were dropped to fit max_prompt_tokens


class PromptLengthGuard:
    def __init__(self, tokenizer, max_prompt_tokens: int):
        self.tokenizer = tokenizer
        self.max_prompt_tokens = max_prompt_tokens

    def n_tokens(self, conversation: list[Message]) -> int:
        return len(self.tokenizer(render_prompt(self.tokenizer, conversation), add_special_tokens=False)["input_ids"])

    def fit(self, make, chosen: list[int]) -> BuiltPrompt:
        """make(chosen) -> conversation; drop the last (least relevant) of `chosen` until it fits."""
        kept = list(chosen)
        while kept and self.n_tokens(make(kept)) > self.max_prompt_tokens:
            kept.pop()
        return BuiltPrompt(make(kept), kept, dropped=len(chosen) - len(kept))


class FewShotBuilder:
    """k solved examples from the pool, by embedding similarity to the test question or at random."""

    def __init__(self, pool: list[Example], tokenizer, k: int = 3, select: str = "similar", seed: int = 0,
                 max_prompt_tokens: int = 1536, cache_dir: str | None = None, index_kind: str = "flat"):
        self.pool = [ex for ex in pool if ex.is_chat and ex.messages and ex.messages[-1]["role"] == "assistant"]
        if not self.pool:
            raise TunesmithError("few-shot needs a pool of solved examples (data.train) and it is empty")
        self.k, self.select, self.seed = k, select, seed
        self.guard = PromptLengthGuard(tokenizer, max_prompt_tokens)
        self.pool_questions = [question_of(ex) for ex in self.pool]
        self.index = (VectorIndex.build(self.pool_questions, cache_dir, index_kind) if select == "similar" else None)

    def candidates(self, tests: list[Example]) -> list[list[int]]:
        """Per test item, pool indices best first (most similar, or a seeded random draw)."""
        questions = [question_of(ex) for ex in tests]
        if self.index is not None:
            hits = self.index.search(questions, self.k + 8)  # spare hits for the ones excluded below
            ranked = [[i for i, _ in row] for row in hits]
        else:
            ranked = []
            for n, _ in enumerate(tests):
                rng = random.Random(self.seed * 1_000_003 + n)
                ranked.append(rng.sample(range(len(self.pool)), min(len(self.pool), self.k + 8)))
        return [[i for i in row if not _same(self.pool_questions[i], q)][: self.k] for row, q in zip(ranked, questions)]

    def build(self, tests: list[Example]) -> list[BuiltPrompt]:
        built = []
        for test, chosen in zip(tests, self.candidates(tests)):
            prompt = prompt_of(test)
            system = [m for m in prompt if m["role"] == "system"]
            rest = [m for m in prompt if m["role"] != "system"]

            def make(kept: list[int], system=system, rest=rest) -> list[Message]:
                shots: list[Message] = []
                for i in reversed(kept):  # the most similar example ends up next to the question
                    shots += [m for m in self.pool[i].messages if m["role"] != "system"]
                return system + shots + rest

            built.append(self.guard.fit(make, chosen))
        return built


def training_pairs_as_passages(pool: list[Example]) -> tuple[list[str], list[str]]:
    """The solved training examples as RAG passages ("Question: ...\nAnswer: ..."), and each one's question, which
    is what the index embeds (see RagBuilder)."""
    solved = [ex for ex in pool if ex.is_chat and ex.messages and ex.messages[-1]["role"] == "assistant"]
    return [f"Question: {question_of(ex)}\nAnswer: {reference_of(ex)}" for ex in solved], [question_of(ex) for ex in solved]


class RagBuilder:
    """The top-k passages of a corpus above the question, through `template` ({context} and {prompt}).

    `keys`, one per passage, is what the index embeds and the question is matched against (default: the passage).
    Over training pairs it is the pair's question: question to question is the match that matters, and it is the
    few-shot index's own text, so one cached index serves both. Embedding the whole pairs instead cost about 3 of
    the 4 minutes of a first DBLP-QuAD eval's indexing (7,000 pairs of ~175 tokens: 25 s per 1,000, against 8 s
    per 1,000 questions; MiniLM, 2 threads).
    """

    def __init__(self, passages: list[str], tokenizer, k: int = 3, template: str = "{context}\n\n{prompt}",
                 max_prompt_tokens: int = 1536, cache_dir: str | None = None, index_kind: str = "flat",
                 keys: list[str] | None = None):
        if "{context}" not in template or "{prompt}" not in template:
            raise TunesmithError("retrieval.rag_template must contain {context} and {prompt}")
        if keys is not None and len(keys) != len(passages):
            raise ValueError(f"{len(keys)} keys for {len(passages)} passages")
        self.passages, self.k, self.template = passages, k, template
        self.guard = PromptLengthGuard(tokenizer, max_prompt_tokens)
        self.index = VectorIndex.build(passages if keys is None else keys, cache_dir, index_kind)

    def build(self, tests: list[Example]) -> list[BuiltPrompt]:
        questions = [question_of(ex) for ex in tests]
        hits = self.index.search(questions, self.k + 4)
        built = []
        for test, question, row in zip(tests, questions, hits):
            # A training pair that is this very question would be the answer itself (a leak), not context.
            own_pair = _norm(f"Question: {question}\nAnswer:")
            chosen = [i for i, _ in row if not _norm(self.passages[i]).startswith(own_pair)][: self.k]
            prompt = prompt_of(test)

            def make(kept: list[int], prompt=prompt, question=question) -> list[Message]:
                context = "\n\n".join(f"[{n + 1}] {self.passages[i]}" for n, i in enumerate(kept))
                content = self.template.format(context=context, prompt=question) if kept else question
                out = [dict(m) for m in prompt]
                last_user = max(j for j, m in enumerate(out) if m["role"] == "user")
                out[last_user] = {"role": "user", "content": content}
                return out

            built.append(self.guard.fit(make, chosen))
        return built
