"""Export invariants on the tiny model: merges that are safe or refused, tied embeddings kept, servable adapters,
Ollama templates that render exactly like the Jinja template, and the parity comparison itself."""

import json

import pytest
import torch
from safetensors import safe_open

from tunesmith.export.hf import save_hf
from tunesmith.export.merge import TrainedRun, merge_checked, quantization_of, tying_of
from tunesmith.export.ollama import chat_parts, go_template, modelfile
from tunesmith.export.parity import ParityPrompts, compare, first_difference
from tunesmith.export.peft import serving_problems
from tunesmith.methods.base import get_method
from tunesmith.records import TunesmithError


def lora_model(tiny_model, targets, seed=0, **extra):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    # init_lora_weights=False: B is random too, so the adapter really changes the function (as after training)
    return get_peft_model(tiny_model, LoraConfig(r=4, lora_alpha=8, target_modules=targets, init_lora_weights=False, **extra))


def trained(model, tokenizer, method="lora"):
    return TrainedRun(run=None, cfg=None, method=get_method(method), model=model, tokenizer=tokenizer)


def logits(model, ids):
    with torch.inference_mode():
        return model(input_ids=ids).logits


IDS = torch.tensor([[1, 5, 9, 40, 77, 120, 3, 8]])


def test_tied_in_tied_out_and_merged_embeddings_equal_lm_head(tiny_model, tiny_tokenizer, tmp_path):
    assert tying_of(tiny_model).tied
    peft_model = lora_model(tiny_model, "all-linear")
    before = logits(peft_model, IDS)
    merged = merge_checked(trained(peft_model, tiny_tokenizer))
    assert merged.get_input_embeddings().weight is merged.get_output_embeddings().weight
    torch.testing.assert_close(logits(merged, IDS), before, rtol=1e-4, atol=1e-4)
    save_hf(merged, tiny_tokenizer, tmp_path, "bf16")
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["tie_word_embeddings"] is True and config["dtype"] == "bfloat16"
    with safe_open(tmp_path / "model.safetensors", framework="pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    assert all(t.dtype == torch.bfloat16 for t in tensors.values())
    embedding = tensors["model.embed_tokens.weight"]
    assert torch.equal(tensors.get("lm_head.weight", embedding), embedding)  # one matrix, or two identical ones
    assert next(merged.parameters()).dtype == torch.float32  # saving in 16 bit does not change the caller's model


@pytest.mark.parametrize("targets", [["lm_head"], ["embed_tokens"]])
def test_adapter_on_a_tied_matrix_is_refused_or_untied_explicitly(tiny_model_dir, tiny_tokenizer, tmp_path, targets):
    from tunesmith.models.loading import load_model

    peft_model = lora_model(load_model(tiny_model_dir, device="cpu"), targets)
    with pytest.raises(TunesmithError, match="tie_word_embeddings=true.*--untie-embeddings"):
        merge_checked(trained(peft_model, tiny_tokenizer))

    peft_model = lora_model(load_model(tiny_model_dir, device="cpu"), targets)
    before = logits(peft_model, IDS)
    merged = merge_checked(trained(peft_model, tiny_tokenizer), untie=True)
    torch.testing.assert_close(logits(merged, IDS), before, rtol=1e-4, atol=1e-4)  # the trained function, kept
    assert merged.config.tie_word_embeddings is False
    assert merged.get_input_embeddings().weight is not merged.get_output_embeddings().weight
    save_hf(merged, tiny_tokenizer, tmp_path, "f32")
    reloaded = load_model(tmp_path, device="cpu")
    torch.testing.assert_close(logits(reloaded, IDS), before, rtol=1e-4, atol=1e-4)


def test_non_mergeable_method_is_refused(tiny_model, tiny_tokenizer):
    class Bottleneck:
        name = "adapter"
        mergeable = False

        def merge(self, model):  # pragma: no cover - must never be called
            raise AssertionError

    run = TrainedRun(None, None, Bottleneck(), tiny_model, tiny_tokenizer)
    with pytest.raises(TunesmithError, match="'adapter' does not merge.*tunesmith generate --run"):
        merge_checked(run)
    Bottleneck.name, Bottleneck.peft_format = "prompt_tuning", True  # a peft adapter that does not merge
    with pytest.raises(TunesmithError, match="'prompt_tuning' does not merge.*--to peft"):
        merge_checked(run)


def test_quantized_base_is_refused(tiny_model, tiny_tokenizer):
    assert quantization_of(tiny_model) is None
    tiny_model.config.quantization_config = {"quant_method": "bitsandbytes", "load_in_4bit": True}
    assert "bitsandbytes" in quantization_of(tiny_model)
    with pytest.raises(TunesmithError, match="quantized.*never does it"):
        merge_checked(trained(lora_model(tiny_model, "all-linear"), tiny_tokenizer))


def test_exported_lora_adapter_has_nothing_vllm_rejects(tiny_model, tmp_path):
    model = lora_model(tiny_model, "all-linear")
    get_method("lora").save(model, tmp_path / "plain")
    assert serving_problems(tmp_path / "plain") == ([], [])

    config = json.loads((tmp_path / "plain" / "adapter_config.json").read_text())
    assert not config.get("modules_to_save") and config["peft_type"] == "LORA"
    for change, expected in [({"modules_to_save": ["lm_head"]}, "modules_to_save"), ({"use_dora": True}, "DoRA"),
                             ({"bias": "all"}, "bias"), ({"peft_type": "IA3"}, "LoRA adapters only")]:
        (tmp_path / "plain" / "adapter_config.json").write_text(json.dumps({**config, **change}))
        problems, _ = serving_problems(tmp_path / "plain")
        assert len(problems) == 1 and expected in problems[0]
    (tmp_path / "plain" / "adapter_config.json").write_text(json.dumps({**config, "r": 32}))
    assert serving_problems(tmp_path / "plain") == ([], ["rank 32 > 16: start vLLM with --max-lora-rank 32"])


def test_adapter_with_saved_modules_is_reported(tiny_model_dir, tmp_path):
    from tunesmith.models.loading import load_model

    model = lora_model(load_model(tiny_model_dir, device="cpu"), ["q_proj"], modules_to_save=["lm_head"])
    model.save_pretrained(tmp_path)
    problems, _ = serving_problems(tmp_path)
    assert any("modules_to_save" in p for p in problems) and any("non-LoRA tensors" in p for p in problems)


def test_ollama_template_renders_exactly_like_the_jinja_template(tiny_tokenizer):
    from tunesmith.data.tokenize import render_prompt

    parts = chat_parts(tiny_tokenizer)
    conversation = [{"role": "system", "content": "S"}, {"role": "user", "content": "a {{b}}"},
                    {"role": "assistant", "content": "c"}, {"role": "user", "content": "d"}]
    assert parts.render(conversation) == render_prompt(tiny_tokenizer, conversation)
    template = go_template(parts)
    assert template.startswith("{{ range .Messages }}") and '{{ "{{" }}' not in template
    assert "<|im_start|>user\n{{ .Content }}<|im_end|>\n" in template
    text = modelfile("model.q8_0.gguf", tiny_tokenizer, ["<|im_end|>"], system_prompt="Answer with SPARQL.")
    assert "FROM ./model.q8_0.gguf" in text and 'PARAMETER stop "<|im_end|>"' in text
    assert 'SYSTEM """Answer with SPARQL."""' in text


def test_ollama_template_refuses_what_is_not_a_per_message_wrapper(tiny_tokenizer):
    tokenizer = tiny_tokenizer.__class__.from_pretrained(tiny_tokenizer.name_or_path)
    tokenizer.chat_template = ("{% for m in messages %}{% if loop.index0 == 2 %}EXTRA{% endif %}"
                               "<{{ m['role'] }}>{{ m['content'] }}</s>{% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}")
    with pytest.raises(TunesmithError, match="not a plain per-message wrapper"):
        chat_parts(tokenizer)


def test_parity_comparison_counts_identical_answers_and_finds_first_divergence():
    prompts = ParityPrompts("x", [[{"role": "user", "content": f"q{i}"}] for i in range(3)], ["A", "B", "C"])
    result = compare(prompts, ["A", "B", "Cx"], ["A", "Bz", "C"], "model.gguf", "transformers-gguf", min_identical=0.5)
    assert (result.n, result.identical, result.passed) == (3, 1, False)
    assert [(d.item, d.prompt, d.at_char) for d in result.divergences] == [(1, "q1", 1), (2, "q2", 1)]
    assert result.exact_match_reference == pytest.approx(200 / 3) and result.exact_match_exported == pytest.approx(200 / 3)
    assert first_difference("abc", "abd") == 2 and first_difference("ab", "abc") == 2


def test_missing_converter_says_how_to_install_it(tmp_path, monkeypatch):
    from tunesmith.export.llamacpp import converter_dir

    monkeypatch.setenv("TUNESMITH_LLAMACPP_CONVERT", str(tmp_path))
    with pytest.raises(TunesmithError, match="(?s)make setup.*python -m tunesmith.export.llamacpp install"):
        converter_dir()
