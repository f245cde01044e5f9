"""Held-out loss, KL between models, the forgetting judgement and the training probe, on the tiny model."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from tunesmith.eval.forgetting import GeneralScores, judge_forgetting, load_general_tasks
from tunesmith.eval.probe import GenerationProbe, ProbeConfig
from tunesmith.eval.scoring import mean_kl, reference_loss, tokenize_references
from tunesmith.models.precision import cpu_has_bf16
from tunesmith.records import IGNORE_INDEX, Example, SourceRef

CHATS = [
    [{"role": "user", "content": "Which venue did Alan Turing publish in?"}, {"role": "assistant", "content": "ICML"}],
    [{"role": "user", "content": "the quick brown fox"}, {"role": "assistant", "content": "jumps over the lazy dog"}],
]


# Conversations of many lengths, a few-shot one among them (earlier turns are context, not scored), and their references.
CONVERSATIONS = [
    [{"role": "user", "content": "Which venue did Alan Turing publish in? " * 6}],
    [{"role": "user", "content": "fox"}],
    [{"role": "user", "content": "the quick brown fox"}, {"role": "assistant", "content": "jumps over"},
     {"role": "user", "content": "the lazy dog " * 4}],
    [{"role": "system", "content": "Answer in SPARQL."}, {"role": "user", "content": "Who wrote it?"}],
    [{"role": "user", "content": "What are the papers?"}],
]
REFERENCES = ["ICML", "jumps over the lazy dog " * 5, "?", "SELECT ?x WHERE { ?x a ?y }", ""]
# bf16 is refused where the CPU has no native bf16 (tunesmith.models.precision), so those cases run only where it has
NATIVE_BF16 = pytest.mark.skipif(not cpu_has_bf16(), reason="bf16 runs only where the CPU computes bf16 natively")


@pytest.mark.parametrize(("budget", "batch_size"), [(1, 5), (40, 5), (10**6, 5), (60, 2)])  # rows alone, mixed
# groups, all rows in one forward, several batches
@pytest.mark.parametrize("precision", ["fp32", pytest.param("bf16", marks=NATIVE_BF16)])
def test_references_scored_in_the_prefill_give_reference_loss_and_change_no_answer(
        budget, batch_size, precision, tiny_model, tiny_tokenizer, monkeypatch):
    """The references' loss computed in the forwards that prefill the prompts equals `reference_loss` (their own
    forwards), and the answers are those `generate_chat` gives without scoring."""
    from tunesmith import generate
    from tunesmith.eval.scoring import answers_and_reference_loss
    from tunesmith.generate import generate_chat

    monkeypatch.setattr(generate, "PREFILL_TOKENS", budget)
    calls, prefill = [], generate._prefill
    monkeypatch.setattr(generate, "_prefill", lambda *a, **k: calls.append(k) or prefill(*a, **k))
    answers, loss, _ = answers_and_reference_loss(tiny_model, tiny_tokenizer, CONVERSATIONS, REFERENCES, max_new_tokens=12,
                                               batch_size=batch_size, precision=precision)
    assert calls and all(k.get("continuations") for k in calls)  # scored while prefilling, not on its own
    alone = reference_loss(tiny_model, tiny_tokenizer, chats=[c + [{"role": "assistant", "content": r}]
                                                              for c, r in zip(CONVERSATIONS, REFERENCES)],
                           precision=precision)
    assert loss.n_tokens == alone.n_tokens > 0
    assert loss.loss == pytest.approx(alone.loss, rel=1e-4 if precision == "fp32" else 2e-2)
    assert answers == generate_chat(tiny_model, tiny_tokenizer, CONVERSATIONS, max_new_tokens=12, batch_size=batch_size,
                                    precision=precision, show_progress=False)


@pytest.mark.parametrize("budget", [1, 15, 40, 10**6])  # a row a chunk; chunks over several prefill groups; one
def test_each_row_s_continuation_score_is_its_own(budget, tiny_model, tiny_tokenizer, monkeypatch):
    """Rows scored in chunks gathered across prefill groups (sorted by continuation length, not prompt length) each
    get the loss of their own reference: a row paired with another row's cache or tokens would not."""
    from tunesmith import generate
    from tunesmith.eval.scoring import answers_and_reference_loss

    monkeypatch.setattr(generate, "PREFILL_TOKENS", budget)
    conversations = CONVERSATIONS * 2
    references = REFERENCES + ["SELECT ?y", "", "x " * 30, "ASK { }", "jumps"]
    scored: list[tuple[float, int]] = []
    rows = generate.generate_rows
    monkeypatch.setattr(generate, "generate_rows", lambda *a, **k: [
        scored.append((r.continuation_loss, r.continuation_scored)) or r for r in rows(*a, **k)])
    answers_and_reference_loss(tiny_model, tiny_tokenizer, conversations, references, max_new_tokens=2, batch_size=10,
                               precision="fp32")
    for (loss, count), conversation, reference in zip(scored, conversations, references):
        alone = reference_loss(tiny_model, tiny_tokenizer, chats=[conversation + [{"role": "assistant",
                                                                                  "content": reference}]],
                               precision="fp32")
        assert count == alone.n_tokens
        assert loss / count == pytest.approx(alone.loss, rel=1e-4)


