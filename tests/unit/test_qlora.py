"""QLoRA on this CPU: the base really is 4-bit, and the gradient after a generate() equals the gradient before
(bitsandbytes repacks 4-bit weights into an inference-only layout after an eval-mode, no-grad forward on CPUs with
AVX512-BF16, after which no gradient flows through the base; tunesmith turns that off)."""

import pytest
import torch
from pydantic import TypeAdapter

from tunesmith.config import MethodConfig
from tunesmith.data.batching import collate
from tunesmith.methods.base import count_parameters, get_method
from tunesmith.models.precision import cpu_has_bf16
from tunesmith.train.loss import TrainedTokenLoss
from tunesmith.models.precision import store_frozen_linear_weights_in

bnb = pytest.importorskip("bitsandbytes")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """64 wide: on the 32-wide test model bitsandbytes' repacked kernel fails loudly; from 64 on it is silently wrong."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("qlora-base")
    LlamaForCausalLM(LlamaConfig(vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                 num_attention_heads=4, num_key_value_heads=2)).save_pretrained(path)
    return path


def qlora_model(path):
    method = get_method("qlora")
    cfg = TypeAdapter(MethodConfig).validate_python({"name": "qlora", "r": 4, "alpha": 8})
    torch.manual_seed(0)
    return method.apply(method.load_base(path, cfg), cfg)


def lora_gradients(model, batch):
    model.train()
    model.zero_grad(set_to_none=True)
    loss_sum, n = TrainedTokenLoss(model)(batch)
    (loss_sum / n).backward()
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.requires_grad}


def generate(model):
    model.eval()
    with torch.no_grad():
        model.generate(input_ids=torch.tensor([[5, 6, 7, 8]]), max_new_tokens=3, do_sample=False)


@pytest.fixture()
def batch(make_examples):
    return collate(make_examples(3, 300), [[0], [1], [2]], pad_id=2, pack=False)


def test_the_base_is_4bit_and_stays_so_under_bf16_storage(model_dir):
    model = qlora_model(model_dir)
    quantized = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert len(quantized) == 2 * 7  # every linear layer of both blocks
    assert all(not m.support_avx512bf16_for_cpu for m in quantized)
    store_frozen_linear_weights_in(model, torch.bfloat16)  # what training does under bf16 autocast
    assert all(m.weight.dtype == torch.uint8 and type(m.weight).__name__ == "Params4bit" for m in quantized)
    trainable, total = count_parameters(model)
    assert 0 < trainable < total


def test_gradient_after_generate_equals_gradient_before(model_dir, batch):
    model = qlora_model(model_dir)
    before = lora_gradients(model, batch)
    generate(model)
    after = lora_gradients(model, batch)
    assert before.keys() == after.keys()
    for name in before:
        torch.testing.assert_close(after[name], before[name], rtol=1e-5, atol=1e-7, msg=name)


@pytest.mark.skipif(not cpu_has_bf16(), reason="the repacking trap exists only on CPUs with AVX512-BF16")
def test_the_trap_is_real_without_the_guard(model_dir, batch):
    """The counterpart that shows the invariant test can fail: with bitsandbytes' default, gradients change."""
    model = qlora_model(model_dir)
    for m in model.modules():
        if isinstance(m, bnb.nn.Linear4bit):
            m.support_avx512bf16_for_cpu = True
    before = lora_gradients(model, batch)
    generate(model)
    after = lora_gradients(model, batch)
    assert any(not torch.allclose(after[n], before[n], rtol=1e-3, atol=1e-6) for n in before)
