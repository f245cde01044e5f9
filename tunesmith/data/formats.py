"""Step one of the data path: files → rows → chat `Example`s, validated before any model is loaded.

Every row is checked, and every problem is collected with its file and line; the caller decides whether
that is fatal (`on_bad_rows: error`) or whether bad rows are skipped and reported (`skip`).
"""

from __future__ import annotations

import csv
import io
import re
import string
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tunesmith.config import DataConfig
from tunesmith.data.iris import compact, compact_messages
from tunesmith.files import iter_jsonl, parse_json, read_text
from tunesmith.records import DataError, DataIssue, Example, Message, SourceRef

ROLES = {"system", "user", "assistant"}
SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}
SHAPES = ("messages", "alpaca", "prompt_completion", "text")
EXTRA_FIELDS = "\0extra"  # where csv puts the values of a line that has more fields than the header


def read_rows(path: str | Path) -> Iterator[tuple[SourceRef, dict[str, Any] | DataIssue]]:
    """Yield (where, row) for every record, or (where, issue) for records that cannot be parsed. A file that cannot
    be read at all (missing, not UTF-8, not Parquet) is one issue without a row number where no line applies."""
    path = Path(path)
    name = str(path)
    suffix = path.suffix.lower()
    if not path.is_file():
        yield SourceRef(name), DataIssue(SourceRef(name), "is a folder, not a file" if path.is_dir() else "file not found")
    elif suffix == ".jsonl":
        yield from iter_jsonl(path)
    elif suffix in (".json", ".csv"):
        try:
            text = read_text(path)
        except DataError as e:
            yield from ((issue.source, issue) for issue in e.issues)
            return
        yield from (_json_rows if suffix == ".json" else _csv_rows)(text, name)
    elif suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            rows = pq.read_table(path).to_pylist()
        except (pa.ArrowException, OSError, ValueError) as e:
            yield SourceRef(name), DataIssue(SourceRef(name), f"not a readable Parquet file ({e})")
            return
        for i, row in enumerate(rows):
            yield SourceRef(name, item=i), row
    else:
        yield SourceRef(name), DataIssue(SourceRef(name), f"unsupported file type {suffix!r} (use .jsonl, .json, .csv, .parquet)")


def _json_rows(text: str, name: str) -> Iterator[tuple[SourceRef, dict[str, Any] | DataIssue]]:
    data = parse_json(text, SourceRef(name))
    if isinstance(data, DataIssue):
        yield data.source, data
        return
    if isinstance(data, dict) and len(data) == 1 and isinstance(next(iter(data.values())), list):
        data = next(iter(data.values()))  # {"data": [...]} style
    if not isinstance(data, list):
        yield SourceRef(name), DataIssue(SourceRef(name), "expected a JSON array of objects")
        return
    for i, row in enumerate(data):
        where = SourceRef(name, item=i)
        yield where, row if isinstance(row, dict) else DataIssue(where, "expected an object")


def _csv_rows(text: str, name: str) -> Iterator[tuple[SourceRef, dict[str, Any] | DataIssue]]:
    reader = csv.DictReader(io.StringIO(text, newline=""), restkey=EXTRA_FIELDS)
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as e:
            where = SourceRef(name, line=reader.reader.line_num)
            yield where, DataIssue(where, f"not valid CSV ({e})")
            return
        where = SourceRef(name, line=reader.line_num)
        if EXTRA_FIELDS in row:
            yield where, DataIssue(where, f"{len(row[EXTRA_FIELDS])} more fields than the header line names")
        else:
            yield where, dict(row)


def detect_shape(row: dict[str, Any]) -> str | None:
    if "messages" in row or "conversations" in row:
        return "messages"
    if "instruction" in row and "output" in row:
        return "alpaca"
    if "prompt" in row and "completion" in row:
        return "prompt_completion"
    if "text" in row:
        return "text"
    return None


class _RowFormatter(string.Formatter):
    """str.format over a row's columns; lists render space-separated (e.g. DBLP-QuAD's entity URIs)."""

    def get_value(self, key, args, kwargs):
        if key not in kwargs:
            raise KeyError(key)
        value = kwargs[key]
        return " ".join(map(str, value)) if isinstance(value, list) else value


_FORMATTER = _RowFormatter()


def fill_template(template: str, row: dict[str, Any]) -> str:
    return _FORMATTER.format(template, **row)