@pytest.mark.parametrize("references", [REFERENCES, REFERENCES[:-1] + ["SELECT"]])  # a row without one; every row
# with one (the batch's cache could then be continued as it is, in one forward: it must not be)
@pytest.mark.parametrize("budget", [40, 10**6])
@pytest.mark.parametrize("precision", ["fp32", pytest.param("bf16", marks=NATIVE_BF16)])
def test_scoring_a_continuation_leaves_the_prompt_cache_bit_for_bit(precision, budget, references, tiny_model,
                                                                     tiny_tokenizer, monkeypatch):
    """The cache the answer is generated from is the one the prefill computes without continuations, to the bit
    (under bf16 too, where a forward's shape moves its rounding)."""
    from tunesmith import generate
    from tunesmith.generate import _left_padded, chat_requests, prepare_for_inference

    monkeypatch.setattr(generate, "PREFILL_TOKENS", budget)
    prepare_for_inference(tiny_model, precision)
    requests = sorted(chat_requests(tiny_tokenizer, CONVERSATIONS), key=lambda r: -len(r.prompt_ids))
    ids, mask = _left_padded(requests, len(requests[0].prompt_ids), tiny_tokenizer.pad_token_id)
    follow = [(tiny_tokenizer(r, add_special_tokens=False)["input_ids"], [True] * 99) for r in references]
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
        plain, _ = generate._prefill(tiny_model, ids, mask, {}, force=True)
        scored, scores = generate._prefill(tiny_model, ids, mask, {}, force=True, continuations=follow)
    assert [s is None for s in scores] == [not tokens for tokens, _ in follow]
    for a, b in zip(plain.layers, scored.layers):
        assert torch.equal(a.keys, b.keys) and torch.equal(a.values, b.values)


def test_reference_loss_is_measured_on_its_own_where_the_prefill_cannot_score(tiny_model, tiny_tokenizer, monkeypatch):
    """A model whose cache has special layers (no prefill of ours): the loss comes from `reference_loss`, the same."""
    from tunesmith import generate
    from tunesmith.eval.scoring import answers_and_reference_loss

    monkeypatch.setattr(generate, "_new_cache", lambda model: None)
    answers, loss, _ = answers_and_reference_loss(tiny_model, tiny_tokenizer, CONVERSATIONS, REFERENCES, max_new_tokens=6,
                                               batch_size=5, precision="fp32")
    alone = reference_loss(tiny_model, tiny_tokenizer, chats=[c + [{"role": "assistant", "content": r}]
                                                              for c, r in zip(CONVERSATIONS, REFERENCES)],
                           precision="fp32")
    assert (loss.loss, loss.n_tokens) == (alone.loss, alone.n_tokens) and len(answers) == len(CONVERSATIONS)


@pytest.mark.parametrize("budget", [1, 10**6])  # one row per forward (long rows), all rows in one
def test_reference_loss_is_cross_entropy_of_the_answer_tokens_only(budget, tiny_model, tiny_tokenizer, monkeypatch):
    from tunesmith.eval import scoring

    monkeypatch.setattr(scoring, "SCORE_TOKENS", budget)
    result = reference_loss(tiny_model, tiny_tokenizer, chats=CHATS, precision="fp32")
    total, count = 0.0, 0
    with torch.no_grad():
        for tok in tokenize_references(tiny_tokenizer, CHATS):
            ids = torch.tensor([tok.input_ids])
            logits = tiny_model(ids).logits[0, :-1]
            targets = torch.tensor(tok.labels[1:])
            keep = targets != IGNORE_INDEX
            total += float(F.cross_entropy(logits[keep], targets[keep], reduction="sum"))
            count += int(keep.sum())
    assert result.n_tokens == count and 0 < count < sum(len(t) for t in tokenize_references(tiny_tokenizer, CHATS))
    assert result.loss == pytest.approx(total / count, rel=1e-4)
    assert result.perplexity == pytest.approx(math.exp(total / count), rel=1e-4)


