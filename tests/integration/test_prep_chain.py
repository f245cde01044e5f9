"""The prep verbs end to end through the CLI, against the loopback fake teacher."""

import json
import re
import socket
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "fixtures" / "prep"))
from fake_teacher import FakeTeacher, Scripted  # noqa: E402

from tunesmith.config import DataConfig  # noqa: E402
from tunesmith.data.formats import load_examples  # noqa: E402
from tunesmith.cli import app  # noqa: E402
from tunesmith.data.prep.anonymize import propagates  # noqa: E402

DOCS = Path(__file__).resolve().parents[1] / "fixtures" / "prep" / "docs"


@pytest.fixture
def server():
    with FakeTeacher() as fake:
        yield fake


def run(args, env=None):
    """`tunesmith data ...` as a user types it."""
    result = CliRunner().invoke(app, ["data", *map(str, args)], env=env)
    return result.exit_code, result.output


def test_whole_chain_produces_a_leak_free_trainable_split(server, tmp_path):
    env = {"OPENAI_BASE_URL": server.base_url, "OPENAI_API_KEY": "sk-chain-secret"}
    work = tmp_path / "work"
    cache = ["-s", f"generate.teacher.cache={tmp_path / 'cache.sqlite'}", "-s", f"augment.teacher.cache={tmp_path / 'cache.sqlite'}"]
    docs = tmp_path / "docs"
    docs.mkdir()
    for path in DOCS.iterdir():
        (docs / path.name).write_bytes(path.read_bytes())
    (docs / "contacts.md").write_text("# Owners\n\nThe queue is owned by Marie Hamanová (marie.hamanova@example.com, +1 415 555 2671).\n")

    code, out = run(["ingest", "-i", docs, "-o", work / "chunks.jsonl", "--max-tokens", "40", "--overlap-tokens", "8"])
    assert code == 0, out
    code, out = run(["generate", "-i", work / "chunks.jsonl", "-o", work / "pairs.jsonl", "-n", "2", *cache], env)
    assert code == 0, out
    code, out = run(["augment", "-i", work / "pairs.jsonl", "-o", work / "augmented.jsonl", "--paraphrases", "1",
                          "--template", "Quick question: {prompt}", *cache], env)
    assert code == 0, out
    code, out = run(["anonymize", "-i", work / "augmented.jsonl", "-o", work / "anonymized.jsonl"])
    assert code == 0, out
    code, out = run(["split", "-i", work / "anonymized.jsonl", "-o", work / "split", "--group-by", "doc_id"])
    assert code == 0, out
    code, out = run(["stats", "-i", work / "anonymized.jsonl", "--field", "topic", "--json", work / "stats.json"])
    assert code == 0, out

    chunks = [json.loads(line) for line in (work / "chunks.jsonl").read_text().splitlines()]
    pairs_manifest = json.loads((work / "pairs.manifest.json").read_text())
    assert pairs_manifest["counts"]["accepted"] == 2 * len(chunks)
    assert pairs_manifest["inputs"][0]["path"].endswith("chunks.jsonl") and len(pairs_manifest["inputs"][0]["sha256"]) == 64

    # the anonymized data and everything derived from it hold none of the personal data
    mapping = json.loads((work / "anonymized.mapping.private.json").read_text())
    # values of fewer than 3 letters/digits are replaced only where they were detected (see anonymize.propagates)
    values = {e["value"] for e in mapping["entities"] if propagates(e["value"])}
    assert {"Marie Hamanová", "marie.hamanova@example.com"} <= values
    for name in ("anonymized.jsonl", "anonymized.audit.jsonl", "split/train.jsonl", "split/valid.jsonl", "split/test.jsonl", "stats.json"):
        text = (work / name).read_text()
        assert [v for v in values if re.search(r"(?<!\w)" + re.escape(v) + r"(?!\w)", text)] == [], name
    assert "Marie Hamanová" in (work / "augmented.jsonl").read_text()  # it was there before
    assert "sk-chain-secret" not in "".join(p.read_text() for p in work.rglob("*.json*"))

    # no document on two sides, and `tunesmith train`'s loader accepts every split
    split_docs = {}
    for split in ("train", "valid", "test"):
        examples, issues = load_examples(work / "split" / f"{split}.jsonl", DataConfig(train="unused"))
        assert issues == [] and examples, split
        split_docs[split] = {e.meta["doc_id"] for e in examples}
        assert all([m["role"] for m in e.messages] == ["user", "assistant"] for e in examples)
    assert not (split_docs["train"] & split_docs["valid"] or split_docs["train"] & split_docs["test"] or split_docs["valid"] & split_docs["test"])
    report = json.loads((work / "split" / "report.json").read_text())
    assert sum(report["rows"].values()) == len((work / "anonymized.jsonl").read_text().splitlines())

    # re-running is free: every step is up to date, and a forced generate is answered from the cache
    requests = len(server.requests)
    code, out = run(["generate", "-i", work / "chunks.jsonl", "-o", work / "pairs.jsonl", "-n", "2", *cache], env)
    assert code == 0 and "up to date" in out
    code, out = run(["generate", "-i", work / "chunks.jsonl", "-o", work / "pairs.jsonl", "-n", "2", "--force", *cache], env)
    assert code == 0 and len(server.requests) == requests
    assert json.loads((work / "pairs.manifest.json").read_text())["counts"]["cache_hits"] == len(chunks)
    code, out = run(["ingest", "-i", docs, "-o", work / "chunks.jsonl", "--max-tokens", "40", "--overlap-tokens", "8"])
    assert "up to date" in out
    (docs / "notes.txt").write_text("The rotation changed: now every Tuesday.")
    code, out = run(["ingest", "-i", docs, "-o", work / "chunks.jsonl", "--max-tokens", "40", "--overlap-tokens", "8"])
    assert "up to date" not in out and code == 0


