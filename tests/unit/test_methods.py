"""One battery for every registered method (the PEFT way): the same checks, driven by the method registry."""

import typing

import pytest
import torch
from pydantic import TypeAdapter

from tunesmith.config import MethodConfig
from tunesmith.data.batching import collate
from tunesmith.methods.base import count_parameters, get_method, registry
from tunesmith.models.loading import load_model
from tunesmith.train.loss import TrainedTokenLoss

METHODS = sorted(registry())


def default_config(name: str):
    """The method's config section with its defaults, as `method: {name: ...}` in a YAML config gives it."""
    return TypeAdapter(MethodConfig).validate_python({"name": name})


def test_every_registered_method_has_a_config_section_and_vice_versa():
    union = typing.get_args(typing.get_args(MethodConfig)[0])
    assert sorted(cls.model_fields["name"].default for cls in union) == METHODS


def one_step(model, batch):
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    loss_module = TrainedTokenLoss(model)
    loss_sum, n = loss_module(batch)
    (loss_sum / n).backward()
    opt.step()
    opt.zero_grad()


def logits(model, batch):
    model.eval()
    with torch.no_grad():
        return model(input_ids=batch.input_ids, attention_mask=torch.ones_like(batch.input_ids)).logits


@pytest.fixture()
def batch(make_examples, tiny_model):
    examples = make_examples(4, tiny_model.config.vocab_size)
    return collate(examples, [[0], [1], [2], [3]], pad_id=2, pack=False)


@pytest.mark.parametrize("name", METHODS)
def test_method_battery(name, tiny_model_dir, batch, tmp_path):
    method = get_method(name)
    model = method.apply(load_model(tiny_model_dir, device="cpu"), default_config(name))
    trainable, total = count_parameters(model)
    assert 0 < trainable <= total
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    one_step(model, batch)
    after = dict(model.named_parameters())
    changed = {n for n in before if not torch.equal(before[n], after[n].detach())}
    trainable_names = {n for n, p in after.items() if p.requires_grad}
    assert changed, "training changed nothing"
    assert changed <= trainable_names, f"frozen parameters changed: {sorted(changed - trainable_names)[:3]}"

    trained_logits = logits(model, batch)
    method.save(model, tmp_path / "out")
    reloaded = method.load(load_model(tiny_model_dir, device="cpu"), tmp_path / "out")
    torch.testing.assert_close(logits(reloaded, batch), trained_logits, rtol=0, atol=0)

    merged = method.merge(reloaded)
    assert not hasattr(merged, "peft_config")
    torch.testing.assert_close(logits(merged, batch), trained_logits, rtol=1e-4, atol=1e-4)  # fp32 reassociation only


def test_lora_adapter_loads_with_plain_peft(tiny_model_dir, batch, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    method = get_method("lora")
    model = method.apply(load_model(tiny_model_dir, device="cpu"), default_config("lora"))
    one_step(model, batch)
    method.save(model, tmp_path / "adapter")
    assert (tmp_path / "adapter" / "adapter_model.safetensors").exists()
    plain = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_dir), tmp_path / "adapter")
    torch.testing.assert_close(logits(plain, batch), logits(model, batch), rtol=0, atol=0)


def test_unknown_method():
    with pytest.raises(KeyError, match="known: full, lora"):
        get_method("magic")
