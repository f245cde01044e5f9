"""Leakage between the training data and the test set: a leaked test set makes every number meaningless.

Three checks: test prompts that appear verbatim in training (after whitespace/case normalisation), near-duplicate
prompts (word 3-gram Jaccard at or above a threshold: candidates from datasketch's MinHash LSH, then the exact
Jaccard is computed so no estimate is reported), and test references that are also training targets.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field

from tunesmith.eval.prompts import question_of, reference_of
from tunesmith.records import Example

NUM_PERM = 128


def _normal(text: str) -> str:
    return " ".join(text.lower().split())


def shingles(text: str, n: int = 3) -> set[str]:
    words = re.findall(r"\w+|[^\w\s]", text.lower())
    if len(words) < n:
        return {" ".join(words)} if words else set()
    return {" ".join(words[i : i + n]) for i in range(len(words) - n + 1)}


def jaccard(a: set[str], b: set[str]) -> float:
    return len(a & b) / len(a | b) if a | b else 1.0


@dataclass
class LeakageReport:
    n_test: int
    n_train: int
    exact_prompts: list[dict] = field(default_factory=list)  # {test, train, text}
    near_duplicate_prompts: list[dict] = field(default_factory=list)  # {test, train, jaccard, test_text, train_text}
    shared_targets: list[dict] = field(default_factory=list)  # {test, train, text}
    threshold: float = 0.8

    @property
    def leaked_items(self) -> set[int]:
        return {d["test"] for d in self.exact_prompts + self.near_duplicate_prompts + self.shared_targets}

    @property
    def clean(self) -> bool:
        return not self.leaked_items

    def to_dict(self) -> dict:
        out = asdict(self)
        out["leaked_items"] = sorted(self.leaked_items)
        out["clean"] = self.clean
        return out


def check_leakage(train: list[Example], test: list[Example], threshold: float = 0.8) -> LeakageReport:
    from datasketch import MinHash, MinHashLSH

    report = LeakageReport(n_test=len(test), n_train=len(train), threshold=threshold)
    train_q = [question_of(ex) for ex in train]
    train_by_prompt: dict[str, int] = {}
    train_by_target: dict[str, int] = {}
    for i, ex in enumerate(train):
        train_by_prompt.setdefault(_normal(train_q[i]), i)
        train_by_target.setdefault(_normal(reference_of(ex)), i)

    train_shingles = [shingles(q) for q in train_q]
    lsh = MinHashLSH(threshold=threshold, num_perm=NUM_PERM)

    def minhash(items: set[str]) -> MinHash:
        m = MinHash(num_perm=NUM_PERM, seed=1)
        for s in items:
            m.update(s.encode())
        return m

    for i, sh in enumerate(train_shingles):
        if sh:
            lsh.insert(str(i), minhash(sh))

    for t, ex in enumerate(test):
        question = question_of(ex)
        exact = train_by_prompt.get(_normal(question))
        if exact is not None:
            report.exact_prompts.append({"test": t, "train": exact, "text": question})
        else:
            sh = shingles(question)
            best = None
            for key in lsh.query(minhash(sh)) if sh else []:
                score = jaccard(sh, train_shingles[int(key)])
                if score >= threshold and (best is None or score > best[1]):
                    best = (int(key), score)
            if best is not None:
                report.near_duplicate_prompts.append({"test": t, "train": best[0], "jaccard": round(best[1], 3),
                                                      "test_text": question, "train_text": train_q[best[0]]})
        target = train_by_target.get(_normal(reference_of(ex)))
        if target is not None:
            report.shared_targets.append({"test": t, "train": target, "text": reference_of(ex)})
    return report
