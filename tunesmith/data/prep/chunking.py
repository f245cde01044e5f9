"""Cut a document into topic chunks: by its headings first, then by a token budget with overlap.

Headings arrive Markdown-style (`## Title`) from every reader. A chunk's `topic` is its heading path
("Billing API > Rate limits"), which later steps use as a grouping key. Token counts come from a
Hugging Face `tokenizer.json` when one is given (the `tokenizers` library gives character offsets, so a
chunk is always an exact slice of the source text), otherwise whitespace-separated words are counted.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from pydantic import Field, model_validator

from tunesmith.config import Strict
from tunesmith.data.prep.rows import Chunk

HEADING = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$")
FENCE = re.compile(r"^\s*(```|~~~)")
WORD = re.compile(r"\S+")


class ChunkingConfig(Strict):
    max_tokens: int = Field(256, ge=16, description="Largest chunk, in tokens")
    overlap_tokens: int = Field(32, ge=0, description="Tokens repeated between consecutive chunks of one section")
    min_tokens: int = Field(8, ge=0, description="Sections shorter than this are merged into the next one")
    split_on_headings: bool = True
    tokenizer: str | None = Field(None, description="Path to a tokenizer.json for counting tokens (default: words)")

    @model_validator(mode="after")
    def _overlap_below_budget(self) -> ChunkingConfig:
        if self.overlap_tokens >= self.max_tokens:
            raise ValueError("overlap_tokens must be smaller than max_tokens")
        return self


@dataclass
class Section:
    topic: list[str]
    start: int  # character offsets into the document text
    end: int


@lru_cache(maxsize=4)
def _load_tokenizer(path: str):
    from tokenizers import Tokenizer

    return Tokenizer.from_file(path)


def token_spans(text: str, tokenizer: str | None = None) -> list[tuple[int, int]]:
    """Character (start, end) of every token of `text`."""
    if tokenizer is None:
        return [m.span() for m in WORD.finditer(text)]
    encoding = _load_tokenizer(tokenizer).encode(text, add_special_tokens=False)
    return [span for span in encoding.offsets if span[1] > span[0]]


def count_tokens(text: str, tokenizer: str | None = None) -> int:
    return len(token_spans(text, tokenizer))


def find_sections(text: str, split_on_headings: bool = True) -> list[Section]:
    """Sections between headings, each with its heading path; fenced code blocks are never split."""
    if not split_on_headings:
        return [Section([], 0, len(text))]
    sections: list[Section] = []
    path: list[tuple[int, str]] = []  # (level, title)
    start = 0
    in_fence = False
    offset = 0
    for line in text.splitlines(keepends=True):
        if FENCE.match(line):
            in_fence = not in_fence
        match = None if in_fence else HEADING.match(line.rstrip("\n"))
        if match:
            sections.append(Section([t for _, t in path], start, offset))
            level = len(match.group(1))
            path = [(lvl, t) for lvl, t in path if lvl < level] + [(level, match.group(2).strip())]
            start = offset  # the heading line stays with its section, so each chunk names its topic
        offset += len(line)
    sections.append(Section([t for _, t in path], start, len(text)))
    return [s for s in sections if text[s.start : s.end].strip()]


def _windows(n_tokens: int, size: int, overlap: int) -> list[tuple[int, int]]:
    if n_tokens <= size:
        return [(0, n_tokens)]
    step = size - overlap
    windows = []
    start = 0
    while True:
        end = min(start + size, n_tokens)
        windows.append((start, end))
        if end == n_tokens:
            return windows
        start += step


def chunk_document(doc_id: str, source: str, fmt: str, text: str, config: ChunkingConfig) -> list[Chunk]:
    sections = find_sections(text, config.split_on_headings)
    merged: list[Section] = []
    for section in sections:
        # A heading with almost nothing under it carries no facts to ask about on its own.
        if merged and count_tokens(text[merged[-1].start : merged[-1].end], config.tokenizer) < config.min_tokens:
            merged[-1] = Section(merged[-1].topic or section.topic, merged[-1].start, section.end)
        else:
            merged.append(section)
    chunks: list[Chunk] = []
    for section in merged:
        body = text[section.start : section.end]
        spans = token_spans(body, config.tokenizer)
        if not spans:
            continue
        for first, last in _windows(len(spans), config.max_tokens, config.overlap_tokens):
            char_start = section.start + spans[first][0]
            char_end = section.start + spans[last - 1][1]
            chunk_text = text[char_start:char_end].strip()
            if not chunk_text:
                continue
            chunks.append(Chunk(chunk_id=f"{doc_id}#{len(chunks)}", doc_id=doc_id, source=source, format=fmt,
                                topic=" > ".join(section.topic), text=chunk_text, n_tokens=last - first,
                                char_start=char_start, char_end=char_end))
    return chunks
