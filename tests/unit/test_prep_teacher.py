import logging
import socket
import sys
import types
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "fixtures" / "prep"))
from fake_teacher import FakeTeacher, Scripted  # noqa: E402

from tunesmith.data.prep.teacher import (  # noqa: E402
    LocalTeacher,
    OpenAICompatibleTeacher,
    TeacherConfig,
    TeacherFailure,
    TeacherUnavailable,
)
from tunesmith.records import TunesmithError  # noqa: E402

HELLO = [[{"role": "user", "content": "Say hi"}]]
FAST = dict(backoff_initial_s=0.01, backoff_max_s=0.05, timeout_s=2.0)


@pytest.fixture
def server():
    with FakeTeacher() as fake:
        fake.always = Scripted(content="hi there")
        yield fake


def teacher_for(server, tmp_path, **overrides) -> OpenAICompatibleTeacher:
    return OpenAICompatibleTeacher(TeacherConfig(base_url=server.base_url, cache=str(tmp_path / "cache.sqlite"), **{**FAST, **overrides}))


def test_answers_and_sends_the_key_from_the_environment(server, tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-123")
    teacher = teacher_for(server, tmp_path)
    assert teacher.complete(HELLO) == ["hi there"]
    assert server.headers_seen[0]["Authorization"] == "Bearer sk-test-123"
    assert server.requests[0]["messages"] == HELLO[0]


def test_base_url_comes_from_the_environment(server, tmp_path, monkeypatch):
    monkeypatch.setenv("MY_TEACHER_URL", server.base_url)
    teacher = OpenAICompatibleTeacher(TeacherConfig(base_url_env="MY_TEACHER_URL", cache=None, **FAST))
    assert teacher.complete(HELLO) == ["hi there"]
    monkeypatch.delenv("MY_TEACHER_URL")
    with pytest.raises(TunesmithError, match=r"set \$MY_TEACHER_URL"):
        OpenAICompatibleTeacher(TeacherConfig(base_url_env="MY_TEACHER_URL", cache=None))


def test_rate_limit_is_retried_with_backoff(server, tmp_path, caplog):
    server.fail_next(Scripted(status=429, headers={"Retry-After": "0"}), Scripted(status=429))
    with caplog.at_level(logging.WARNING, logger="tunesmith.prep.teacher"):
        assert teacher_for(server, tmp_path).complete(HELLO) == ["hi there"]
    assert len(server.requests) == 3
    assert "rate limited (HTTP 429)" in caplog.text


def test_server_errors_and_timeouts_are_retried(server, tmp_path):
    server.fail_next(Scripted(status=503), Scripted(delay_s=0.6))
    assert teacher_for(server, tmp_path, timeout_s=0.3).complete(HELLO) == ["hi there"]
    assert len(server.requests) == 3


def test_retries_run_out_into_a_failure_not_a_crash(server, tmp_path):
    server.always = Scripted(status=429)
    [reply] = teacher_for(server, tmp_path, max_retries=2).complete(HELLO)
    assert isinstance(reply, TeacherFailure) and "after 2 retries: rate limited" in reply.reason
    assert len(server.requests) == 3


def test_malformed_response_is_a_failure(server, tmp_path):
    server.fail_next(Scripted(body="<html>gateway</html>"), Scripted(body='{"choices": []}'))
    replies = teacher_for(server, tmp_path, concurrency=1).complete(HELLO + [[{"role": "user", "content": "again"}]])
    assert all(isinstance(r, TeacherFailure) and "malformed teacher response" in r.reason for r in replies)
    assert len(server.requests) == 2  # not retried: the same request would get the same answer


def test_teacher_down_stops_with_advice(tmp_path):
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    teacher = OpenAICompatibleTeacher(TeacherConfig(base_url=f"http://127.0.0.1:{port}/v1", cache=None, **FAST))
    with pytest.raises(TeacherUnavailable, match="unreachable.*start the server"):
        teacher.complete(HELLO)


def test_bad_key_is_reported_without_the_key(server, tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-very-secret")
    server.always = Scripted(status=401, body='{"error": "bad key"}')
    with caplog.at_level(logging.DEBUG), pytest.raises(TeacherUnavailable) as caught:
        teacher_for(server, tmp_path).complete(HELLO)
    assert "check $OPENAI_API_KEY" in str(caught.value)
    assert "sk-very-secret" not in str(caught.value) and "sk-very-secret" not in caplog.text


def test_cache_makes_a_rerun_free(server, tmp_path):
    conversations = [[{"role": "user", "content": f"q{i}"}] for i in range(5)]
    first = teacher_for(server, tmp_path)
    assert first.complete(conversations) == ["hi there"] * 5
    first.close()
    again = teacher_for(server, tmp_path)
    assert again.complete(conversations) == ["hi there"] * 5
    assert len(server.requests) == 5 and again.calls == 0 and again.cache_hits == 5
    other = teacher_for(server, tmp_path, temperature=0.1)  # different sampling → a different request
    other.complete(conversations[:1])
    assert len(server.requests) == 6


def test_failures_are_not_cached(server, tmp_path):
    server.fail_next(Scripted(body="garbage"))
    teacher = teacher_for(server, tmp_path)
    assert isinstance(teacher.complete(HELLO)[0], TeacherFailure)
    assert teacher.complete(HELLO) == ["hi there"]


def test_local_teacher_uses_the_local_model_in_batches(tmp_path, monkeypatch):
    calls = []
    generate = types.ModuleType("tunesmith.generate")
    generate.load_run_or_model = lambda name, device="auto", precision=None: (f"model:{name}", "tokenizer")  # a run folder or a model

    def generate_chat(model, tokenizer, conversations, max_new_tokens=256, batch_size=16, temperature=0.0, show_progress=True):
        calls.append((model, len(conversations), batch_size, show_progress))
        return [c[-1]["content"].upper() for c in conversations]

    generate.generate_chat = generate_chat
    monkeypatch.setitem(sys.modules, "tunesmith.generate", generate)
    teacher = LocalTeacher(TeacherConfig(kind="local", batch_size=2, cache=str(tmp_path / "c.sqlite")))
    conversations = [[{"role": "user", "content": f"q{i}"}] for i in range(10)]
    assert teacher.complete(conversations) == [f"Q{i}" for i in range(10)]
    assert [n for _, n, _, _ in calls] == [8, 2] and all(c[0] == "model:smollm2-135m-instruct" and c[3] is False for c in calls)
    assert teacher.complete(conversations) == [f"Q{i}" for i in range(10)] and len(calls) == 2  # cached


def test_relabel_has_an_endpoint_teacher_answer_every_training_prompt(server, tmp_path):
    """Sequence-level distillation through the same client: rows read as training reads them, the prompt sent, the
    last assistant turn replaced, the original kept as `reference`, the row's other fields kept, failures rejected."""
    import json

    from tunesmith.data.prep.relabel import RelabelConfig, relabel_rows

    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in [
        {"question": "Who wrote X?", "sparql": "SELECT 1", "query_type": "SINGLE"},
        {"question": "Did Y publish?", "sparql": "ASK {}", "query_type": "BOOLEAN"}]))
    cfg = RelabelConfig(format="template", template={"prompt": "Q: {question}", "completion": "{sparql}"},
                        teacher=TeacherConfig(base_url=server.base_url, cache=str(tmp_path / "c.sqlite"), **FAST))
    rows, rejects = relabel_rows(data, cfg, OpenAICompatibleTeacher(cfg.teacher))
    assert not rejects and [r.messages for r in rows] == [
        [{"role": "user", "content": "Q: Who wrote X?"}, {"role": "assistant", "content": "hi there"}],
        [{"role": "user", "content": "Q: Did Y publish?"}, {"role": "assistant", "content": "hi there"}]]
    assert rows[0].to_json()["reference"] == "SELECT 1" and rows[1].to_json()["query_type"] == "BOOLEAN"
    assert sorted(r["messages"][0]["content"] for r in server.requests) == ["Q: Did Y publish?", "Q: Who wrote X?"]
    assert all(len(r["messages"]) == 1 for r in server.requests)  # the prompt only, not the answer it replaces