def test_dataset_loss_shows_its_progress_and_measures_the_same(tiny_model, tiny_tokenizer, capsys):
    """Training's validation loss draws a bar (minutes on a CPU); the bar changes nothing it measures."""
    from tunesmith.train.loss import dataset_loss

    examples = tokenize_references(tiny_tokenizer, chats=CHATS * 4, texts=REFERENCES[:4])
    kwargs = dict(pad_id=tiny_tokenizer.pad_token_id, batch_size=2, row_len=256, pack=True)
    quiet = dataset_loss(tiny_model, examples, **kwargs)
    assert "valid loss" not in capsys.readouterr().err
    shown = dataset_loss(tiny_model, examples, **kwargs, progress="valid loss")
    err = capsys.readouterr().err
    assert (shown.loss, shown.n_tokens) == (quiet.loss, quiet.n_tokens)
    assert "valid loss" in err and f"{len(examples)}/{len(examples)}" in err and "tok/s" in err


def test_few_shot_turns_are_context_not_scored(tiny_model, tiny_tokenizer):
    shot = CHATS[1] + CHATS[0]  # an earlier solved example, then the scored item
    assert reference_loss(tiny_model, tiny_tokenizer, chats=[shot]).n_tokens == \
        reference_loss(tiny_model, tiny_tokenizer, chats=[CHATS[0]]).n_tokens


def test_kl_is_zero_for_the_same_model_and_positive_after_a_change(tiny_model_dir, tiny_tokenizer):
    from tunesmith.models.loading import load_model

    base, other = load_model(tiny_model_dir, device="cpu"), load_model(tiny_model_dir, device="cpu")
    assert mean_kl(base, other, tiny_tokenizer, chats=CHATS, precision="fp32") == pytest.approx(0.0, abs=1e-6)
    with torch.no_grad():
        other.model.layers[0].mlp.down_proj.weight.mul_(3.0)
    assert mean_kl(base, other, tiny_tokenizer, chats=CHATS, texts=["the quick brown fox"], precision="fp32") > 1e-4


def test_the_kl_pass_scores_the_other_model_as_reference_loss_does(tiny_model_dir, tiny_tokenizer):
    """The loss `kl_and_loss` takes from the KL's log-probabilities is the other model's `reference_loss` of the same
    chats (the forgetting panel uses it for a tuned model's answers instead of scoring them again)."""
    from tunesmith.eval.scoring import kl_and_loss
    from tunesmith.models.loading import load_model

    base, other = load_model(tiny_model_dir, device="cpu"), load_model(tiny_model_dir, device="cpu")
    with torch.no_grad():
        other.model.layers[0].mlp.down_proj.weight.mul_(3.0)
    kl, loss = kl_and_loss(base, other, tiny_tokenizer, chats=CHATS, precision="fp32")
    expected = reference_loss(other, tiny_tokenizer, chats=CHATS, precision="fp32")
    assert kl == pytest.approx(mean_kl(base, other, tiny_tokenizer, chats=CHATS, precision="fp32"))
    assert loss.n_tokens == expected.n_tokens and loss.loss == pytest.approx(expected.loss, rel=1e-5)
    assert abs(loss.loss - reference_loss(base, tiny_tokenizer, chats=CHATS, precision="fp32").loss) > 1e-3  # other's


def test_shipped_general_tasks_load():
    tasks = load_general_tasks(n=5)
    assert len(tasks) == 5 and tasks[0].prompt[0]["role"] == "user" and tasks[0].answer
    assert "Night : Day" in tasks[1].prompt[0]["content"]  # instruction + input


