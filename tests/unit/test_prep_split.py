import json
from collections import Counter

import pytest

from tunesmith.data.prep.split import SplitConfig, split_rows
from tunesmith.records import DataError, SourceRef


def make_rows(n_docs=20, per_doc=5, label=None):
    rows = []
    for d in range(n_docs):
        for k in range(per_doc):
            row = {
                "messages": [
                    {"role": "user", "content": f"Question {k} about document number {d} with words {d * 7 + k} unique {d}-{k}?"},
                    {"role": "assistant", "content": f"Answer {d}.{k}"},
                ],
                "doc_id": f"doc{d}",
            }
            if label:
                row["kind"] = label(d)
            rows.append((SourceRef("in.jsonl", line=len(rows) + 1), row))
    return rows


def groups(rows):
    return {r["doc_id"] for r in rows}


def test_groups_never_cross_splits_and_ratios_are_close():
    parts, report = split_rows(make_rows(), SplitConfig())
    train, valid, test = groups(parts["train"]), groups(parts["valid"]), groups(parts["test"])
    assert not (train & valid or train & test or valid & test)
    assert report["rows"] == {"train": 80, "valid": 10, "test": 10}
    assert report["groups"] == {"train": 16, "valid": 2, "test": 2}


def test_split_is_seeded():
    first, _ = split_rows(make_rows(), SplitConfig(seed=1))
    again, _ = split_rows(make_rows(), SplitConfig(seed=1))
    other, _ = split_rows(make_rows(), SplitConfig(seed=2))
    assert first == again
    assert first != other


def test_stratification_keeps_label_balance():
    rows = make_rows(n_docs=40, per_doc=2, label=lambda d: "sparql" if d % 4 == 0 else "free")
    parts, report = split_rows(rows, SplitConfig(train=0.5, valid=0.25, test=0.25, stratify_by="kind"))
    for split in ("train", "valid", "test"):
        counts = Counter(r["kind"] for r in parts[split])
        assert counts["sparql"] / sum(counts.values()) == pytest.approx(0.25, abs=0.05), split
    assert sum(report["strata"]["test"].values()) == report["rows"]["test"]


def test_near_duplicates_across_splits_are_reported_and_dropped():
    rows = make_rows(n_docs=10, per_doc=2)
    question = rows[0][1]["messages"][0]["content"]
    # The same question under seven different documents: grouping cannot see this leak, MinHash can.
    for i in range(6):
        rows.append((SourceRef("in.jsonl", line=100 + i), {"messages": [{"role": "user", "content": question + " "}, {"role": "assistant", "content": "Answer 0.0"}], "doc_id": f"copy{i}"}))
    config = SplitConfig(train=0.5, valid=0.25, test=0.25, seed=3)
    parts, report = split_rows(rows, config)
    in_train = sum(r["messages"][0]["content"].strip() == question for r in parts["train"])
    elsewhere = sum(r["messages"][0]["content"].strip() == question for s in ("valid", "test") for r in parts[s])
    assert in_train and elsewhere  # seed 3 spreads the copies over both sides
    leak = report["leakage"]
    assert leak["found"] == elsewhere  # rows, not pairs
    assert {r["split"] for r in leak["rows"]} <= {"valid", "test"} and leak["rows"][0]["kind"] == "exact_prompts"
    dropped_parts, dropped_report = split_rows(rows, config.model_copy(update={"on_near_duplicate": "drop"}))
    assert dropped_report["leakage"]["dropped"] == elsewhere
    assert not any(r["messages"][0]["content"].strip() == question for s in ("valid", "test") for r in dropped_parts[s])


def test_missing_group_key_lists_every_row():
    rows = make_rows(n_docs=2, per_doc=1)
    for _, row in rows:
        del row["doc_id"]
    with pytest.raises(DataError) as caught:
        split_rows(rows, SplitConfig())
    assert "in.jsonl:1: has no 'doc_id'" in str(caught.value) and "in.jsonl:2" in str(caught.value)