def template_fields(template: str) -> set[str]:
    return {field for _, field, _, _ in string.Formatter().parse(template) if field}


_UNICODE_ESCAPE = re.compile(r"(?:\\u[0-9A-Fa-f]{4})+")


def decode_unicode_escapes(value: Any) -> Any:
    """`\\u00E9` written out as six characters → `é`, in every string of a row (nested lists and dicts too).

    Runs of escapes are decoded together so that UTF-16 surrogate pairs become one character; a lone
    surrogate is left as the text it was. Only `\\uXXXX` is touched: other backslashes stay as they are.
    """
    if isinstance(value, str):
        def decode(m: re.Match) -> str:
            units = bytes.fromhex("".join(m.group(0)[i + 2:i + 6] for i in range(0, len(m.group(0)), 6)))
            try:
                return units.decode("utf-16-be")
            except UnicodeDecodeError:
                return m.group(0)
        return _UNICODE_ESCAPE.sub(decode, value) if "\\u" in value else value
    if isinstance(value, list):
        return [decode_unicode_escapes(v) for v in value]
    if isinstance(value, dict):
        return {k: decode_unicode_escapes(v) for k, v in value.items()}
    return value


REQUIRED = {"alpaca": ("instruction", "output"), "prompt_completion": ("prompt", "completion"), "text": ("text",)}


def row_to_example(row: dict[str, Any], where: SourceRef, shape: str, cfg: DataConfig) -> Example | DataIssue:
    """Turn one row into an Example, or a DataIssue saying exactly what is wrong with it."""
    missing = [k for k in REQUIRED.get(shape, ()) if k not in row]
    if shape == "messages" and "messages" not in row and "conversations" not in row:
        missing = ["messages"]
    if missing:
        return DataIssue(where, f"missing field(s) {', '.join(missing)} (rows of this file are {shape!r}: fields {sorted(row)})")
    try:
        if shape == "template":
            assert cfg.template is not None
            missing = sorted((template_fields(cfg.template.prompt) | template_fields(cfg.template.completion)) - row.keys())
            if missing:
                return DataIssue(where, f"missing field(s) {', '.join(missing)} used by data.template")
            messages: list[Message] = []
            if cfg.template.system:
                messages.append({"role": "system", "content": fill_template(cfg.template.system, row)})
            messages += [
                {"role": "user", "content": fill_template(cfg.template.prompt, row)},
                {"role": "assistant", "content": fill_template(cfg.template.completion, row)},
            ]
        elif shape == "messages":
            messages_or_issue = parse_messages(row, where)
            if isinstance(messages_or_issue, DataIssue):
                return messages_or_issue
            messages = messages_or_issue
        elif shape == "alpaca":
            for key in ("instruction", "output"):
                if not isinstance(row.get(key), str):
                    return DataIssue(where, f"field {key!r} must be a string, got {type(row.get(key)).__name__}")
            extra = row.get("input") or ""
            if not isinstance(extra, str):
                return DataIssue(where, "field 'input' must be a string")
            prompt = row["instruction"] + (f"\n\n{extra}" if extra.strip() else "")
            messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": row["output"]}]
            if isinstance(row.get("system"), str) and row["system"].strip():
                messages.insert(0, {"role": "system", "content": row["system"]})
        elif shape == "prompt_completion":
            for key in ("prompt", "completion"):
                if not isinstance(row.get(key), str):
                    return DataIssue(where, f"field {key!r} must be a string, got {type(row.get(key)).__name__}")
            messages = [{"role": "user", "content": row["prompt"]}, {"role": "assistant", "content": row["completion"]}]
        elif shape == "text":
            text = row.get("text")
            if not isinstance(text, str) or not text.strip():
                return DataIssue(where, "field 'text' must be a non-empty string")
            return Example(messages=[], source=where, meta=_meta(row, {"text"}), text=text)
        else:
            raise ValueError(shape)
    except (KeyError, IndexError, ValueError, TypeError, AttributeError) as e:
        return DataIssue(where, f"cannot fill data.template: {e!r}")

    if cfg.system_prompt and messages[0]["role"] != "system":
        messages.insert(0, {"role": "system", "content": cfg.system_prompt})
    assistants = [m for m in messages if m["role"] == "assistant"]
    if not assistants:
        return DataIssue(where, "no assistant message: nothing to train on")
    if messages[0]["role"] == "assistant":  # chat templates cannot render the empty prompt before it
        return DataIssue(where, "the conversation starts with the assistant: put a user (or system) message first, "
                                "or set data.system_prompt")
    if not any(m["content"].strip() for m in assistants):
        return DataIssue(where, "empty target: the assistant message is empty")
    return Example(messages=messages, source=where, meta=_meta(row, {"messages", "conversations"}))


