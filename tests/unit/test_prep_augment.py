import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "fixtures" / "prep"))
from fake_teacher import FakeTeacher, Scripted  # noqa: E402

from tunesmith.data.prep.augment import AugmentConfig, augment_rows  # noqa: E402
from tunesmith.data.prep.rows import ChatRow  # noqa: E402
from tunesmith.data.prep.teacher import OpenAICompatibleTeacher, TeacherConfig  # noqa: E402


def row(question: str, doc: str) -> ChatRow:
    return ChatRow(messages=[{"role": "user", "content": question}, {"role": "assistant", "content": "Seven days."}], doc_id=doc)


ROWS = [row("How long are messages kept?", "a.md"), row("What is the payload limit?", "b.md")]


def test_templates_vary_prompts_and_keep_group_keys():
    out, rejects = augment_rows(ROWS, AugmentConfig(paraphrases_per_row=0, templates=["Quick question: {prompt}", "{prompt} Answer briefly."]), None)
    assert len(out) == 6 and rejects == []
    variants = [r for r in out if r.augmented]
    assert variants[0].messages[0]["content"] == "Quick question: How long are messages kept?"
    assert all(v.messages[1]["content"] == "Seven days." for v in variants)  # answers untouched
    assert {v.doc_id for v in variants if v.augmented_from == 1} == {"b.md"}
    assert ROWS[0].messages[0]["content"] == "How long are messages kept?"  # input not mutated


def test_template_needs_placeholder():
    with pytest.raises(ValueError, match="placeholder"):
        AugmentConfig(templates=["no placeholder"])


def test_paraphrases_through_the_teacher_with_rejects(tmp_path):
    with FakeTeacher() as server:
        server.fail_next(Scripted(content="How long are messages kept?"), Scripted(content="   "), Scripted(content="Messages are kept for seven days."))
        teacher = OpenAICompatibleTeacher(TeacherConfig(base_url=server.base_url, cache=None, concurrency=1))
        out, rejects = augment_rows(ROWS, AugmentConfig(paraphrases_per_row=2), teacher)
    paraphrased = [r for r in out if str(r.augmented or "").startswith("paraphrase")]
    assert len(paraphrased) == 1  # 4 asked, 3 rejected
    assert {r.reason for r in rejects} == {
        "duplicate of an existing prompt",
        "malformed teacher output (empty paraphrase)",
        "not a question (the teacher answered instead of rephrasing)",
    }
    assert all(r.messages[0]["content"].startswith("Could you tell me") for r in paraphrased)
    assert paraphrased[0].augmented == "paraphrase:more formally" and paraphrased[0].augmented_from == 1


def test_rows_without_user_turn_are_reported():
    out, rejects = augment_rows([ChatRow(text="raw")], AugmentConfig(paraphrases_per_row=0, templates=["Q: {prompt}"]), None)
    assert [r.to_json() for r in out] == [{"text": "raw"}] and rejects[0].reason == "row has no user message to vary"