def test_too_few_groups_warns_and_row_split_works():
    rows = make_rows(n_docs=1, per_doc=10)
    _, report = split_rows(rows, SplitConfig())
    assert any("group by a finer field" in w for w in report["warnings"])
    parts, report = split_rows(rows, SplitConfig(group_by=None))
    assert report["rows"] == {"train": 8, "valid": 1, "test": 1} and report["warnings"] == []


def test_ratios_must_sum_to_one():
    with pytest.raises(ValueError, match="must be 1"):
        SplitConfig(train=0.8, valid=0.3, test=0.1)


def test_split_and_eval_agree_on_leakage(tmp_path):
    """`data split` and `tunesmith eval` run the same check on the same rows: they report the same leaked items."""
    from tunesmith.config import DataConfig
    from tunesmith.data.dedup import Item, check_leakage
    from tunesmith.data.formats import load_examples
    from tunesmith.eval.prompts import question_of, reference_of
    from tunesmith.files import atomic_write_jsonl

    rows = make_rows(n_docs=10, per_doc=2)
    near = rows[0][1]["messages"][0]["content"] + "?"  # not the same text, the same words: a near-duplicate
    rows += [(SourceRef("in.jsonl", line=200 + i), {"messages": [{"role": "user", "content": near},
                                                               {"role": "assistant", "content": f"other {i}"}], "doc_id": f"n{i}"})
             for i in range(8)]
    parts, report = split_rows(rows, SplitConfig(train=0.5, valid=0.25, test=0.25, seed=3))
    for split in ("train", "test"):
        atomic_write_jsonl(tmp_path / f"{split}.jsonl", parts[split])
    examples = {s: load_examples(tmp_path / f"{s}.jsonl", DataConfig(train="unused"))[0] for s in ("train", "test")}
    seen_by_eval = check_leakage([Item(question_of(e), reference_of(e)) for e in examples["train"]],
                                 [Item(question_of(e), reference_of(e)) for e in examples["test"]], 0.8)
    from_split = {r["test"] for r in report["leakage"]["rows"] if r["split"] == "test"}
    assert from_split and seen_by_eval.leaked_items == from_split and report["leakage"]["leaked_rows"]["test"] == len(from_split)


def test_leakage_counts_rows_not_pairs(tmp_path):
    """Copies of one question and answer on both sides: each leaked valid/test row matches by prompt and by answer
    (two findings), and every copy in training could be its partner; the count is of rows, in the report and the CLI."""
    from typer.testing import CliRunner

    from tunesmith.cli import app

    question = "Which broker keeps messages for seven days?"
    rows = [{"messages": [{"role": "user", "content": f"Unrelated question number {i} about topic {i * 7}?"},
                          {"role": "assistant", "content": f"Answer {i}"}], "doc_id": f"u{i}"} for i in range(12)]
    rows += [{"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": "Seven days."}],
              "doc_id": "train-copies" if i < 5 else f"leak{i}"} for i in range(8)]
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    parts, report = split_rows([(SourceRef(str(src), line=i + 1), r) for i, r in enumerate(rows)],
                               SplitConfig(train=0.6, valid=0.2, test=0.2, seed=4))
    in_train = sum(r["messages"][0]["content"] == question for r in parts["train"])
    leaked = sum(r["messages"][0]["content"] == question for s in ("valid", "test") for r in parts[s])
    findings = len(report["leakage"]["rows"])
    assert in_train >= 2 and leaked >= 2 and findings == 2 * leaked and in_train * leaked > leaked  # pairs would be more
    assert report["leakage"]["found"] == leaked
    result = CliRunner().invoke(app, ["data", "split", "-i", str(src), "-o", str(tmp_path / "split"), "--ratios", "0.6,0.2,0.2",
                                      "--seed", "4"])
    assert result.exit_code == 0 and f"{leaked} valid/test rows overlap" in " ".join(result.output.split())
