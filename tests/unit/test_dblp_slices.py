"""The demo's DBLP-QuAD slices (the first `data.limit` training rows, the first `data.n` validation rows) hold every
query type equally: the data files are interleaved by type, and a reordering that broke this would go unnoticed."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

from tunesmith.config import load_config, read_config
from tunesmith.eval.config import EvalConfig

ROOT = Path(__file__).resolve().parents[2]
TYPES = {"BOOLEAN", "COUNT", "DISAMBIGUATION", "DOUBLE_INTENT", "DOUBLE_NEGATION", "MULTI_FACT", "NEGATION",
         "SINGLE_FACT", "SUPERLATIVE+COMPARATIVE", "UNION"}


def first_rows(path: str, n: int | None) -> list[dict]:
    with open(ROOT / path, encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return rows[:n]


def test_demo_trains_and_evaluates_on_all_ten_query_types_equally():
    train = load_config(ROOT / "configs" / "dblp-quad-lora.yaml").data
    test = read_config(EvalConfig, ROOT / "examples" / "dblp_quad" / "eval.yaml").data
    for path, n in ((train.train, train.limit), (test.test, test.n)):
        counts = Counter(row["query_type"] for row in first_rows(path, n))
        assert set(counts) == TYPES and len(set(counts.values())) == 1, (path, counts)
    assert any(row["held_out"] for row in first_rows(test.test, test.n))  # held-out templates are in the demo's figure


def test_the_full_files_are_the_whole_splits():
    assert len(first_rows("examples/dblp_quad/data/train.jsonl", None)) == 7000
    valid = first_rows("examples/dblp_quad/data/valid.jsonl", None)
    assert len(valid) == 1000 and sum(row["held_out"] for row in valid) == 172