def _meta(row: dict[str, Any], exclude: set[str]) -> dict[str, Any]:
    return {k: v for k, v in row.items() if k not in exclude and isinstance(v, (str, int, float, bool))}


def parse_messages(row: dict[str, Any], where: SourceRef) -> list[Message] | DataIssue:
    raw = row.get("messages", row.get("conversations"))
    if not isinstance(raw, list) or not raw:
        return DataIssue(where, "'messages' must be a non-empty list")
    messages: list[Message] = []
    for i, m in enumerate(raw):
        if not isinstance(m, dict):
            return DataIssue(where, f"message {i} must be an object with role and content")
        if "from" in m and "value" in m:  # ShareGPT
            role = SHAREGPT_ROLES.get(m["from"]) if isinstance(m["from"], str) else None
            content = m["value"]
        else:
            role, content = m.get("role"), m.get("content")
        if not isinstance(role, str) or role not in ROLES:
            return DataIssue(where, f"message {i} has role {m.get('role', m.get('from'))!r}; expected one of {sorted(ROLES)}")
        if not isinstance(content, str):
            return DataIssue(where, f"message {i} content must be a string, got {type(content).__name__}")
        messages.append({"role": role, "content": content})
    return messages


def load_examples(path: str | Path, cfg: DataConfig) -> tuple[list[Example], list[DataIssue]]:
    """Read every row of `path` into Examples; problems are returned, not raised, so all are reported at once.
    Rows of data.train (and only those) also give their `data.template.variants` renderings."""
    training = bool(cfg.template and cfg.template.variants) and _same_file(path, cfg.train)
    n_rows = 0  # rows that gave an example: what data.limit counts
    examples: list[Example] = []
    issues: list[DataIssue] = []
    shape = None if cfg.format == "auto" else cfg.format
    for where, row in read_rows(path):
        if isinstance(row, DataIssue):
            issues.append(row)
            continue
        if cfg.limit is not None and n_rows >= cfg.limit:
            break
        row_shape = shape or detect_shape(row)
        if row_shape is None:
            issues.append(DataIssue(where, f"cannot tell the row's shape from its fields {sorted(row)}; expected one of "
                                    "messages / instruction+output / prompt+completion / text, or set data.template"))
            continue
        shape = shape or row_shape  # the first good row fixes the shape: mixed files are reported, not guessed
        if cfg.decode_unicode_escapes:
            row = decode_unicode_escapes(row)
        result = row_to_example(row, where, shape, cfg)
        n_rows += isinstance(result, Example)
        results = [result] + (template_variants(row, where, result, cfg) if training and shape == "template" else [])
        for result in results:
            if isinstance(result, Example) and cfg.iri_prefixes:
                result = compact_example(result, cfg.iri_prefixes)
            (issues if isinstance(result, DataIssue) else examples).append(result)
    return examples, issues


def template_variants(row: dict[str, Any], where: SourceRef, first: Example | DataIssue, cfg: DataConfig) -> list[Example]:
    """The row rendered again once per `data.template.variants` entry ({field: column}: the field read from the
    column), where every column is a non-empty string and the prompt it gives differs from the first rendering."""
    assert cfg.template is not None
    if not isinstance(first, Example):
        return []
    out = []
    for variant in cfg.template.variants:
        if not all(isinstance(row.get(column), str) and row[column].strip() for column in variant.values()):
            continue
        other = row_to_example({**row, **{field: row[column] for field, column in variant.items()}}, where, "template", cfg)
        if isinstance(other, Example) and other.messages != first.messages:
            out.append(other)
    return out


def _same_file(a: str | Path, b: str | Path) -> bool:
    return Path(a).resolve() == Path(b).resolve()


def compact_example(example: Example, prefixes: dict[str, str]) -> Example:
    """The example as the model reads and writes it under data.iri_prefixes: every message (and raw text) with its
    IRIs compacted (tunesmith/data/iris.py); the row's own fields in `meta` stay as they were."""
    example.messages = compact_messages(example.messages, prefixes)
    if example.text is not None:
        example.text = compact(example.text, prefixes)
    return example