def test_relabel_under_iri_prefixes_asks_in_the_compact_form_and_writes_the_rows_out(tmp_path):
    """The teacher trained on compact IRIs reads them compact; the relabelled file is written out as the data is."""
    import json

    from tunesmith.data.prep.relabel import RelabelConfig, relabel_rows

    class Echo:  # answers with the entity it was given, as a teacher trained on compact IRIs writes it
        config = TeacherConfig(kind="local", model="teacher")
        asked: list = []

        def complete(self, prompts, advance=None):
            self.asked += [p[-1]["content"] for p in prompts]
            return [f"ASK {{ {p[-1]['content'].split()[-1]} ?p ?o }}" for p in prompts]

    data = tmp_path / "train.jsonl"
    data.write_text(json.dumps({"q": "Is it", "e": "<https://dblp.org/pid/7>", "sparql": "ASK { <https://dblp.org/pid/7> ?p ?o }"}) + "\n")
    cfg = RelabelConfig(format="template", template={"prompt": "{q} {e}", "completion": "{sparql}"},
                        iri_prefixes={"pid": "https://dblp.org/pid/"})
    teacher = Echo()
    [row], _ = relabel_rows(data, cfg, teacher)
    assert teacher.asked == ["Is it pid:7"]
    assert row.messages == [{"role": "user", "content": "Is it <https://dblp.org/pid/7>"},
                            {"role": "assistant", "content": "ASK { <https://dblp.org/pid/7> ?p ?o }"}]
    assert row.to_json()["reference"] == "ASK { <https://dblp.org/pid/7> ?p ?o }"
