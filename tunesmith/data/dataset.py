"""The whole data path for one file: rows → Examples → tokens, with one report of everything that happened."""

from __future__ import annotations

import hashlib
from array import array
from dataclasses import dataclass, field

from tunesmith.config import DataConfig
from tunesmith.data.formats import load_examples
from tunesmith.data.tokenize import tokenize_examples
from tunesmith.records import DataError, DataIssue, Example, TokenizedExample


@dataclass
class PreparedData:
    examples: list[Example]
    tokenized: list[TokenizedExample]
    skipped: list[DataIssue] = field(default_factory=list)
    n_truncated: int = 0
    n_dropped: int = 0
    label_names: list[str] = field(default_factory=list)  # classification objectives: class id → name

    def fingerprint(self) -> str:
        """sha256 of the tokenized examples in order (ids, labels and token types where there are): what training
        actually sees of the data."""
        digest = hashlib.sha256()
        for example in self.tokenized:
            typed = (example.token_types,) if example.token_types is not None else ()
            for values in (example.input_ids, example.labels, *typed):
                digest.update(len(values).to_bytes(8, "little"))
                digest.update(array("q", values).tobytes())
        return digest.hexdigest()

    def summary(self) -> dict:
        n_tokens = sum(len(t) for t in self.tokenized)
        n_trained = sum(t.n_trained for t in self.tokenized)
        return {
            "examples": len(self.examples), "sequences": len(self.tokenized), "tokens": n_tokens,
            "trained_tokens": n_trained, "trained_fraction": round(n_trained / max(n_tokens, 1), 4),
            "truncated": self.n_truncated, "dropped_too_long": self.n_dropped, "skipped_bad_rows": len(self.skipped),
        }


def prepare_data(path: str, cfg: DataConfig, tokenizer) -> PreparedData:
    """Validate and tokenize a file. All problems are raised together, or skipped and reported (on_bad_rows)."""
    examples, issues = load_examples(path, cfg)
    unreadable = [i for i in issues if i.source.line is None and i.source.item is None]
    if unreadable:  # the file itself (missing, not Parquet, ...): skipping rows cannot help
        raise DataError(unreadable, hint="Check the path in data.train / data.valid: a .jsonl, .json, .csv or .parquet file.")
    tokenized, report = tokenize_examples(tokenizer, examples, max_seq_len=cfg.max_seq_len, truncation=cfg.truncation,
                                          train_on=cfg.train_on)
    issues += report.issues
    if issues and cfg.on_bad_rows == "error":
        raise DataError(issues, hint="Fix these rows, or set data.on_bad_rows=skip to train without them (they are "
                                     "then listed in the run's bad_rows.jsonl)." + (
                                     " For long examples: data.truncation=right|drop, or a larger data.max_seq_len."
                                     if any("longer than" in i.reason for i in issues) else ""))
    bad = {(i.source.path, i.source.line, i.source.item) for i in report.issues}
    kept = [e for e in examples if (e.source.path, e.source.line, e.source.item) not in bad]
    if not tokenized:
        raise DataError(issues or [], hint=f"{path}: no usable example left")
    return PreparedData(kept, tokenized, issues, report.n_truncated, report.n_dropped)
