import io
import json

from rich.console import Console

from tunesmith.data.prep.artifacts import write_manifest
from tunesmith.files import atomic_write_jsonl, read_jsonl
from tunesmith.data.prep.stats import compute_stats, render_stats


def test_stats_count_lengths_balance_duplicates_and_pii(tmp_path):
    rows = [
        {"messages": [{"role": "user", "content": "What is Lumen?"}, {"role": "assistant", "content": "A queue run by <PERSON_1>."}], "topic": "intro"},
        {"messages": [{"role": "user", "content": "What is Lumen?"}, {"role": "assistant", "content": "A message queue."}], "topic": "intro"},
        {"messages": [{"role": "user", "content": "How long are messages kept in the queue?"}, {"role": "assistant", "content": "Seven days."}], "topic": "retention"},
        {"text": "Raw pretraining text written by <PERSON_1> and <EMAIL_1>."},
    ]
    path = tmp_path / "anon.jsonl"
    atomic_write_jsonl(path, rows)
    write_manifest(path, "anonymize", {}, [], [path], {"found": {"PERSON": 1, "EMAIL": 1}, "replaced": {"PERSON": 2, "EMAIL": 1}})
    stats = compute_stats(path, read_jsonl(path), fields=["topic"])
    assert stats["rows"] == 4 and stats["chat_rows"] == 3 and stats["text_rows"] == 1
    assert stats["duplicates"] == {"rows": 0, "prompts": 1}
    assert stats["balance"]["topic"] == {"intro": 2, "retention": 1, "None": 1}
    assert stats["pii"]["placeholders_in_text"] == {"PERSON": 2, "EMAIL": 1}
    assert stats["pii"]["replaced"] == {"PERSON": 2, "EMAIL": 1}
    assert stats["tokens"]["max"] == 10 and sum(b["rows"] for b in stats["tokens"]["histogram"]) == 4
    out = io.StringIO()
    render_stats(stats, Console(file=out, width=120))
    assert "duplicates: 0 rows, 1 prompts" in out.getvalue() and "retention" in out.getvalue()
    json.dumps(stats)  # serializable for --json


def test_stats_scan_finds_remaining_pii(tmp_path):
    from tunesmith.data.prep.anonymize import AnonymizeConfig, PiiDetector

    path = tmp_path / "raw.jsonl"
    atomic_write_jsonl(path, [{"text": "Mail jane@example.com or call <PHONE_1>."}])
    stats = compute_stats(path, read_jsonl(path), pii_detector=PiiDetector(AnonymizeConfig(ner=False)))
    assert stats["pii"]["detected_now"] == {"EMAIL": 1}
