import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "fixtures" / "prep"))
from fake_teacher import FakeTeacher, Scripted  # noqa: E402

from tunesmith.data.prep.synthesize import (  # noqa: E402
    GenerateConfig,
    MalformedOutput,
    PairFilter,
    TaskConfig,
    generate_pairs,
    grounding,
    parse_pairs,
    reject_counts,
)
from tunesmith.data.prep.rows import Chunk  # noqa: E402
from tunesmith.data.prep.teacher import OpenAICompatibleTeacher, TeacherConfig  # noqa: E402
from tunesmith.records import TunesmithError  # noqa: E402

CHUNKS = [
    Chunk(chunk_id="a.md#0", doc_id="a.md", topic="Queue", source="a.md",
          text="# Queue\nLumen Queue keeps messages for seven days. Payloads above 256 kilobytes are rejected by the broker."),
    Chunk(chunk_id="b.md#0", doc_id="b.md", topic="Auth", source="b.md",
          text="# Auth\nEvery request carries a service token in the X-Orbit-Token header. Tokens expire after 24 hours."),
]


@pytest.fixture
def server():
    with FakeTeacher() as fake:
        yield fake


def make_teacher(server, tmp_path):
    return OpenAICompatibleTeacher(TeacherConfig(base_url=server.base_url, cache=str(tmp_path / "c.sqlite"), backoff_initial_s=0.01, backoff_max_s=0.02, max_retries=1))


def test_parse_pairs_accepts_fenced_json_and_qa_lines():
    assert parse_pairs('Sure!\n```json\n[{"question": "What?", "answer": "That."}]\n```') == [{"question": "What?", "answer": "That."}]
    assert parse_pairs("Q: What is it?\nA: A queue.\nQ: How long?\nA: Seven days.") == [
        {"question": "What is it?", "answer": "A queue."},
        {"question": "How long?", "answer": "Seven days."},
    ]
    assert parse_pairs('[{"question": "Shape?", "answer": {"a": 1}}]')[0]["answer"] == '{"a": 1}'
    with pytest.raises(MalformedOutput, match="malformed teacher output"):
        parse_pairs("I'm sorry, I can't help with that.")


def test_grounding_scores_answers_by_the_chunk():
    chunk = CHUNKS[0].text
    assert grounding("Lumen keeps messages for seven days.", chunk) == 1.0
    assert grounding("Messages live forever in the cloud.", chunk) < 0.5
    assert grounding("256", chunk) == 1.0 and grounding("42", chunk) == 0.0


def test_json_list_generation_keeps_grounded_pairs(server, tmp_path):
    accepted, rejects = generate_pairs(CHUNKS, GenerateConfig(pairs_per_chunk=2), make_teacher(server, tmp_path))
    assert len(accepted) == 4 and rejects == []
    row = accepted[0]
    assert [m["role"] for m in row.messages] == ["user", "assistant"]
    assert row.doc_id == "a.md" and row.chunk_id == "a.md#0" and row.topic == "Queue"
    assert row.messages[1]["content"] in CHUNKS[0].text


def test_question_then_answer_strategy(server, tmp_path):
    config = GenerateConfig(pairs_per_chunk=2, strategy="question_then_answer", task=TaskConfig(system_prompt="You know Lumen."))
    accepted, rejects = generate_pairs(CHUNKS, config, make_teacher(server, tmp_path))
    assert len(accepted) == 4, rejects
    assert [r.messages[1]["content"].split()[0] for r in accepted[:2]] == ["What", "How"]
    assert accepted[0].messages[0] == {"role": "system", "content": "You know Lumen."}
    assert len(server.requests) == 8  # 4 questions + 4 answers


def test_malformed_output_and_teacher_failures_land_in_rejects(server, tmp_path):
    server.fail_next(Scripted(content="no idea, sorry"), Scripted(status=429), Scripted(status=429))
    config = GenerateConfig(pairs_per_chunk=1, teacher=TeacherConfig(concurrency=1))
    accepted, rejects = generate_pairs(CHUNKS, config, make_teacher(server, tmp_path))
    reasons = sorted(r.reason for r in rejects)
    assert accepted == []
    assert reasons[0].startswith("malformed teacher output") and "rate limited (HTTP 429)" in reasons[1]
    assert reject_counts(rejects) == {"malformed teacher output": 1, "teacher failed after 1 retries": 1}


