"""`tunesmith data ingest`: files → documents with provenance → topic chunks.

Each reader turns one file format into plain text in which headings are written the Markdown way
(`## Title`), so that one chunker cuts every format by its headings first and by token budget second.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, Optional

import typer
from pydantic import Field

from tunesmith.cli import ConfigArg, ForceOpt, OutOpt, SetOpt, console
from tunesmith.config import Strict
from tunesmith.data.prep.artifacts import skip_if_up_to_date, write_manifest
from tunesmith.data.prep.chunking import ChunkingConfig, chunk_document
from tunesmith.data.prep.progress import rich_progress
from tunesmith.data.prep.rows import Chunk
from tunesmith.files import atomic_write_jsonl, iter_json_lines, parse_json, read_text
from tunesmith.records import DataError, DataIssue, SourceRef, TunesmithError

CODE_SUFFIXES = {
    ".py", ".js", ".ts", ".tsx", ".jsx", ".java", ".kt", ".go", ".rs", ".c", ".h", ".cc", ".cpp", ".hpp",
    ".cs", ".rb", ".php", ".swift", ".scala", ".sh", ".sql", ".sparql", ".rq", ".ttl", ".yaml", ".yml", ".toml",
}
TEXT_SUFFIXES = {".txt", ".rst"}
MARKDOWN_SUFFIXES = {".md", ".markdown"}
HTML_SUFFIXES = {".html", ".htm"}
SUPPORTED = TEXT_SUFFIXES | MARKDOWN_SUFFIXES | HTML_SUFFIXES | CODE_SUFFIXES | {".pdf", ".docx", ".json", ".jsonl"}
JSON_TEXT_FIELDS = ("text", "content", "body")


class IngestConfig(Strict):
    chunking: ChunkingConfig = ChunkingConfig()
    on_error: Literal["error", "skip"] = Field(
        "error", description="Unreadable files: stop listing all of them, or skip them and list them in the manifest"
    )
    json_text_field: str | None = Field(None, description="Field holding the text in JSON/JSONL records (default: text/content/body)")


@dataclass
class Document:
    doc_id: str  # stable across runs: the path relative to the input root (+ #item for JSON records)
    source: SourceRef
    text: str
    format: str


class UnreadableFile(Exception):
    """Raised by a reader with a message that says why and what to do (and the line, where one applies)."""

    def __init__(self, message: str, line: int | None = None):
        super().__init__(message)
        self.line = line


def _read_utf8(path: Path) -> str:
    try:
        return read_text(path)
    except DataError as e:
        raise UnreadableFile(e.issues[0].reason, e.issues[0].source.line) from None


def _read_html(path: Path) -> str:
    from bs4 import BeautifulSoup

    soup = BeautifulSoup(_read_utf8(path), "html.parser")
    for tag in soup(["script", "style", "nav", "footer", "head"]):
        tag.decompose()
    for level in range(1, 7):
        for heading in soup.find_all(f"h{level}"):
            heading.replace_with(f"\n\n{'#' * level} {heading.get_text(' ', strip=True)}\n\n")
    for block in soup.find_all(["p", "li", "pre", "tr", "div", "br"]):
        block.insert_after("\n")
    lines = [line.strip() for line in soup.get_text().splitlines()]
    return "\n".join(lines)


def _read_pdf(path: Path) -> str:
    from pypdf import PdfReader
    from pypdf.errors import PdfReadError

    try:
        reader = PdfReader(path)
        if reader.is_encrypted:
            raise UnreadableFile("the PDF is encrypted; save an unencrypted copy")
        pages = [page.extract_text() or "" for page in reader.pages]
    except UnreadableFile:
        raise
    except PdfReadError as e:
        raise UnreadableFile(f"not a readable PDF ({e})") from None
    except Exception as e:  # noqa: BLE001 - pypdf raises many kinds of error on a damaged file; each is the file's fault
        raise UnreadableFile(f"not a readable PDF ({type(e).__name__}: {e})") from None
    text = "\n\n".join(pages).strip()
    if not text:
        raise UnreadableFile("the PDF has no extractable text (scanned images need OCR first)")
    return text


def _read_docx(path: Path) -> str:
    import docx
    from docx.opc.exceptions import PackageNotFoundError

    try:
        document = docx.Document(str(path))
    except (PackageNotFoundError, KeyError, ValueError) as e:
        raise UnreadableFile(f"not a readable .docx file ({e})") from None
    except Exception as e:  # noqa: BLE001 - a damaged zip or XML inside raises errors of zipfile, lxml, ...
        raise UnreadableFile(f"not a readable .docx file ({type(e).__name__}: {e})") from None
    lines = []
    for paragraph in document.paragraphs:
        style = (paragraph.style.name if paragraph.style is not None else "") or ""
        text = paragraph.text.strip()
        if not text:
            continue
        if style == "Title":
            lines.append(f"# {text}")
        elif style.startswith("Heading ") and style.split()[-1].isdigit():
            lines.append(f"{'#' * min(int(style.split()[-1]), 6)} {text}")
        else:
            lines.append(text)
    return "\n\n".join(lines)


def _record_text(record: Any, text_field: str | None) -> str:
    if isinstance(record, dict):
        for name in (text_field,) if text_field else JSON_TEXT_FIELDS:
            if isinstance(record.get(name), str):
                return record[name]
    return json.dumps(record, ensure_ascii=False, indent=1)


def _read_json_records(path: Path, doc_id: str, text_field: str | None) -> list[Document]:
    name = str(path)
    if path.suffix.lower() == ".jsonl":
        documents, bad_lines = [], []
        for where, record in iter_json_lines(path):
            if isinstance(record, DataIssue):
                bad_lines.append(f"line {where.line}: {record.reason}")
            else:
                documents.append(Document(f"{doc_id}:{where.line}", where, _record_text(record, text_field), "jsonl"))
        if bad_lines:
            raise UnreadableFile("not valid JSONL (" + "; ".join(bad_lines[:5]) + ")")
        return documents
    data = parse_json(_read_utf8(path), SourceRef(name))
    if isinstance(data, DataIssue):
        raise UnreadableFile(data.reason, data.source.line)
    if isinstance(data, list):
        return [Document(f"{doc_id}[{i}]", SourceRef(name, item=i), _record_text(r, text_field), "json") for i, r in enumerate(data)]
    return [Document(doc_id, SourceRef(name), _record_text(data, text_field), "json")]


def read_document(path: Path, doc_id: str, config: IngestConfig) -> list[Document]:
    suffix = path.suffix.lower()
    name = str(path)
    try:
        if suffix in {".json", ".jsonl"}:
            return _read_json_records(path, doc_id, config.json_text_field)
        if suffix == ".pdf":
            return [Document(doc_id, SourceRef(name), _read_pdf(path), "pdf")]
        if suffix == ".docx":
            return [Document(doc_id, SourceRef(name), _read_docx(path), "docx")]
        if suffix in HTML_SUFFIXES:
            return [Document(doc_id, SourceRef(name), _read_html(path), "html")]
        if suffix in MARKDOWN_SUFFIXES:
            return [Document(doc_id, SourceRef(name), _read_utf8(path), "markdown")]
        if suffix in CODE_SUFFIXES:
            return [Document(doc_id, SourceRef(name), _read_utf8(path), "code")]
        return [Document(doc_id, SourceRef(name), _read_utf8(path), "text")]
    except PermissionError:
        raise UnreadableFile("permission denied; make the file readable (chmod +r)") from None
    except IsADirectoryError:
        raise UnreadableFile("is a directory") from None


def collect_files(inputs: Iterable[str | Path]) -> tuple[list[tuple[Path, str]], list[DataIssue]]:
    """(file, doc_id) for every supported file under the inputs, sorted so runs are reproducible."""
    found: list[tuple[Path, str]] = []
    issues: list[DataIssue] = []
    for raw in inputs:
        root = Path(raw)
        if root.is_dir():
            for path in sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith(".")):
                if path.suffix.lower() in SUPPORTED:
                    found.append((path, path.relative_to(root).as_posix()))
        elif root.is_file():
            if root.suffix.lower() in SUPPORTED:
                found.append((root, root.name))
            else:
                issues.append(DataIssue(SourceRef(str(root)), f"unsupported file type {root.suffix!r}; supported: {', '.join(sorted(SUPPORTED))}"))
        else:
            issues.append(DataIssue(SourceRef(str(root)), "no such file or folder"))
    return found, issues


def ingest(inputs: Iterable[str | Path], config: IngestConfig, progress=None) -> tuple[list[Chunk], list[Path], list[DataIssue]]:
    """Read every file and chunk it. Returns (chunk rows, files read, issues for files that were skipped)."""
    files, issues = collect_files(inputs)
    if not files and not issues:
        raise TunesmithError("no supported files found in the inputs (.txt .md .html .pdf .docx .json .jsonl and source code)")
    chunks: list[Chunk] = []
    read: list[Path] = []
    for path, doc_id in files:
        try:
            documents = read_document(path, doc_id, config)
        except UnreadableFile as e:
            issues.append(DataIssue(SourceRef(str(path), line=e.line), str(e)))
            continue
        read.append(path)
        for document in documents:
            chunks.extend(chunk_document(document.doc_id, str(document.source), document.format, document.text, config.chunking))
        if progress is not None:
            progress()
    if issues and config.on_error == "error":
        raise DataError(issues, hint="Fix or remove these files, or pass --on-error skip to leave them out.")
    return chunks, read, issues


def ingest_command(
    inputs: Annotated[list[Path], typer.Option("--input", "-i", help="A file or folder (.txt .md .html .pdf .docx .json .jsonl, code); repeatable", show_default=False)],
    out: OutOpt, config: ConfigArg = None, overrides: SetOpt = None,
    max_tokens: Annotated[Optional[int], typer.Option(help="Largest chunk in tokens (ingest.chunking.max_tokens)")] = None,
    overlap_tokens: Annotated[Optional[int], typer.Option(help="Tokens shared by consecutive chunks (ingest.chunking.overlap_tokens)")] = None,
    on_error: Annotated[Optional[str], typer.Option(help="error (default) or skip unreadable files (ingest.on_error)")] = None,
    force: ForceOpt = False,
) -> None:
    """Read documents and cut them into topic chunks (by headings, then by token budget)."""
    from tunesmith.data.prep.config import step_settings

    cfg = step_settings("ingest", config, overrides, {
        "ingest.chunking.max_tokens": max_tokens, "ingest.chunking.overlap_tokens": overlap_tokens, "ingest.on_error": on_error})
    settings = cfg.model_dump(mode="json")
    files = [path for path, _ in collect_files(inputs)[0]]
    if skip_if_up_to_date(out, "ingest", settings, files, force):
        return
    with rich_progress() as progress:
        progress.phase("ingest: reading", len(files))
        chunks, read, issues = ingest(inputs, cfg, progress=progress.advance)
    atomic_write_jsonl(out, chunks)
    for issue in issues:
        console.print(f"[yellow]skipped[/yellow] {issue}")
    counts = {"files": len(read), "documents": len({c.doc_id for c in chunks}), "chunks": len(chunks),
              "skipped_files": [str(i) for i in issues]}
    write_manifest(out, "ingest", settings, read, [out], counts)
    console.print(f"{out}: {len(chunks)} chunks from {len(read)} files" + (f", {len(issues)} skipped" if issues else ""))
