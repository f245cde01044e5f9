from tunesmith.data.tokenize import render_prompt, tokenize_example, tokenize_examples
from tunesmith.records import IGNORE_INDEX, Example, SourceRef

WHERE = SourceRef("t.jsonl", line=1)


def chat(*turns):
    roles = ["user", "assistant"] * len(turns)
    return Example(messages=[{"role": r, "content": c} for r, c in zip(roles, turns)], source=WHERE)


def trained_text(tokenizer, tok):
    return tokenizer.decode([i for i, l in zip(tok.input_ids, tok.labels) if l != IGNORE_INDEX])


def test_only_assistant_content_and_eos_are_trained(tiny_tokenizer):
    tok = tokenize_example(tiny_tokenizer, chat("What are the papers?", "SELECT DISTINCT ?answer"))
    assert trained_text(tiny_tokenizer, tok) == "SELECT DISTINCT ?answer<|im_end|>"
    # pad == eos here, as in SmolLM2: EOS must still be trained
    assert tiny_tokenizer.pad_token_id == tiny_tokenizer.eos_token_id
    assert tiny_tokenizer.eos_token_id in [l for l in tok.labels if l != IGNORE_INDEX]
    assert tok.labels[-1] == IGNORE_INDEX  # the newline after <|im_end|> is not trained


def test_training_text_starts_with_inference_prompt(tiny_tokenizer):
    example = chat("What are the papers?", "SELECT")
    tok = tokenize_example(tiny_tokenizer, example)
    prompt_ids = tiny_tokenizer(render_prompt(tiny_tokenizer, example.messages[:-1]), add_special_tokens=False)["input_ids"]
    assert tok.input_ids[: len(prompt_ids)] == prompt_ids
    assert all(l == IGNORE_INDEX for l in tok.labels[: len(prompt_ids)])
    assert tok.labels[len(prompt_ids)] != IGNORE_INDEX  # the first answer token is trained


def test_multi_turn_train_on_modes(tiny_tokenizer):
    example = chat("q1", "first answer", "q2", "second answer")
    all_turns = trained_text(tiny_tokenizer, tokenize_example(tiny_tokenizer, example))
    assert all_turns == "first answer<|im_end|>second answer<|im_end|>"
    last = tokenize_example(tiny_tokenizer, example, "last_assistant")
    assert trained_text(tiny_tokenizer, last) == "second answer<|im_end|>"
    everything = tokenize_example(tiny_tokenizer, example, "all")
    assert everything.labels == everything.input_ids


def test_length_policies_are_explicit(tiny_tokenizer):
    long = chat("question " * 60, "answer")
    examples = [long, chat("short", "answer")]
    _, report = tokenize_examples(tiny_tokenizer, examples, max_seq_len=32)
    assert len(report.issues) == 1 and "longer than data.max_seq_len=32" in report.issues[0].reason
    kept, report = tokenize_examples(tiny_tokenizer, examples, max_seq_len=32, truncation="drop")
    assert len(kept) == 1 and report.n_dropped == 1
    # Truncating the long prompt cuts its answer away entirely: all labels masked is an error, never a silent 0 loss.
    kept, report = tokenize_examples(tiny_tokenizer, examples, max_seq_len=32, truncation="right")
    assert len(kept) == 1 and "cuts the target away entirely" in report.issues[0].reason
    partly = chat("q", "answer " * 40)
    kept, report = tokenize_examples(tiny_tokenizer, [partly], max_seq_len=32, truncation="right")
    assert report.n_truncated == 1 and kept[0].truncated and len(kept[0]) == 32 and kept[0].n_trained > 0


def test_raw_text_is_split_not_truncated(tiny_tokenizer):
    doc = Example(messages=[], source=WHERE, text="the quick brown fox " * 40)
    chunks, report = tokenize_examples(tiny_tokenizer, [doc], max_seq_len=32)
    full = tiny_tokenizer(doc.text)["input_ids"] + [tiny_tokenizer.eos_token_id]
    assert sum(len(c) for c in chunks) == len(full) and all(len(c) <= 32 for c in chunks)
    assert chunks[-1].labels[-1] == tiny_tokenizer.eos_token_id
