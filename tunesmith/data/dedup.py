"""Overlap between a training set and a held-out set, found one way for `tunesmith data split` and for the leakage
check of `tunesmith eval`, so the two can never disagree about the same rows.

Each item is a prompt (what the model is asked) and a target (the reference answer, if any). Three checks:
- exact prompts: equal after lowercasing and collapsing whitespace;
- near-duplicate prompts: word 3-gram Jaccard at or above a threshold. Candidates come from datasketch's MinHash
  LSH; the exact Jaccard of each candidate is then computed, so no estimate is ever reported;
- shared targets: a held-out reference that is also a training target (after the same normalisation).
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunesmith.records import TunesmithError

NGRAM = 3
NUM_PERM = 128
CHECK_VERSION = 1  # in the key of cached reports: a change to how the checks decide must not meet reports cached before it
_WORD = re.compile(r"\w+")


@dataclass(frozen=True)
class Item:
    prompt: str
    target: str | None = None


def normalize(text: str) -> str:
    return " ".join(text.lower().split())


def shingles(text: str, n: int = NGRAM) -> set[str]:
    """Lowercase word n-grams; a text of fewer than n words is one shingle of all its words (none if it has none)."""
    words = _WORD.findall(text.lower())
    if len(words) < n:
        return {" ".join(words)} if words else set()
    return {" ".join(words[i : i + n]) for i in range(len(words) - n + 1)}


def jaccard(a: set[str], b: set[str]) -> float:
    return len(a & b) / len(a | b) if a | b else 1.0


def near_duplicates(queries: list[str], corpus: list[str], threshold: float,
                    num_perm: int = NUM_PERM) -> dict[int, tuple[int, float]]:
    """query index → (index of its most similar corpus text, exact Jaccard), for queries with one ≥ threshold."""
    from datasketch import MinHash, MinHashLSH

    first = MinHash(num_perm=num_perm, seed=1)  # its permutations serve every signature: drawing them is half the cost

    def minhash(items: set[str]) -> MinHash:
        m = MinHash(num_perm=num_perm, seed=1, permutations=first.permutations, scheme=first.scheme)
        m.update_batch([s.encode("utf-8") for s in items])
        return m

    corpus_shingles = [shingles(t) for t in corpus]
    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
    for i, sh in enumerate(corpus_shingles):
        if sh:
            lsh.insert(str(i), minhash(sh))
    found: dict[int, tuple[int, float]] = {}
    for q, text in enumerate(queries):
        sh = shingles(text)
        if not sh:
            continue
        scored = [(int(key), jaccard(sh, corpus_shingles[int(key)])) for key in lsh.query(minhash(sh))]
        best = max((c for c in scored if c[1] >= threshold), key=lambda c: (c[1], -c[0]), default=None)
        if best is not None:
            found[q] = best
    return found


@dataclass
class LeakageReport:
    n_test: int
    n_train: int
    exact_prompts: list[dict[str, Any]] = field(default_factory=list)  # {test, train, text}
    near_duplicate_prompts: list[dict[str, Any]] = field(default_factory=list)  # {test, train, jaccard, test_text, train_text}
    shared_targets: list[dict[str, Any]] = field(default_factory=list)  # {test, train, text}
    threshold: float = 0.8

    @property
    def leaked_items(self) -> set[int]:
        return {d["test"] for d in self.exact_prompts + self.near_duplicate_prompts + self.shared_targets}

    @property
    def clean(self) -> bool:
        return not self.leaked_items

    def to_dict(self) -> dict[str, Any]:
        return {"n_test": self.n_test, "n_train": self.n_train, "exact_prompts": self.exact_prompts,
                "near_duplicate_prompts": self.near_duplicate_prompts, "shared_targets": self.shared_targets,
                "threshold": self.threshold, "leaked_items": sorted(self.leaked_items), "clean": self.clean}


def check_leakage(train: list[Item], test: list[Item], threshold: float = 0.8, num_perm: int = NUM_PERM,
                  cache_dir: str | Path | None = None) -> LeakageReport:
    """The three checks of the module docstring. With `cache_dir`, the report is kept there under a digest of
    everything it depends on (the items, the threshold, the signatures' settings): an eval run again on the same
    data does not hash its 7,000 training prompts again (about a second on 2 cores)."""
    if cache_dir is None:
        return _check_leakage(train, test, threshold, num_perm)
    from tunesmith.files import atomic_write_json, read_json

    digest = hashlib.sha256(json.dumps([CHECK_VERSION, NGRAM, num_perm, threshold, [[i.prompt, i.target] for i in train],
                                        [[i.prompt, i.target] for i in test]]).encode()).hexdigest()[:24]
    path = Path(cache_dir) / "leakage" / f"{digest}.json"
    if path.is_file():
        try:
            saved = read_json(path)
            return LeakageReport(**{k: saved[k] for k in ("n_test", "n_train", "exact_prompts", "near_duplicate_prompts",
                                                          "shared_targets", "threshold")})
        except (TunesmithError, KeyError, TypeError):  # not a complete report: checked again
            pass
    report = _check_leakage(train, test, threshold, num_perm)
    atomic_write_json(path, report.to_dict())
    return report


def _check_leakage(train: list[Item], test: list[Item], threshold: float, num_perm: int) -> LeakageReport:
    report = LeakageReport(n_test=len(test), n_train=len(train), threshold=threshold)
    by_prompt: dict[str, int] = {}
    by_target: dict[str, int] = {}
    for i, item in enumerate(train):
        by_prompt.setdefault(normalize(item.prompt), i)
        if item.target and item.target.strip():
            by_target.setdefault(normalize(item.target), i)
    not_exact: list[int] = []
    for t, item in enumerate(test):
        exact = by_prompt.get(normalize(item.prompt))
        if exact is None:
            not_exact.append(t)
        else:
            report.exact_prompts.append({"test": t, "train": exact, "text": item.prompt})
        if item.target and item.target.strip() and (shared := by_target.get(normalize(item.target))) is not None:
            report.shared_targets.append({"test": t, "train": shared, "text": item.target})
    near = near_duplicates([test[t].prompt for t in not_exact], [i.prompt for i in train], threshold, num_perm)
    for q, (match, score) in sorted(near.items()):
        t = not_exact[q]
        report.near_duplicate_prompts.append({"test": t, "train": match, "jaccard": round(score, 3),
                                              "test_text": test[t].prompt, "train_text": train[match].prompt})
    return report
