import pytest
import torch

from tunesmith.data.tokenize import render_prompt
from tunesmith.generate import generate_chat, read_prompts, stop_token_ids
from tunesmith.records import DataError


def test_batched_left_padded_equals_one_at_a_time(tiny_model, tiny_tokenizer):
    conversations = [[{"role": "user", "content": text}] for text in
                     ["What are the papers?", "Did Alan Turing publish in ICML? " * 3, "fox"]]
    batched = generate_chat(tiny_model, tiny_tokenizer, conversations, max_new_tokens=12, batch_size=3,
                            precision="fp32", show_progress=False)
    single = [generate_chat(tiny_model, tiny_tokenizer, [c], max_new_tokens=12, batch_size=1, precision="fp32",
                            show_progress=False)[0] for c in conversations]
    assert batched == single
    assert len(set(batched)) > 1 or batched[0]  # not all empty


def test_generation_uses_training_template_and_stops_at_end_of_turn(tiny_model, tiny_tokenizer):
    prompt = render_prompt(tiny_tokenizer, [{"role": "user", "content": "hi"}])
    assert prompt.endswith("<|im_start|>assistant\n")
    assert tiny_tokenizer.eos_token_id in stop_token_ids(tiny_model, tiny_tokenizer)
    # Force the model to emit end-of-turn first: the answer must then be empty, not run on.
    with torch.no_grad():
        tiny_model.lm_head.weight.zero_()
        tiny_model.lm_head.weight[tiny_tokenizer.eos_token_id].fill_(1.0)
        tiny_model.model.norm.weight.fill_(1.0)
    out = generate_chat(tiny_model, tiny_tokenizer, [[{"role": "user", "content": "hi"}]], max_new_tokens=8,
                        precision="fp32", show_progress=False)
    assert out == [""]


def test_read_prompts_formats(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text('{"prompt": "a"}\n{"messages": [{"role": "user", "content": "b"}, {"role": "assistant", "content": "gold"}]}\n')
    assert read_prompts(path) == [[{"role": "user", "content": "a"}], [{"role": "user", "content": "b"}]]
    lines = tmp_path / "p.txt"
    lines.write_text("first question\n\nsecond question\n")
    assert read_prompts(lines) == [[{"role": "user", "content": "first question"}], [{"role": "user", "content": "second question"}]]


def test_read_prompts_reports_every_bad_row(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text('{"prompt": "a"}\nplain line\n{"question": "b"}\n{"messages": [{"role": "robot", "content": "c"}]}\n')
    with pytest.raises(DataError, match="3 problem") as err:
        read_prompts(path)
    assert f"{path}:2: not valid JSON" in str(err.value) and f"{path}:3: expected `messages`" in str(err.value)
    assert f"{path}:4: message 0 has role 'robot'" in str(err.value)
