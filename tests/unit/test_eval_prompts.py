"""Few-shot and RAG prompt builders, the vector index cache, and the leakage check."""

from __future__ import annotations

from tunesmith.data.dedup import Item, check_leakage
from tunesmith.eval.prompts import FewShotBuilder, RagBuilder, question_of, reference_of, training_pairs_as_passages
import numpy as np
import pytest
import torch

from tunesmith.eval import retrieval
from tunesmith.eval.retrieval import VectorIndex, load_corpus, split_passages
from tunesmith.models.precision import cpu_has_bf16
from tunesmith.records import Example, SourceRef


def chat(question: str, answer: str, **meta) -> Example:
    return Example([{"role": "user", "content": question}, {"role": "assistant", "content": answer}],
                   SourceRef("x.jsonl", line=1), meta=meta)


POOL = [
    chat("Who wrote the paper on graph neural networks?", "SELECT ?a WHERE { <gnn> <authoredBy> ?a }"),
    chat("What is the capital city of France?", "Paris"),
    chat("When was the paper on graph neural networks published?", "SELECT ?y WHERE { <gnn> <year> ?y }"),
    chat("How do I bake sourdough bread at home?", "Feed the starter, then ..."),
    chat("Which river flows through Paris?", "The Seine"),
]


def test_few_shot_similar_picks_the_nearest_examples_as_earlier_turns(tiny_tokenizer, tmp_path):
    test = chat("Who are the authors of the paper about graph neural networks?", "gold")
    builder = FewShotBuilder(POOL, tiny_tokenizer, k=2, select="similar", cache_dir=str(tmp_path))
    [built] = builder.build([test])
    assert set(built.shown) == {0, 2}  # the two graph-neural-network questions
    conv = built.conversation
    assert [m["role"] for m in conv] == ["user", "assistant", "user", "assistant", "user"]
    assert conv[-1]["content"] == test.messages[0]["content"]
    assert conv[-2]["content"] == POOL[built.shown[0]].messages[1]["content"]  # most similar is nearest the question
    assert "gold" not in str(conv)


def test_few_shot_never_shows_the_test_question_itself(tiny_tokenizer, tmp_path):
    leaked = chat(POOL[1].messages[0]["content"], "Paris")
    [built] = FewShotBuilder(POOL, tiny_tokenizer, k=3, cache_dir=str(tmp_path)).build([leaked])
    assert 1 not in built.shown and len(built.shown) == 3


def test_few_shot_random_is_seeded_and_differs_per_item(tiny_tokenizer):
    tests = [chat(f"question {i}", "a") for i in range(4)]
    a = FewShotBuilder(POOL, tiny_tokenizer, k=2, select="random", seed=1).build(tests)
    b = FewShotBuilder(POOL, tiny_tokenizer, k=2, select="random", seed=1).build(tests)
    assert [x.shown for x in a] == [x.shown for x in b]
    assert len({tuple(x.shown) for x in a}) > 1


def test_prompt_length_guard_drops_least_similar_first(tiny_tokenizer, tmp_path):
    test = chat("Who wrote the paper about graph neural networks?", "gold")
    full = FewShotBuilder(POOL, tiny_tokenizer, k=3, cache_dir=str(tmp_path)).build([test])[0]
    guard = FewShotBuilder(POOL, tiny_tokenizer, k=1, cache_dir=str(tmp_path))
    one_shot = guard.build([test])[0]
    assert one_shot.shown == full.shown[:1]
    budget = guard.guard.n_tokens(one_shot.conversation)  # room for exactly the most similar example
    guarded = FewShotBuilder(POOL, tiny_tokenizer, k=3, cache_dir=str(tmp_path), max_prompt_tokens=budget).build([test])[0]
    assert guarded.shown == full.shown[:1] and guarded.dropped == 2  # the two least similar went first
    assert guard.guard.n_tokens(guarded.conversation) <= budget < guard.guard.n_tokens(full.conversation)


def test_rag_puts_top_passages_above_the_question(tiny_tokenizer, tmp_path):
    passages = ["The Seine flows through Paris and Rouen.", "Sourdough needs a starter.", "Paris is the capital of France."]
    builder = RagBuilder(passages, tiny_tokenizer, k=2, template="Context:\n{context}\n\nQ: {prompt}", cache_dir=str(tmp_path))
    [built] = builder.build([chat("Which river flows through Paris?", "The Seine")])
    content = built.conversation[-1]["content"]
    assert content.startswith("Context:\n[1] The Seine flows") and content.endswith("Q: Which river flows through Paris?")
    assert "Sourdough" not in content and built.shown[0] == 0