def test_filters_reject_with_reasons(server, tmp_path):
    pairs = [
        {"question": "Short?", "answer": "Seven days."},
        {"question": "How long are messages kept?", "answer": "Seven days."},
        {"question": "How long are messages kept??", "answer": "Seven days."},
        {"question": "Who founded the broker company?", "answer": "Elon Musk in Singapore during 1995."},
        {"question": "What is the payload limit here?", "answer": "x" * 300},
    ]
    server.always = Scripted(content=json.dumps(pairs))
    config = GenerateConfig(pairs_per_chunk=5, max_answer_chars=200)
    accepted, rejects = generate_pairs(CHUNKS[:1], config, make_teacher(server, tmp_path))
    assert [r.messages[0]["content"] for r in accepted] == ["How long are messages kept?"]
    reasons = [r.reason for r in rejects]
    assert any(r.startswith("question length 6") for r in reasons)
    assert "duplicate question" in reasons
    assert any(r.startswith("answer not grounded") for r in reasons)
    assert any(r.startswith("answer length 300") for r in reasons)


def test_sparql_validator_hook(server, tmp_path):
    pairs = [
        {"question": "Which messages are there?", "answer": "SELECT ?m WHERE { ?m a <http://ex.org/Message> }"},
        {"question": "Which topics are there?", "answer": "SELECT ?t WHERE { ?t a"},
    ]
    server.always = Scripted(content=json.dumps(pairs))
    task = TaskConfig(kind="query", validator="tunesmith.data.prep.validators:sparql_parses")
    accepted, rejects = generate_pairs(CHUNKS[:1], GenerateConfig(pairs_per_chunk=2, task=task), make_teacher(server, tmp_path))
    assert len(accepted) == 1 and accepted[0].messages[1]["content"].startswith("SELECT ?m")
    assert "not a parseable SPARQL query" in rejects[0].reason


def test_json_schema_and_custom_validator(tmp_path):
    schema = tmp_path / "schema.json"
    schema.write_text(json.dumps({"type": "object", "required": ["limit"], "properties": {"limit": {"type": "integer"}}}))
    hook = tmp_path / "my_hooks.py"
    hook.write_text("def no_zero(answer):\n    if '0' in answer:\n        return 'zero not allowed'\n    return True\n")
    sys.path.insert(0, str(tmp_path))
    try:
        task = TaskConfig(kind="json", json_schema=str(schema), validator="my_hooks:no_zero")
        pair_filter = PairFilter(GenerateConfig(task=task))
        chunk = CHUNKS[0].text
        assert pair_filter.reject_reason("What is the size limit?", '{"limit": 256}', chunk) is None
        assert "does not match the schema" in pair_filter.reject_reason("What is the size limit 2?", '{"limit": "big"}', chunk)
        assert "not valid JSON" in pair_filter.reject_reason("What is the size limit 3?", "limit=256", chunk)
        assert pair_filter.reject_reason("What is the size limit 4?", '{"limit": 100}', chunk) == "zero not allowed"
    finally:
        sys.path.remove(str(tmp_path))


def test_bad_validator_paths_fail_early():
    with pytest.raises(ValueError, match="package.module:function"):
        TaskConfig(validator="not a path")
    with pytest.raises(TunesmithError, match="cannot import .nowhere_pkg.mod."):
        PairFilter(GenerateConfig(task=TaskConfig(validator="nowhere_pkg.mod:check")))
    with pytest.raises(TunesmithError, match="has no function 'missing'"):
        PairFilter(GenerateConfig(task=TaskConfig(validator="tunesmith.data.prep.validators:missing")))


def test_question_for_sentence_uses_chunk_sentences_as_answers(server, tmp_path):
    config = GenerateConfig(pairs_per_chunk=3, strategy="question_for_sentence")
    accepted, rejects = generate_pairs(CHUNKS, config, make_teacher(server, tmp_path))
    answers = [r.messages[1]["content"] for r in accepted if r.doc_id == "a.md"]
    # two sentences in the chunk: the third pair reuses the first sentence with another question word
    assert answers == [
        "Lumen Queue keeps messages for seven days.",
        "Payloads above 256 kilobytes are rejected by the broker.",
        "Lumen Queue keeps messages for seven days.",
    ]
    questions = [r.messages[0]["content"].split()[0] for r in accepted if r.doc_id == "a.md"]
    assert questions[0] != questions[2]
    assert len(server.requests) == 6 and rejects == []
    # requests run concurrently, so their order is not fixed
    assert any("Sentence: Payloads above 256 kilobytes" in r["messages"][0]["content"] for r in server.requests)


def test_question_for_sentence_rejects_non_questions_and_empty_chunks(server, tmp_path):
    server.always = Scripted(content="Messages are kept for seven days.")
    chunks = CHUNKS[:1] + [Chunk(chunk_id="c#0", doc_id="c", text="# Only a heading")]
    accepted, rejects = generate_pairs(chunks, GenerateConfig(pairs_per_chunk=1, strategy="question_for_sentence"), make_teacher(server, tmp_path))
    assert accepted == []
    assert sorted(r.reason.split(" (")[0] for r in rejects) == ["chunk has no sentence to ask about", "malformed teacher output"]
