"""Random bytes, encodings and shapes into every loader and config reader (hypothesis).

The property: whatever the file holds, a reader returns rows or raises the one error type the CLI turns into a
message (TunesmithError: exit code 2, no traceback) naming the file, with a line or item where one applies; and a
command that fails that way has written nothing. Default mode tries a few dozen inputs per reader (seconds);
`make chaos` (TUNESMITH_CHAOS=1) tries hundreds.
"""

from __future__ import annotations

import csv
import io
import json
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

import chaos_settings  # noqa: F401  (loads the hypothesis profile of this mode)
from tunesmith.cli import app
from tunesmith.config import DataConfig, RunConfig, TemplateConfig, read_config
from tunesmith.records import DataError, TunesmithError

FIELDS = ["prompt", "completion", "messages", "conversations", "text", "instruction", "output", "input", "role",
          "content", "from", "value", "system", "question", "sparql", "doc_id", "\ufeffprompt", ""]
ENCODINGS = ["utf-8", "utf-8-sig", "latin-1", "cp1252", "utf-16", "utf-32"]

scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=30))
json_values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=8), inner, max_size=5)),
    max_leaves=20)
messages = st.lists(st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant", "system", "robot", 3]),
                                           "content": st.one_of(st.text(max_size=20), st.integers(), st.none())}),
                    max_size=4)
rows = st.one_of(
    st.dictionaries(st.sampled_from(FIELDS), json_values, max_size=5),
    st.fixed_dictionaries({"messages": messages}),
    st.fixed_dictionaries({"prompt": st.text(max_size=20), "completion": st.text(max_size=20)}),
    json_values,
)


def encoded(text_strategy):
    """Text in some encoding (most of them not UTF-8), sometimes cut in the middle of a character."""
    return st.tuples(text_strategy, st.sampled_from(ENCODINGS), st.integers(0, 3)).map(
        lambda t: t[0].encode(t[1], errors="replace")[: len(t[0].encode(t[1], errors="replace")) - t[2]])


def jsonl_bytes():
    lines = st.lists(st.one_of(rows.map(json.dumps), st.text(max_size=30)), max_size=6).map("\n".join)
    return st.one_of(st.binary(max_size=300), encoded(lines), lines.map(lambda s: s.encode("utf-8")))