def test_rag_over_training_pairs_skips_the_items_own_pair(tiny_tokenizer, tmp_path):
    passages, questions = training_pairs_as_passages(POOL)
    assert passages[1] == "Question: What is the capital city of France?\nAnswer: Paris"
    assert questions[1] == "What is the capital city of France?"
    [built] = RagBuilder(passages, tiny_tokenizer, k=2, cache_dir=str(tmp_path), keys=questions).build(
        [chat(POOL[1].messages[0]["content"], "Paris")])
    assert 1 not in built.shown


def test_rag_over_training_pairs_shares_the_few_shot_index(tiny_tokenizer, tmp_path):
    """RAG over training pairs embeds their questions: the few-shot index of the same pool, built once, cached."""
    few_shot = FewShotBuilder(POOL, tiny_tokenizer, k=2, cache_dir=str(tmp_path))
    passages, questions = training_pairs_as_passages(POOL)
    rag = RagBuilder(passages, tiny_tokenizer, k=2, cache_dir=str(tmp_path), keys=questions)
    assert not few_shot.index.from_cache and rag.index.from_cache and rag.index.key == few_shot.index.key
    test = chat("Which city is the capital of France?", "Paris")
    [built] = rag.build([test])
    assert [passages[i] for i in built.shown] == [passages[i] for i in few_shot.candidates([test])[0]]


def test_vector_index_is_cached_by_content(tmp_path):
    first = VectorIndex.build(["alpha text", "beta text"], tmp_path)
    again = VectorIndex.build(["alpha text", "beta text"], tmp_path)
    other = VectorIndex.build(["alpha text", "gamma text"], tmp_path)
    assert not first.from_cache and again.from_cache and not other.from_cache
    assert first.key == again.key != other.key
    assert again.search(["beta"], 1)[0][0][0] == 1


def test_query_vectors_are_cached_by_content(tmp_path, monkeypatch):
    """A search embeds its queries once per content (few-shot and RAG search the same test questions, and so does
    every later run); a damaged cache file is embedded again."""
    index = VectorIndex.build(["alpha text", "beta text"], tmp_path)
    first = index.search(["beta", "alpha"], 1)
    calls, real = [], retrieval.embed
    monkeypatch.setattr(retrieval, "embed", lambda texts, **kw: calls.append(texts) or real(texts, **kw))
    assert VectorIndex.build(["alpha text", "beta text"], tmp_path).search(["beta", "alpha"], 1) == first
    assert calls == []
    assert index.search(["gamma"], 1) and calls == [["gamma"]]
    for file in (tmp_path / "queries").glob("*.npy"):
        file.write_bytes(b"not an array")
    assert index.search(["beta", "alpha"], 1) == first and len(calls) == 2


def test_building_a_large_index_says_so_and_a_cached_one_is_silent(tmp_path, monkeypatch, capsys):
    from tunesmith.eval import retrieval

    monkeypatch.setattr(retrieval, "SHOW_PROGRESS_FROM", 2)  # "large": minutes on a CPU in real use
    quiet = VectorIndex.build(["alpha text"], tmp_path)
    assert "retrieval index" not in capsys.readouterr().err
    shown = VectorIndex.build(["alpha text", "beta text"], tmp_path)
    err = capsys.readouterr().err
    assert "retrieval index: embedding 2 texts" in err and "cached for the next run" in err
    assert VectorIndex.build(["alpha text", "beta text"], tmp_path).from_cache
    assert "retrieval index" not in capsys.readouterr().err
    assert quiet.search(["alpha"], 1)[0][0][0] == 0 and shown.search(["beta"], 1)[0][0][0] == 1


def test_an_index_is_never_reused_across_embedding_precisions(tmp_path, monkeypatch):
    texts = ["alpha text", "beta text"]
    monkeypatch.setattr(retrieval, "embed_precision", lambda: "fp32")
    fp32 = VectorIndex.build(texts, tmp_path)
    monkeypatch.setattr(retrieval, "embed_precision", lambda: "bf16")
    bf16 = VectorIndex.build(texts, tmp_path)
    assert fp32.key != bf16.key and not bf16.from_cache


