import json

import pytest

from tunesmith.config import DataConfig, TemplateConfig
from tunesmith.data.dataset import prepare_data
from tunesmith.data.formats import load_examples
from tunesmith.records import DataError


def write(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


@pytest.mark.parametrize("row,expected_user,expected_assistant", [
    ({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}, "hi", "yo"),
    ({"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "yo"}]}, "hi", "yo"),
    ({"instruction": "Add", "input": "1 2", "output": "3"}, "Add\n\n1 2", "3"),
    ({"instruction": "Say yo", "input": "", "output": "yo"}, "Say yo", "yo"),
    ({"prompt": "p", "completion": "c"}, "p", "c"),
])
def test_common_shapes_become_chat(tmp_path, row, expected_user, expected_assistant):
    examples, issues = load_examples(write(tmp_path / "d.jsonl", [row]), DataConfig(train="x"))
    assert not issues
    assert examples[0].messages[-2:] == [{"role": "user", "content": expected_user},
                                         {"role": "assistant", "content": expected_assistant}]


def test_text_rows_and_field_template(tmp_path):
    examples, _ = load_examples(write(tmp_path / "t.jsonl", [{"text": "raw document"}]), DataConfig(train="x"))
    assert examples[0].text == "raw document" and not examples[0].is_chat
    cfg = DataConfig(train="x", format="template",
                     template=TemplateConfig(prompt="{question}\nEntities: {entities}", completion="{sparql}"))
    row = {"question": "Q?", "entities": ["<a>", "<b>"], "sparql": "ASK {}", "query_type": "BOOLEAN"}
    examples, _ = load_examples(write(tmp_path / "d.jsonl", [row]), cfg)
    assert examples[0].messages == [{"role": "user", "content": "Q?\nEntities: <a> <b>"},
                                    {"role": "assistant", "content": "ASK {}"}]
    assert examples[0].meta["query_type"] == "BOOLEAN"


def test_template_variants_render_training_rows_again_and_only_those(tmp_path):
    """data.template.variants: each data.train row once more per variant (the field read from another column), after
    its first rendering; a missing, empty or identical column adds nothing; data.limit counts rows; the same file
    read as validation (another path) is rendered once."""
    rows = [{"q": "Who wrote X?", "para": "Name the author of X.", "a": "A1"},
            {"q": "When was Y?", "para": "", "a": "A2"},          # empty: no variant
            {"q": "Where is Z?", "a": "A3"},                       # missing column: no variant
            {"q": "Same?", "para": "Same?", "a": "A4"},            # the same prompt: no variant
            {"q": "Last?", "para": "And the last one?", "a": "A5"}]
    train = write(tmp_path / "train.jsonl", rows)
    cfg = DataConfig(train=str(train), format="template",
                     template=TemplateConfig(prompt="{q}", completion="{a}", variants=[{"q": "para"}]))
    examples, issues = load_examples(train, cfg)
    assert not issues
    assert [(e.messages[0]["content"], e.messages[1]["content"]) for e in examples] == [
        ("Who wrote X?", "A1"), ("Name the author of X.", "A1"), ("When was Y?", "A2"), ("Where is Z?", "A3"),
        ("Same?", "A4"), ("Last?", "A5"), ("And the last one?", "A5")]
    assert examples[1].source == examples[0].source  # a variant points at its row
    assert len(load_examples(train, cfg.model_copy(update={"limit": 1}))[0]) == 2
    valid = write(tmp_path / "valid.jsonl", rows)
    assert [e.messages[0]["content"] for e in load_examples(valid, cfg)[0]] == [r["q"] for r in rows]
    with pytest.raises(ValueError, match="variants name field.s. qq that the template does not use"):
        TemplateConfig(prompt="{q}", completion="{a}", variants=[{"qq": "para"}])


def test_unicode_escapes_decoded_only_when_asked(tmp_path):
    """DBLP-QuAD writes some names as literal `\\u00ED` text; data.decode_unicode_escapes turns it into `í` in
    every field (prompt, completion, meta), so training and evaluation see the same text a user would type."""
    cfg = DataConfig(train="x", format="template", template=TemplateConfig(prompt="{question}", completion="{sparql}"))
    row = {"question": "Who is Jo\\u00E3o? \\uD83D\\uDE00 \\R", "sparql": "ASK { ?x ?y 'Cear\\u00E1' }", "venue": "f\\u00FCr"}
    path = write(tmp_path / "d.jsonl", [row])
    kept, _ = load_examples(path, cfg)
    assert kept[0].messages[0]["content"] == row["question"]  # off by default: rows as they are
    decoded, _ = load_examples(path, cfg.model_copy(update={"decode_unicode_escapes": True}))
    assert decoded[0].messages[0]["content"] == "Who is João? 😀 \\R"  # a surrogate pair is one character
    assert decoded[0].messages[1]["content"] == "ASK { ?x ?y 'Ceará' }"
    assert decoded[0].meta["venue"] == "für"


def test_system_prompt_only_when_asked(tmp_path):
    path = write(tmp_path / "d.jsonl", [{"prompt": "p", "completion": "c"}])
    assert load_examples(path, DataConfig(train="x"))[0][0].messages[0]["role"] == "user"
    examples, _ = load_examples(path, DataConfig(train="x", system_prompt="Be terse."))
    assert examples[0].messages[0] == {"role": "system", "content": "Be terse."}


def test_every_bad_row_reported_at_once_with_line(tmp_path):
    path = write(tmp_path / "bad.jsonl", [
        {"prompt": "ok", "completion": "fine"},
        '{"prompt": "broken json", ',
        {"prompt": "no completion"},
        {"prompt": "p", "completion": 5},
        {"prompt": "p", "completion": "   "},
        {"messages": [{"role": "robot", "content": "x"}]},
        {"messages": [{"role": "user", "content": "only a question"}]},
        "[1, 2]",
    ])
    examples, issues = load_examples(path, DataConfig(train="x"))
    assert len(examples) == 1
    lines = {i.source.line: i.reason for i in issues}
    assert set(lines) == {2, 3, 4, 5, 6, 7, 8}
    assert "not valid JSON" in lines[2]
    assert "missing field(s) completion" in lines[3]  # the first row fixed prompt/completion
    assert "'completion' must be a string" in lines[4]
    assert "empty target" in lines[5]
    assert "missing field(s) prompt, completion" in lines[6]
    assert "expected a JSON object" in lines[8]
    assert all(str(i).startswith(f"{path}:") for i in issues)


def test_missing_template_fields_named(tmp_path):
    cfg = DataConfig(train="x", format="template", template=TemplateConfig(prompt="{question}", completion="{sparql}"))
    _, issues = load_examples(write(tmp_path / "d.jsonl", [{"question": "q"}]), cfg)
    assert "missing field(s) sparql" in issues[0].reason and issues[0].source.line == 1


def test_prepare_raises_all_or_skips_with_report(tmp_path, tiny_tokenizer):
    path = write(tmp_path / "d.jsonl", [{"prompt": "a", "completion": "b"}, "{oops", {"prompt": "c", "completion": ""}])
    with pytest.raises(DataError) as err:
        prepare_data(str(path), DataConfig(train="x"), tiny_tokenizer)
    assert len(err.value.issues) == 2 and "on_bad_rows=skip" in str(err.value)
    data = prepare_data(str(path), DataConfig(train="x", on_bad_rows="skip"), tiny_tokenizer)
    assert len(data.tokenized) == 1 and len(data.skipped) == 2


def test_csv_json_parquet_readers(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "d.csv").write_text("prompt,completion\nhello,world\n\"multi\nline\",x\n")
    examples, issues = load_examples(tmp_path / "d.csv", DataConfig(train="x"))
    assert not issues and examples[1].messages[0]["content"] == "multi\nline" and examples[1].source.line == 4
    (tmp_path / "d.json").write_text(json.dumps([{"prompt": "a", "completion": "b"}, 3]))
    examples, issues = load_examples(tmp_path / "d.json", DataConfig(train="x"))
    assert len(examples) == 1 and issues[0].source.item == 1
    pq.write_table(pa.Table.from_pylist([{"prompt": "a", "completion": "b"}]), tmp_path / "d.parquet")
    examples, _ = load_examples(tmp_path / "d.parquet", DataConfig(train="x"))
    assert examples[0].messages[1]["content"] == "b"
    _, issues = load_examples(tmp_path / "nope.jsonl", DataConfig(train="x"))
    assert "file not found" in issues[0].reason


LATIN1 = "prompt,completion\ncaf\u00e9,cr\u00e8me\n"


@pytest.mark.parametrize("name,content,line", [
    ("d.jsonl", '{"prompt": "ok", "completion": "fine"}\n{"prompt": "caf\u00e9", "completion": "x"}\n'.encode("latin-1"), 2),
    ("d.json", '[{"prompt": "ok",\n  "completion": "caf\u00e9"}]'.encode("latin-1"), 2),
    ("d.csv", LATIN1.encode("latin-1"), 2),
    ("d.csv", b"prompt,completion\nhello,world\n\xff\xfe\x00\x01binary", 3),
])
def test_text_that_is_not_utf8_is_a_data_problem_with_its_line(tmp_path, name, content, line):
    path = tmp_path / name
    path.write_bytes(content)
    _, issues = load_examples(path, DataConfig(train="x"))
    assert [str(i.source) for i in issues if "UTF-8" in i.reason] == [f"{path}:{line}"]


def test_a_file_that_is_not_parquet_and_a_csv_with_extra_fields(tmp_path):
    (tmp_path / "d.parquet").write_bytes(b"PAR1 this is not parquet \x00\x01\x02")
    _, issues = load_examples(tmp_path / "d.parquet", DataConfig(train="x"))
    assert len(issues) == 1 and "not a readable Parquet file" in issues[0].reason
    (tmp_path / "d.csv").write_text("prompt,completion\nhello,world,surplus\n")
    _, issues = load_examples(tmp_path / "d.csv", DataConfig(train="x"))
    assert str(issues[0].source) == f"{tmp_path / 'd.csv'}:2" and "more fields than the header" in issues[0].reason


def test_byte_order_marks_are_not_part_of_the_data(tmp_path):
    (tmp_path / "d.csv").write_bytes(b"\xef\xbb\xbfprompt,completion\nhello,world\n")
    (tmp_path / "d.json").write_bytes(b'\xef\xbb\xbf[{"prompt": "hello", "completion": "world"}]')
    (tmp_path / "d.jsonl").write_bytes(b'\xef\xbb\xbf{"prompt": "hello", "completion": "world"}\n')
    for name in ("d.csv", "d.json", "d.jsonl"):
        examples, issues = load_examples(tmp_path / name, DataConfig(train="x"))
        assert not issues and examples[0].messages[0]["content"] == "hello", name


def test_a_missing_file_does_not_suggest_skipping_rows(tmp_path, tiny_tokenizer):
    for on_bad_rows in ("error", "skip"):
        with pytest.raises(DataError) as err:
            prepare_data(str(tmp_path / "nope.jsonl"), DataConfig(train="x", on_bad_rows=on_bad_rows), tiny_tokenizer)
        assert "file not found" in str(err.value) and "on_bad_rows" not in str(err.value)


def test_a_conversation_that_starts_with_the_assistant_is_a_data_problem(tmp_path, tiny_tokenizer):
    """Found by the fuzz tests: the chat template refused the empty prompt before it with a ValueError traceback."""
    path = write(tmp_path / "d.jsonl", [{"messages": [{"role": "assistant", "content": "0"}]}])
    with pytest.raises(DataError, match=":1: the conversation starts with the assistant"):
        prepare_data(str(path), DataConfig(train="x"), tiny_tokenizer)
    assert prepare_data(str(path), DataConfig(train="x", system_prompt="Be brief."), tiny_tokenizer).tokenized
