"""Check by code that no test question's phrasing occurs in the generated training data.

    .venv/bin/python bench/knowledge/heldout.py --facts bench/knowledge/data/a/facts.jsonl \
        --questions bench/knowledge/data/a/test.jsonl --train runs/knowledge/a/pairs.jsonl

Every entity name and fact value is masked to one placeholder in both the test questions and the training
prompts, so what is compared is the phrasing template ("which year marks the beginning of <X>"). A test
question counts as seen if any of its word n-grams (default 4, placeholders included) occurs in a training
prompt. Exit code 1 (and the offending questions) if any is seen.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

SLOT = "<x>"
WORD = re.compile(r"<x>|[\w']+")


def masker(facts: list[dict]):
    """A function that replaces every entity name and fact value in a text by the placeholder."""
    names = sorted({f["entity"] for f in facts} | {f["value"] for f in facts}, key=len, reverse=True)
    pattern = re.compile(r"\b(?:" + "|".join(re.escape(n) for n in names) + r")\b", re.I)
    return lambda text: pattern.sub(SLOT, text)


def ngrams(text: str, n: int) -> set[tuple[str, ...]]:
    words = WORD.findall(text.lower())
    # Adjacent placeholders ("<x> <x>", e.g. a name followed by a value) collapse into one.
    words = [w for i, w in enumerate(words) if not (w == SLOT and i and words[i - 1] == SLOT)]
    return {tuple(words[i : i + n]) for i in range(len(words) - n + 1)}


def seen_questions(questions: list[str], prompts: list[str], facts: list[dict], n: int = 4) -> list[tuple[str, list[str]]]:
    """(question, its n-grams found in training prompts) for every test question whose phrasing occurs there."""
    mask = masker(facts)
    train: set[tuple[str, ...]] = set()
    for prompt in prompts:
        train |= ngrams(mask(prompt), n)
    found = []
    for question in questions:
        shared = sorted(" ".join(g) for g in ngrams(mask(question), n) & train)
        if shared:
            found.append((question, shared))
    return found


def training_prompts(path: Path) -> list[str]:
    prompts = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            row = json.loads(line)
            prompts += [m["content"] for m in row.get("messages", []) if m["role"] != "assistant"]
            if "text" in row:
                prompts.append(row["text"])
    return prompts


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--facts", type=Path, required=True)
    parser.add_argument("--questions", type=Path, required=True, action="append")
    parser.add_argument("--train", type=Path, required=True, action="append", help="Training JSONL (messages or text)")
    parser.add_argument("-n", type=int, default=4)
    args = parser.parse_args()
    facts = read_jsonl(args.facts)
    questions = [row["messages"][0]["content"] for path in args.questions for row in read_jsonl(path)]
    prompts = [p for path in args.train for p in training_prompts(path)]
    found = seen_questions(questions, prompts, facts, args.n)
    for question, shared in found:
        print(f"seen: {question!r}: {shared}")
    print(f"{len(found)} of {len(questions)} test questions share a word {args.n}-gram with {len(prompts)} training prompts "
          "(names and values masked)")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