def test_embedding_runs_under_the_precision_it_is_keyed_by(monkeypatch):
    seen = []

    class Encoder:  # records the autocast state the sentence model is called under
        def encode(self, texts, **kwargs):
            seen.append((torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu")))
            return np.ones((len(texts), 4), dtype=np.float32)

    monkeypatch.setattr(retrieval, "_sentence_model", lambda: Encoder())
    for precision in ("bf16", "fp32"):
        monkeypatch.setattr(retrieval, "embed_precision", lambda precision=precision: precision)
        vectors = retrieval.embed(["a", "b"])
        assert np.allclose(np.linalg.norm(vectors, axis=1), 1)
    assert seen[0] == (True, torch.bfloat16) and seen[1][0] is False


@pytest.mark.skipif(not cpu_has_bf16(), reason="bf16 embedding runs only where the CPU computes bf16 natively")
def test_bf16_embeddings_are_unit_vectors_close_to_fp32(monkeypatch):
    texts = [ex.messages[0]["content"] for ex in POOL]
    monkeypatch.setattr(retrieval, "embed_precision", lambda: "bf16")
    fast = retrieval.embed(texts)
    monkeypatch.setattr(retrieval, "embed_precision", lambda: "fp32")
    exact = retrieval.embed(texts)
    assert fast.dtype == np.float32 and np.allclose(np.linalg.norm(fast, axis=1), 1, atol=1e-5)
    assert (fast * exact).sum(axis=1).min() > 0.999
    assert not torch.is_autocast_enabled("cpu")  # autocast does not leak out of embed


def test_corpus_from_jsonl_and_folder(tmp_path):
    (tmp_path / "c.jsonl").write_text('{"text": "one two"}\n{"text": "three"}\n')
    assert load_corpus(tmp_path / "c.jsonl") == ["one two", "three"]
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.md").write_text("para one\n\npara two")
    assert load_corpus(docs, passage_words=2) == ["para one", "para two"]
    assert split_passages(" ".join(["w"] * 25), 10) == [" ".join(["w"] * 10)] * 2 + [" ".join(["w"] * 5)]


def test_leakage_finds_exact_near_duplicate_and_shared_targets():
    train = [chat("What are the papers written by the person Ada Lovelace in the year 1843?", "Q1"),
             chat("Which venue did Alan Turing publish in?", "Q2"),
             chat("Completely unrelated question about bread", "SELECT shared")]
    test = [chat("which venue did alan turing   publish in?", "other"),  # exact after normalisation
            chat("What are the papers written by the person Ada Lovelace in the year 1843 ?!", "x"),  # near-duplicate
            chat("A fresh question", "SELECT shared"),  # shared target
            chat("Something else entirely", "unique")]
    def items(examples):
        return [Item(question_of(e), reference_of(e)) for e in examples]

    report = check_leakage(items(train), items(test), threshold=0.7)
    assert [d["test"] for d in report.exact_prompts] == [0]
    assert [d["test"] for d in report.near_duplicate_prompts] == [1] and report.near_duplicate_prompts[0]["train"] == 0
    assert [d["test"] for d in report.shared_targets] == [2]
    assert report.leaked_items == {0, 1, 2} and not report.clean
    assert check_leakage(items(train), items(test[3:])).clean


def test_a_leakage_report_is_cached_by_everything_it_depends_on(tmp_path, monkeypatch):
    from tunesmith.data import dedup

    train = [Item("What are the papers written by the person Ada Lovelace in the year 1843?", "Q1"), Item("bread", "Q2")]
    test = [Item("What are the papers written by the person Ada Lovelace in the year 1843 ?!", "x"), Item("bread", "y")]
    first = check_leakage(train, test, 0.7, cache_dir=tmp_path)
    assert first.to_dict() == check_leakage(train, test, 0.7).to_dict()
    monkeypatch.setattr(dedup, "_check_leakage", lambda *a: pytest.fail("checked again"))
    assert check_leakage(train, test, 0.7, cache_dir=tmp_path).to_dict() == first.to_dict()
    computed = []
    monkeypatch.setattr(dedup, "_check_leakage", lambda *a: computed.append(a) or dedup.LeakageReport(0, 0))
    check_leakage(train, test, 0.9, cache_dir=tmp_path)  # another threshold
    check_leakage(train, test[:1], 0.7, cache_dir=tmp_path)  # other items
    for file in (tmp_path / "leakage").glob("*.json"):
        file.write_text("{")  # a damaged report: checked again
    check_leakage(train, test, 0.7, cache_dir=tmp_path)
    assert len(computed) == 3
