import json
from pathlib import Path

import pytest

from tunesmith.data.prep.chunking import ChunkingConfig, chunk_document, find_sections
from tunesmith.data.prep.ingest import IngestConfig, ingest
from tunesmith.records import DataError, TunesmithError

DOCS = Path(__file__).resolve().parents[1] / "fixtures" / "prep" / "docs"


def minimal_pdf(text: str) -> bytes:
    """A one-page PDF with one line of text, offsets computed so pypdf reads it without repairs."""
    stream = f"BT /F1 12 Tf 72 720 Td ({text}) Tj ET".encode()
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R /Resources << /Font << /F1 5 0 R >> >> >>",
        b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % o for o in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    return bytes(out)


def test_markdown_is_cut_by_headings_with_topic_paths():
    text = (DOCS / "guide.md").read_text()
    chunks = chunk_document("guide.md", "guide.md", "markdown", text, ChunkingConfig(min_tokens=0))
    topics = [c.topic for c in chunks]
    assert topics == ["Lumen Queue", "Lumen Queue > Publishing", "Lumen Queue > Publishing > Ordering", "Lumen Queue > Consuming"]
    assert all(text[c.char_start : c.char_end].strip() == c.text for c in chunks)
    assert "redelivered after thirty seconds" in chunks[-1].text


def test_headings_inside_code_fences_do_not_split():
    text = "# A\nintro text here\n```\n# not a heading\n```\n# B\nmore"
    assert [s.topic for s in find_sections(text)] == [["A"], ["B"]]


def test_long_sections_are_windowed_with_overlap():
    words = [f"w{i}" for i in range(100)]
    chunks = chunk_document("d", "d", "text", " ".join(words), ChunkingConfig(max_tokens=30, overlap_tokens=10, min_tokens=0))
    assert [c.n_tokens for c in chunks] == [30, 30, 30, 30, 20]
    first, second = chunks[0].text.split(), chunks[1].text.split()
    assert first[-10:] == second[:10]  # the overlap
    assert {w for c in chunks for w in c.text.split()} == set(words)  # nothing lost


def test_overlap_must_be_below_budget():
    with pytest.raises(ValueError, match="overlap_tokens"):
        ChunkingConfig(max_tokens=20, overlap_tokens=20)


def test_every_supported_format_is_read_with_provenance(tmp_path):
    import docx

    document = docx.Document()
    document.add_heading("Word Doc", level=1)
    document.add_paragraph("The docx reader keeps paragraphs and headings.")
    document.save(tmp_path / "spec.docx")
    (tmp_path / "manual.pdf").write_bytes(minimal_pdf("Lumen PDF manual says hello"))
    chunks, read, issues = ingest([DOCS, tmp_path], IngestConfig())
    assert issues == []
    by_format = {c.format for c in chunks}
    assert by_format == {"markdown", "html", "text", "jsonl", "code", "docx", "pdf"}
    html = [c for c in chunks if c.format == "html"]
    assert any(c.topic == "Lumen FAQ > Limits" for c in html)
    assert not any("var x" in c.text or "color: red" in c.text for c in html)  # script/style dropped
    jsonl = [c for c in chunks if c.format == "jsonl"]
    assert [c.doc_id for c in jsonl] == ["records.jsonl:1", "records.jsonl:2"]
    assert any("Lumen PDF manual" in c.text for c in chunks if c.format == "pdf")
    assert any(c.topic == "Word Doc" for c in chunks if c.format == "docx")
    assert len(read) == 7


def test_unreadable_files_are_all_reported_at_once(tmp_path):
    (tmp_path / "good.txt").write_text("A perfectly fine document about queues.")
    (tmp_path / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    (tmp_path / "broken.pdf").write_bytes(b"%PDF-1.4 this is not really a pdf")
    (tmp_path / "broken.docx").write_bytes(b"not a zip")
    (tmp_path / "bad.json").write_text("{oops")
    with pytest.raises(DataError) as caught:
        ingest([tmp_path], IngestConfig())
    message = str(caught.value)
    assert "latin1.txt:1: not UTF-8 text" in message and "re-save the file as UTF-8" in message
    assert "broken.pdf" in message and "broken.docx" in message and "bad.json:1: not valid JSON" in message
    assert "--on-error skip" in message
    chunks, read, issues = ingest([tmp_path], IngestConfig(on_error="skip"))
    assert [p.name for p in read] == ["good.txt"] and len(issues) == 4


def test_permission_denied_tells_what_to_do(tmp_path, monkeypatch):
    target = tmp_path / "secret.txt"
    target.write_text("hidden")

    def deny(self, *args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(Path, "read_bytes", deny)
    with pytest.raises(DataError, match="permission denied; make the file readable"):
        ingest([target], IngestConfig())


def test_missing_input_and_unsupported_type(tmp_path):
    (tmp_path / "image.png").write_bytes(b"\x89PNG")
    with pytest.raises(DataError) as caught:
        ingest([tmp_path / "nope", tmp_path / "image.png"], IngestConfig())
    assert "no such file or folder" in str(caught.value) and "unsupported file type '.png'" in str(caught.value)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(TunesmithError, match="no supported files"):
        ingest([empty], IngestConfig())


def test_tokenizer_json_counts_real_tokens(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers

    tokenizer = Tokenizer(models.WordLevel({"[UNK]": 0}, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()  # splits punctuation: more tokens than words
    path = tmp_path / "tokenizer.json"
    tokenizer.save(str(path))
    chunks = chunk_document("d", "d", "text", "a,b,c,d,e,f", ChunkingConfig(max_tokens=16, overlap_tokens=0, min_tokens=0, tokenizer=str(path)))
    assert chunks[0].n_tokens == 11
    assert json.loads(json.dumps([c.to_json() for c in chunks]))  # rows are plain JSON