def test_forgetting_flags_only_beyond_thresholds():
    base = GeneralScores(10.0, 8.0, 40.0, None, [], 0.0)
    mild = GeneralScores(10.5, 8.2, 38.0, 0.05, [], 0.0)
    bad = GeneralScores(14.0, 8.2, 20.0, 0.9, [], 0.0)
    ok = judge_forgetting(base, mild, max_perplexity_increase=0.10, max_kl=0.25, max_chrf_drop=5)
    assert not ok.flagged and ok.text_perplexity_change == pytest.approx(0.05)
    flagged = judge_forgetting(base, bad, max_perplexity_increase=0.10, max_kl=0.25, max_chrf_drop=5)
    assert flagged.flagged and len(flagged.reasons) == 3  # perplexity, chrF and KL; answer perplexity is within


def test_generation_probe_scores_restores_mode_and_tracks_best(tiny_model, tiny_tokenizer):
    examples = [Example(c, SourceRef("v", line=i)) for i, c in enumerate(CHATS)]
    probe = GenerationProbe(ProbeConfig(n=2, max_new_tokens=4, batch_size=2, patience=2), examples)
    tiny_model.train()
    tiny_model.config.use_cache = False
    scores = probe(tiny_model, tiny_tokenizer)
    assert set(scores) == {"probe/exact_match", "probe/token_f1"} and 0 <= scores["probe/token_f1"] <= 100
    assert tiny_model.training and tiny_model.config.use_cache is False
    assert probe.update(10, {"probe/exact_match": 20.0}) == (True, False)
    assert probe.update(20, {"probe/exact_match": 30.0}) == (True, False)
    assert probe.update(30, {"probe/exact_match": 30.0}) == (False, False)
    assert probe.update(40, {"probe/exact_match": 10.0}) == (False, True)
    assert probe.state.best_step == 20


def test_a_generation_limit_shorter_than_the_references_is_reported_before_generating(tiny_tokenizer, capsys):
    from tunesmith.generate import cut_off_warning

    refs = ["ASK { ?a ?b ?c }", "SELECT ?a WHERE { " + "?a <p> ?b . " * 40 + "}"]
    longest = len(tiny_tokenizer(refs[1], add_special_tokens=False)["input_ids"])
    warning = cut_off_warning(tiny_tokenizer, refs, 32, "probe.max_new_tokens")
    assert f"shorter than 1 of 2 references (the longest has {longest} tokens)" in warning
    assert f"probe.max_new_tokens to at least {longest + 1}" in warning
    assert cut_off_warning(tiny_tokenizer, refs, longest, "x") is not None  # no room left for the end of turn
    assert cut_off_warning(tiny_tokenizer, refs, longest + 1, "x") is None
    examples = [Example([{"role": "user", "content": "q"}, {"role": "assistant", "content": r}], SourceRef("v", line=i))
                for i, r in enumerate(refs)]
    GenerationProbe(ProbeConfig(n=2, max_new_tokens=32), examples, tiny_tokenizer)  # warns at construction
    assert "probe.max_new_tokens=32 is shorter" in capsys.readouterr().err.replace("\n", " ")


def test_base_forgetting_scores_are_cached_by_weights_tasks_and_settings(tmp_path, tiny_model_dir):
    import shutil

    from tunesmith.eval.forgetting import (
        GeneralScores, GeneralTask, base_scores_path, read_cached_scores, write_cached_scores,
    )

    tasks = [GeneralTask([{"role": "user", "content": "Name a colour."}], "Blue.")]
    key = lambda model=str(tiny_model_dir), t=tasks, n=96, b=16, p="bf16": base_scores_path(tmp_path, model, t, n, b, p)  # noqa: E731
    assert key() == key()
    other_tasks = [GeneralTask([{"role": "user", "content": "Name a colour."}], "Red.")]
    assert len({key(), key(t=other_tasks), key(n=32), key(b=8), key(p="fp32")}) == 5
    copy = tmp_path / "model-copy"
    shutil.copytree(tiny_model_dir, copy)
    assert key(model=str(copy)) == key()  # the weights, not the path
    (copy / "config.json").write_text((copy / "config.json").read_text().replace("{", '{"_touched": 1, ', 1))
    assert key(model=str(copy)) != key()  # a changed model is never served stale scores

    scores = GeneralScores(12.5, 3.25, 41.0, None, ["Blue."], 7.0)
    assert read_cached_scores(key()) is None
    write_cached_scores(key(), scores)
    assert read_cached_scores(key()) == scores
    key().write_text('{"text_perplexity": 1')  # torn or foreign: measured again, never an error
    assert read_cached_scores(key()) is None
