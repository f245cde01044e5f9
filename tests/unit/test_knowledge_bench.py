"""The documents → knowledge benchmark: reproducible, complete, and its test phrasings never seen in training."""

import json
from pathlib import Path

import pytest
import yaml

from bench.knowledge import heldout, world
from tunesmith.data.prep.chunking import ChunkingConfig
from tunesmith.data.prep.synthesize import GenerateConfig, generate_pairs
from tunesmith.data.prep.ingest import IngestConfig, ingest

HERE = Path(world.__file__).resolve().parent
DATA = HERE / "data"


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def test_the_shipped_copy_is_what_the_generator_writes(tmp_path):
    world.build(tmp_path)
    shipped = sorted(p.relative_to(DATA) for p in DATA.rglob("*") if p.is_file())
    assert shipped == sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file())
    for rel in shipped:
        assert (DATA / rel).read_bytes() == (tmp_path / rel).read_bytes(), rel


def test_every_fact_is_in_the_documents_and_asked_once_per_split():
    for name, splits in (("a", ("valid", "test")), ("b", ("test",))):
        facts = _rows(DATA / name / "facts.jsonl")
        text = " ".join(p.read_text() for p in (DATA / name / "docs").iterdir())
        for fact in facts:
            assert fact["value"] in text and fact["entity"].split()[0] in text, fact
        for split in splits:
            rows = _rows(DATA / name / f"{split}.jsonl")
            assert [(r["entity"], r["attribute"]) for r in rows] == [(f["entity"], f["attribute"]) for f in facts]
            for row, fact in zip(rows, facts):
                question, answer = (m["content"] for m in row["messages"])
                assert answer == fact["value"] and fact["entity"] in question and answer not in question
    valid = {world_question for w in world.QUESTIONS_A.values() for pools in w.values() for world_question in pools[0]}
    test = {world_question for w in world.QUESTIONS_A.values() for pools in w.values() for world_question in pools[1]}
    assert not valid & test


@pytest.mark.parametrize("name", ["a", "b"])
def test_no_test_phrasing_occurs_in_the_generated_training_data(name):
    """The facts strategy over the benchmark's documents: no test question shares a word 4-gram with its prompts."""
    prep = yaml.safe_load((HERE / "prep.yaml").read_text())
    chunks, _, _ = ingest([DATA / name / "docs"], IngestConfig(chunking=ChunkingConfig(**prep["ingest"]["chunking"])))
    pairs, _ = generate_pairs(chunks, GenerateConfig(**prep["generate"]))
    assert len(pairs) > 3 * len(_rows(DATA / name / "facts.jsonl"))
    prompts = [m["content"] for row in pairs for m in row.messages if m["role"] == "user"]
    facts = _rows(DATA / name / "facts.jsonl")
    for split in ("valid", "test") if name == "a" else ("test",):
        questions = [r["messages"][0]["content"] for r in _rows(DATA / name / f"{split}.jsonl")]
        assert heldout.seen_questions(questions, prompts, facts) == []
    # ...and the check can fail: a training prompt in the test phrasing is caught.
    leaked = questions[0].replace(facts[0]["entity"], facts[1]["entity"])
    assert heldout.seen_questions(questions[:1], prompts + [leaked], facts)


@pytest.mark.parametrize("folder", ["bench/knowledge", "examples/docs-to-dataset"])
def test_shipped_train_and_eval_configs_are_valid(folder):
    from tunesmith.config import load_config, read_config
    from tunesmith.eval.config import EvalConfig

    root = HERE.parent.parent / folder
    assert load_config(root / "train.yaml").method.name in ("lora", "full")
    assert read_config(EvalConfig, root / "eval.yaml").metrics.headline == "contains"