def json_bytes():
    doc = st.one_of(st.lists(rows, max_size=5), st.dictionaries(st.text(max_size=5), st.lists(rows, max_size=3), max_size=2),
                    json_values).map(lambda v: json.dumps(v, indent=1))
    return st.one_of(st.binary(max_size=300), encoded(doc), doc.map(lambda s: s[: len(s) // 2].encode()))


def csv_bytes():
    def to_csv(table):
        header, body = table
        out = io.StringIO()
        writer = csv.writer(out)
        writer.writerow(header)
        writer.writerows(body)
        return out.getvalue()

    table = st.tuples(st.lists(st.sampled_from(FIELDS), min_size=1, max_size=4),
                      st.lists(st.lists(st.text(max_size=15), max_size=5), max_size=5))
    return st.one_of(st.binary(max_size=300), encoded(table.map(to_csv)), encoded(st.text(max_size=100)))


def yaml_bytes():
    doc = st.one_of(st.dictionaries(st.sampled_from(["model", "data", "method", "train", "probe", "output", "x", "name",
                                                     "train.lr", "format", "valid"]), json_values, max_size=5),
                    json_values).map(lambda v: yaml.safe_dump(v, allow_unicode=True))
    return st.one_of(st.binary(max_size=300), encoded(doc), encoded(st.text(max_size=200)))


FUZZ = settings(suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow], deadline=None)


@contextmanager
def fresh(tmp_path: Path):
    """A new folder for one example (hypothesis runs many examples in one test's tmp_path)."""
    with tempfile.TemporaryDirectory(dir=tmp_path) as folder:
        yield Path(folder)


def located(error: Exception, path: Path) -> bool:
    """The message names the file (and, for a DataError, every issue points into it)."""
    if isinstance(error, DataError):
        return all(issue.source.path == str(path) for issue in error.issues) and str(path) in str(error)
    return str(path) in str(error)


def check_reader(read, path: Path):
    try:
        return read(path)
    except TunesmithError as e:
        assert located(e, path), str(e)
        return None


# ---- readers ----

@FUZZ
@given(content=st.one_of(jsonl_bytes(), json_bytes(), csv_bytes(), st.binary(max_size=200)),
       suffix=st.sampled_from([".jsonl", ".json", ".csv", ".parquet"]))
def test_training_data_readers(tmp_path, content, suffix):
    from tunesmith.data.formats import load_examples

    path = tmp_path / f"data{suffix}"
    path.write_bytes(content)
    for cfg in (DataConfig(train="x"), DataConfig(train="x", format="template",
                                                  template=TemplateConfig(prompt="{prompt!r:>{x}}", completion="{text.y}"))):
        examples, issues = load_examples(path, cfg)
        for issue in issues:
            assert issue.source.path == str(path) and issue.reason


@FUZZ
@given(content=st.one_of(jsonl_bytes(), json_bytes(), csv_bytes()), suffix=st.sampled_from([".jsonl", ".json", ".csv"]))
def test_prepare_data_raises_only_data_errors(tmp_path, tiny_tokenizer, content, suffix):
    from tunesmith.data.dataset import prepare_data

    path = tmp_path / f"data{suffix}"
    path.write_bytes(content)
    check_reader(lambda p: prepare_data(str(p), DataConfig(train="x", max_seq_len=64, truncation="drop"), tiny_tokenizer), path)


@FUZZ
@given(content=jsonl_bytes())
def test_jsonl_readers_of_prep_generate_and_metrics(tmp_path, content):
    from tunesmith.data.prep.artifacts import read_manifest
    from tunesmith.files import read_jsonl
    from tunesmith.generate import read_prompts
    from tunesmith.train.tracking import read_metrics

    path = tmp_path / "metrics.jsonl"
    path.write_bytes(content)
    check_reader(read_jsonl, path)
    check_reader(read_prompts, path)
    check_reader(lambda p: read_metrics(p.parent), path)
    (tmp_path / "metrics.manifest.json").write_bytes(content)
    assert read_manifest(path) is None or isinstance(read_manifest(path), dict)


@FUZZ
@given(content=st.one_of(jsonl_bytes(), json_bytes(), st.binary(max_size=300), encoded(st.text(max_size=200))),
       suffix=st.sampled_from([".txt", ".md", ".html", ".json", ".jsonl", ".pdf", ".docx", ".py"]))
def test_ingest_readers(tmp_path, content, suffix):
    from tunesmith.data.prep.ingest import IngestConfig, UnreadableFile, read_document

    path = tmp_path / f"doc{suffix}"
    path.write_bytes(content)
    try:
        read_document(path, path.name, IngestConfig())
    except UnreadableFile as e:
        assert str(e)


@FUZZ
@given(content=st.one_of(json_bytes(), st.binary(max_size=200)))
def test_pii_mapping_reader(tmp_path, content):
    from tunesmith.data.prep.anonymize import Pseudonyms

    path = tmp_path / "m.mapping.private.json"
    path.write_bytes(content)
    check_reader(Pseudonyms("placeholder").load, path)


@FUZZ
@given(content=yaml_bytes(), overrides=st.lists(st.text(max_size=20), max_size=2))
def test_config_readers(tmp_path, content, overrides):
    from tunesmith.data.prep.config import PrepConfig
    from tunesmith.eval.config import EvalConfig

    path = tmp_path / "config.yaml"
    path.write_bytes(content)
    for model in (RunConfig, PrepConfig, EvalConfig):
        try:
            read_config(model, path, overrides)
        except TunesmithError as e:
            assert str(path) in str(e) or "--set" in str(e) or "<command line>" in str(e), str(e)


@FUZZ
@given(content=st.binary(min_size=0, max_size=200), which=st.sampled_from(["state.json", "optimizer.json",
                                                                            "optimizer.safetensors", "trainable.safetensors"]))
def test_checkpoint_files(tmp_path, content, which):
    import torch
    from transformers import get_scheduler

    from tunesmith.train.checkpoint import load_checkpoint, save_checkpoint

    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.AdamW(model.parameters())
    scheduler = get_scheduler("constant", optimizer)
    path = save_checkpoint(tmp_path / "ckpt", 1, model, optimizer, scheduler, {}, keep_last=1)
    (path / which).write_bytes(content)
    with pytest.raises(TunesmithError, match="damaged"):
        load_checkpoint(path, model, optimizer, scheduler)
    shutil.rmtree(tmp_path / "ckpt")


# ---- whole commands: exit code 2, a message with the file, nothing written ----

def invoke(*args):
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code in (0, 2), (result.exit_code, result.output, result.exception)
    if result.exit_code == 2:
        assert "Traceback" not in result.output and "error" in result.output
    return result


@FUZZ
@given(content=jsonl_bytes())
def test_prep_commands_on_random_files(tmp_path, content):
    with fresh(tmp_path) as work:
        check_prep_commands(work, content)


def check_prep_commands(tmp_path: Path, content: bytes) -> None:
    src = tmp_path / "in.jsonl"
    src.write_bytes(content)
    out = tmp_path / "out"
    for args, written in (
        (["data", "split", "-i", src, "-o", out / "split"], [out / "split"]),
        (["data", "anonymize", "-i", src, "-o", out / "anon.jsonl", "--no-ner"],
         [out / "anon.jsonl", out / "anon.mapping.private.json", out / "anon.audit.jsonl", out / "anon.manifest.json"]),
        (["data", "augment", "-i", src, "-o", out / "aug.jsonl", "-s", "augment.teacher.base_url=http://127.0.0.1:9",
          "-s", "augment.teacher.cache=null"], [out / "aug.jsonl"]),
    ):
        result = invoke(*args)
        if result.exit_code == 2:
            assert not any(p.exists() for p in written), result.output


@settings(FUZZ, max_examples=max(5, FUZZ.max_examples // 4))
@given(content=st.one_of(jsonl_bytes(), st.binary(max_size=200)), config=yaml_bytes())
def test_train_on_random_data_and_configs_writes_nothing(tmp_path, tiny_model_dir, monkeypatch, content, config):
    with fresh(tmp_path) as work:
        monkeypatch.chdir(work)  # a config without output.dir writes to ./runs/latest
        check_train(work, tiny_model_dir, content, config)


def check_train(tmp_path: Path, tiny_model_dir: Path, content: bytes, config: bytes) -> None:
    from conftest import write_config

    data = tmp_path / "data.jsonl"
    data.write_bytes(content)
    good = write_config(tmp_path / "good", tiny_model_dir, data)
    result = invoke("train", good)
    assume(result.exit_code == 2)  # random bytes that happen to be trainable data are not this test's business
    assert str(data) in result.output.replace("\n", "") and not (tmp_path / "good" / "run").exists()
    bad = tmp_path / "bad.yaml"
    bad.write_bytes(config)
    result = invoke("train", bad)
    assert result.exit_code == 2 and not (tmp_path / "runs").exists()
