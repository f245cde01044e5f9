"""Virtual-token methods (prompt tuning, prefix tuning, p-tuning) really train: the loss goes through peft's forward,
the virtual tokens receive gradients, changing them changes the output, and packing is refused."""

import pytest
import torch
from pydantic import TypeAdapter

from tunesmith.config import ConfigError, MethodConfig, load_config
from tunesmith.data.batching import collate
from tunesmith.methods.base import Task, get_method
from tunesmith.train.loss import TrainedTokenLoss, final_hidden_states

from conftest import write_config

VIRTUAL = ["prompt_tuning", "prefix_tuning", "p_tuning"]


def prompt_parameters(model):
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("name", VIRTUAL)
def test_virtual_tokens_get_gradients_and_change_the_output(name, tiny_model_dir, make_examples):
    method = get_method(name)
    cfg = TypeAdapter(MethodConfig).validate_python({"name": name, "num_virtual_tokens": 4})
    task = Task(model_path=str(tiny_model_dir))
    torch.manual_seed(0)
    model = method.apply(method.load_base(tiny_model_dir, cfg, "cpu", task), cfg, task)
    batch = collate(make_examples(3, 300), [[0], [1], [2]], pad_id=2, pack=False)
    loss = TrainedTokenLoss(model)

    hidden = final_hidden_states(model, batch)
    assert hidden.shape[:2] == batch.input_ids.shape  # the virtual positions are dropped: position t is token t

    loss_sum, n = loss(batch)
    (loss_sum / n).backward()
    params = prompt_parameters(model)
    assert params and all(p.grad is not None and p.grad.abs().sum() > 0 for p in params.values())

    model.eval()
    with torch.no_grad():
        before = loss.logits(batch).clone()
        for p in params.values():
            p.add_(torch.randn_like(p))
        after = loss.logits(batch)
    assert not torch.allclose(before, after), "the virtual tokens do not reach the output"


@pytest.mark.parametrize("name", VIRTUAL)
def test_a_few_steps_lower_the_loss(name, tiny_model_dir, make_examples):
    method = get_method(name)
    cfg = TypeAdapter(MethodConfig).validate_python({"name": name, "num_virtual_tokens": 4})
    torch.manual_seed(0)
    model = method.apply(method.load_base(tiny_model_dir, cfg), cfg, Task(model_path=str(tiny_model_dir)))
    batch = collate(make_examples(4, 300), [[0], [1], [2], [3]], pad_id=2, pack=False)
    loss = TrainedTokenLoss(model)
    opt = torch.optim.AdamW(prompt_parameters(model).values(), lr=5e-2)
    losses = []
    for _ in range(8):
        loss_sum, n = loss(batch)
        (loss_sum / n).backward()
        opt.step()
        opt.zero_grad()
        losses.append(float(loss_sum / n))
    assert losses[-1] < losses[0] - 0.05


@pytest.mark.parametrize("name", VIRTUAL)
def test_packing_is_refused_with_a_clear_message(name, tmp_path, tiny_model_dir, dblp_file):
    import yaml

    path = write_config(tmp_path, tiny_model_dir, dblp_file, train={"pack": True})
    cfg = yaml.safe_load(path.read_text())
    path.write_text(yaml.safe_dump({**cfg, "method": {"name": name}}))
    with pytest.raises(ConfigError, match="set train.pack: false"):
        load_config(path)
    assert load_config(path, ["train.pack=false"]).method.name == name


def test_forgetting_measures_work_on_a_virtual_token_model(tiny_model_dir, tiny_tokenizer):
    """eval's reference loss and KL(base || tuned) go through the same logits as training (virtual positions dropped)."""
    from tunesmith.eval.scoring import answers_and_reference_loss, mean_kl, reference_loss
    from tunesmith.models.loading import load_model

    method = get_method("prompt_tuning")
    cfg = TypeAdapter(MethodConfig).validate_python({"name": "prompt_tuning", "num_virtual_tokens": 4, "init": "random"})
    torch.manual_seed(0)
    tuned = method.apply(method.load_base(tiny_model_dir, cfg), cfg).eval()
    base = load_model(tiny_model_dir, device="cpu").eval()
    chats = [[{"role": "user", "content": "Who wrote it?"}, {"role": "assistant", "content": "Ada Lovelace"}]]
    alone = reference_loss(tuned, tiny_tokenizer, chats=chats, precision="fp32")
    assert alone.n_tokens > 0
    # eval scores references while it generates; a virtual-token model's are scored on their own, the same
    _, scored, _ = answers_and_reference_loss(tuned, tiny_tokenizer, [chats[0][:1]], [chats[0][1]["content"]],
                                           max_new_tokens=3, batch_size=1, precision="fp32")
    assert (scored.loss, scored.n_tokens) == (alone.loss, alone.n_tokens)
    assert mean_kl(base, tuned, tiny_tokenizer, chats=chats, precision="fp32") > 0
    assert mean_kl(base, base, tiny_tokenizer, chats=chats, precision="fp32") == pytest.approx(0.0, abs=1e-6)