def test_teacher_down_fails_with_advice(tmp_path):
    (tmp_path / "chunks.jsonl").write_text(json.dumps({"chunk_id": "a#0", "doc_id": "a", "text": "Some text about queues."}) + "\n")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    code, out = run(["generate", "-i", tmp_path / "chunks.jsonl", "-o", tmp_path / "pairs.jsonl", "-s", "generate.teacher.cache=null"],
                    {"OPENAI_BASE_URL": f"http://127.0.0.1:{port}/v1"})
    assert code == 2 and "unreachable" in out and "Traceback" not in out
    assert not (tmp_path / "pairs.jsonl").exists()


def test_rate_limited_and_malformed_replies_become_rejects(server, tmp_path):
    rows = [{"chunk_id": f"a#{i}", "doc_id": "a", "text": f"Lumen Queue keeps messages for {i + 2} days in region {i}."} for i in range(3)]
    (tmp_path / "chunks.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    server.fail_next(Scripted(status=429), Scripted(status=429), Scripted(content="Sorry, no."))
    code, out = run(["generate", "-i", tmp_path / "chunks.jsonl", "-o", tmp_path / "pairs.jsonl", "-n", "1",
                          "-s", "generate.teacher.cache=null", "-s", "generate.teacher.max_retries=1",
                    "-s", "generate.teacher.backoff_initial_s=0.01", "-s", "generate.teacher.concurrency=1"], {"OPENAI_BASE_URL": server.base_url})
    assert code == 0, out
    rejects = [json.loads(line)["reason"] for line in (tmp_path / "pairs.rejects.jsonl").read_text().splitlines()]
    assert any("rate limited (HTTP 429)" in r for r in rejects) and any(r.startswith("malformed teacher output") for r in rejects)
    assert len((tmp_path / "pairs.jsonl").read_text().splitlines()) == 1


def test_config_file_errors_point_at_the_line(tmp_path):
    (tmp_path / "prep.yaml").write_text("generate:\n  pairs_per_chunk: 2\n  teacher:\n    concurency: 4\n")
    (tmp_path / "chunks.jsonl").write_text("{}\n")
    code, out = run(["generate", tmp_path / "prep.yaml", "-i", tmp_path / "chunks.jsonl", "-o", tmp_path / "p.jsonl"])
    assert code == 2 and "prep.yaml:4: generate.teacher.concurency: unknown key" in out


def test_unreadable_input_files_are_listed(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "bad.pdf").write_bytes(b"not a pdf")
    (tmp_path / "docs" / "bad.txt").write_bytes(b"\xff\xfe\xfa")
    code, out = run(["ingest", "-i", tmp_path / "docs", "-o", tmp_path / "chunks.jsonl"])
    assert code == 2 and "bad.pdf" in out and "bad.txt" in out and "2 problem(s)" in out
    (tmp_path / "bad.jsonl").write_text('{"text": "ok"}\nnot json\n')
    code, out = run(["split", "-i", tmp_path / "bad.jsonl", "-o", tmp_path / "split"])
    assert code == 2 and "bad.jsonl:2: not valid JSON" in out


def test_verbs_are_wired_into_the_tunesmith_command():
    result = CliRunner().invoke(app, ["data", "--help"])
    assert result.exit_code == 0
    assert all(verb in result.output for verb in ("ingest", "generate", "augment", "anonymize", "split", "stats"))


def test_example_settings_are_valid():
    """examples/docs-to-dataset/prep.yaml generates with the `facts` strategy, no teacher."""
    from tunesmith.data.prep.config import step_settings

    prep = Path(__file__).resolve().parents[2] / "examples" / "docs-to-dataset" / "prep.yaml"
    generate = step_settings("generate", prep, [], {})
    assert generate.strategy == "facts" and generate.facts.per_fact == 8


def test_set_names_a_setting_from_the_top_of_the_prep_config(tmp_path):
    """One meaning of --set for every command: a dotted path from the YAML root (here: the `generate:` section)."""
    from tunesmith.data.prep.config import step_settings

    prep = tmp_path / "prep.yaml"
    prep.write_text("generate:\n  pairs_per_chunk: 2\n")
    cfg = step_settings("generate", prep, ["generate.teacher.concurrency=8"], {"generate.pairs_per_chunk": 5})
    assert cfg.teacher.concurrency == 8 and cfg.pairs_per_chunk == 5  # the verb's own option wins over the file


def test_rows_that_are_not_chunks_are_listed_with_their_lines(tmp_path):
    (tmp_path / "chunks.jsonl").write_text('{"text": "ok"}\n{"doc_id": "a"}\n{"text": 5}\n')
    code, out = run(["generate", "-i", tmp_path / "chunks.jsonl", "-o", tmp_path / "pairs.jsonl", "-s", "generate.teacher.cache=null"])
    assert code == 2 and "2 problem(s)" in out and "Traceback" not in out
    assert "chunks.jsonl:2: not a chunk row (text: Field required)" in out and "chunks.jsonl:3:" in out
    assert not (tmp_path / "pairs.jsonl").exists()
