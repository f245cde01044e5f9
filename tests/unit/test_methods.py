"""One battery for every registered method (the PEFT way): the same checks, driven by the method registry, under
the causal-LM objective and under a classification objective (methods and objectives are separate plug-ins)."""

import json
import typing

import pytest
import torch
from pydantic import TypeAdapter

from tunesmith.config import MethodConfig
from tunesmith.data.batching import collate
from tunesmith.methods.base import Task, count_parameters, get_method, registry
from tunesmith.objectives.classification import head_task
from tunesmith.records import IGNORE_INDEX, SourceRef, TokenizedExample, TunesmithError
from tunesmith.train.loss import HeadLoss, TrainedTokenLoss

METHODS = sorted(registry())
CAUSAL_METHODS = [m for m in METHODS if m != "feature_extraction"]  # a frozen base with no head trains nothing


def default_config(name: str):
    """The method's config section with its defaults, as `method: {name: ...}` in a YAML config gives it."""
    return TypeAdapter(MethodConfig).validate_python({"name": name})


def test_every_registered_method_has_a_config_section_and_vice_versa():
    union = typing.get_args(typing.get_args(MethodConfig)[0])
    assert sorted(cls.model_fields["name"].default for cls in union) == METHODS


@pytest.fixture()
def batch(make_examples, tiny_model_dir):
    examples = make_examples(4, 300)
    return collate(examples, [[0], [1], [2], [3]], pad_id=2, pack=False)


@pytest.fixture()
def class_batch():
    """Sequence classification: one label (of 3) at the last token of each example, targets not shifted."""
    g = torch.Generator().manual_seed(0)
    examples = []
    for i, n in enumerate([7, 12, 5, 9]):
        ids = torch.randint(3, 300, (n,), generator=g).tolist()
        examples.append(TokenizedExample(ids, [IGNORE_INDEX] * (n - 1) + [i % 3], SourceRef("x", line=i + 1)))
    return collate(examples, [[0], [1], [2], [3]], pad_id=2, pack=False, shift=False)


class Tokenizer:
    pad_token_id = 2


def distill_loss(model):
    """Distillation only (alpha 0) from a teacher of the same shape with other random weights: the gradient that
    trains is the divergence's, through whatever the method wraps around the model."""
    from tunesmith.train.distill_loss import DistillLoss
    from tunesmith.train.loss import causal_lm_of

    inner = causal_lm_of(model)
    with torch.random.fork_rng():
        torch.manual_seed(1)
        teacher = TrainedTokenLoss(type(inner)(inner.config).eval())

    def source(batch, temperature):
        with torch.no_grad():
            return torch.log_softmax(teacher.logits(batch) / temperature, -1), None

    return DistillLoss(model, alpha=0.0, temperature=2.0, divergence="forward_kl", beta=0.5, source=source)


OBJECTIVES = {
    # objective: (task, loss, batch fixture)
    "causal_lm": (lambda path: Task(model_path=str(path)), TrainedTokenLoss, "batch"),
    "distill": (lambda path: Task(model_path=str(path)), distill_loss, "batch"),
    "classification": (lambda path: head_task("SEQ_CLS", "AutoModelForSequenceClassification", ["a", "b", "c"], path,
                                              Tokenizer()), HeadLoss, "class_batch"),
}
HEAD_METHODS = [m for m in METHODS if m != "prefix_tuning"]  # refused by its check: see methods/prefix_tuning.py
CASES = ([(m, "causal_lm") for m in CAUSAL_METHODS] + [(m, "classification") for m in HEAD_METHODS]
         + [(m, "distill") for m in CAUSAL_METHODS])


def outputs(loss, batch):
    loss.model.eval()
    with torch.no_grad():
        return loss.logits(batch)


@pytest.mark.parametrize("name,objective", CASES, ids=[f"{m}-{o}" for m, o in CASES])
def test_method_battery(name, objective, tiny_model_dir, tmp_path, request):
    make_task, make_loss, batch_name = OBJECTIVES[objective]
    batch = request.getfixturevalue(batch_name)
    method, cfg, task = get_method(name), default_config(name), make_task(tiny_model_dir)
    torch.manual_seed(0)
    model = method.apply(method.load_base(tiny_model_dir, cfg, "cpu", task), cfg, task)
    trainable, total = count_parameters(model)
    assert 0 < trainable < total or name == "full"

    # one optimizer step: what trains changes, nothing frozen does
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    loss_sum, n = make_loss(model)(batch)
    (loss_sum / n).backward()
    opt.step()
    after = dict(model.named_parameters())
    changed = {n for n in before if not torch.equal(before[n], after[n].detach())}
    trainable_names = {n for n, p in after.items() if p.requires_grad}
    assert changed, "training changed nothing"
    assert changed <= trainable_names, f"frozen parameters changed: {sorted(changed - trainable_names)[:3]}"
    if task.head_modules:
        assert any("score" in n for n in changed), "the new head did not train"

    # save → load onto a fresh base: identical outputs
    trained = outputs(make_loss(model), batch)
    method.save(model, tmp_path / "out")
    reloaded = method.load(method.load_base(tiny_model_dir, cfg, "cpu", task), tmp_path / "out", task)
    torch.testing.assert_close(outputs(make_loss(reloaded), batch), trained, rtol=0, atol=0)

    # peft-format outputs load with plain peft + transformers
    config = tmp_path / "out" / "adapter_config.json"
    assert method.peft_format == config.is_file()
    if method.peft_format:
        from peft import PeftModel

        plain = PeftModel.from_pretrained(method.load_base(tiny_model_dir, cfg, "cpu", task), tmp_path / "out")
        assert json.loads(config.read_text())["peft_type"]
        torch.testing.assert_close(outputs(make_loss(plain), batch), trained, rtol=0, atol=0)

    # merge == unmerged, or a clear refusal
    from tunesmith.export.merge import TrainedRun, merge_checked

    if method.mergeable:
        merged = method.merge(reloaded)
        assert not hasattr(merged, "peft_config")
        torch.testing.assert_close(outputs(make_loss(merged), batch), trained, rtol=1e-4, atol=1e-4)  # fp32 reassociation
    else:
        with pytest.raises(TunesmithError, match="does not merge|quantized"):
            merge_checked(TrainedRun(tmp_path, None, method, reloaded, None))


@pytest.mark.parametrize("name", CAUSAL_METHODS)
def test_generation_answers_what_the_trained_forward_predicts(name, tiny_model_dir, tiny_tokenizer):
    """Greedy `generate_rows` (batched, left-padded, KV-cached) == the argmax of the model's own forward, one token
    at a time, row by row: the forward training optimised. peft 0.21's generation of the virtual-token methods fails
    this under transformers 5 (prompt re-injected before every token; the prefix ignored), tunesmith.generate
    gives them their virtual tokens itself."""
    from tunesmith.generate import RowRequest, generate_rows

    method, cfg, task = get_method(name), default_config(name), Task(model_path=str(tiny_model_dir))
    torch.manual_seed(0)
    model = method.apply(method.load_base(tiny_model_dir, cfg, "cpu", task), cfg, task)
    with torch.no_grad():  # as if trained: whatever the method added moves away from its identity start
        for p in model.parameters():
            if p.requires_grad and p.is_floating_point():
                p.add_(torch.randn_like(p) * 0.5)
    model.eval()
    prompts = [[5, 17, 42, 9, 100, 7, 250], [33, 8]]  # different lengths: the short one is left-padded
    limits = [40, 21]  # past DROP_FINISHED_EVERY: the batch continues from its cache, a finished row dropped
    results = generate_rows(model, tiny_tokenizer, [RowRequest(ids, max_new_tokens=n) for ids, n in zip(prompts, limits)],
                            batch_size=2, precision="fp32")
    with torch.no_grad():
        for ids, result, limit in zip(prompts, results, limits):
            tokens = []
            for _ in range(limit):
                next_id = int(model(input_ids=torch.tensor([ids + tokens])).logits[0, -1].argmax())
                if next_id == tiny_tokenizer.eos_token_id:
                    break
                tokens.append(next_id)
            assert result.text == tiny_tokenizer.decode(tokens, skip_special_tokens=True), name


def test_unknown_method():
    with pytest.raises(KeyError, match="known: adapter, feature_extraction, freeze, full"):
        get_method("magic")


def test_lora_options_reach_peft(tiny_model_dir):
    method = get_method("lora")
    cfg = TypeAdapter(MethodConfig).validate_python(
        {"name": "lora", "r": 4, "target_modules": "attention", "rank_pattern": {"q_proj": 2}, "use_dora": True,
         "use_rslora": True})
    model = method.apply(method.load_base(tiny_model_dir, cfg), cfg)
    peft_cfg = model.peft_config["default"]
    assert set(peft_cfg.target_modules) == {"q_proj", "k_proj", "v_proj", "o_proj"}
    assert peft_cfg.use_dora and peft_cfg.use_rslora and peft_cfg.rank_pattern == {"q_proj": 2}
    q = model.get_base_model().model.layers[0].self_attn.q_proj
    assert q.lora_A["default"].weight.shape[0] == 2 and "default" in q.lora_magnitude_vector
    assert not any("mlp" in n for n, p in model.named_parameters() if p.requires_grad)
    with pytest.raises(ValueError, match="matches no layer"):
        bad = TypeAdapter(MethodConfig).validate_python({"name": "lora", "target_modules": "mlp"})
        method.apply(torch.nn.Sequential(torch.nn.Linear(2, 2)), bad)


def test_lora_on_the_top_blocks_only_and_backward_stops_below_them(tiny_model_dir, batch):
    method = get_method("lora")
    cfg = TypeAdapter(MethodConfig).validate_python({"name": "lora", "top_blocks": 1})
    model = method.apply(method.load_base(tiny_model_dir, cfg), cfg)
    assert {n.split(".")[4] for n, p in model.named_parameters() if p.requires_grad} == {"1"}  # of layers 0, 1
    seen = []
    model.get_base_model().model.layers[0].register_full_backward_hook(lambda *args: seen.append(0))
    model.get_base_model().model.layers[1].register_full_backward_hook(lambda *args: seen.append(1))
    loss, _ = TrainedTokenLoss(model)(batch)
    loss.backward()
    assert seen == [1]  # nothing below the adapted block needs a gradient
    with pytest.raises(ValueError, match="has 2 transformer blocks"):
        too_many = TypeAdapter(MethodConfig).validate_python({"name": "lora", "top_blocks": 3})
        method.apply(method.load_base(tiny_model_dir, too_many), too_many)


def test_freeze_trains_only_the_top_blocks(tiny_model_dir):
    method = get_method("freeze")
    cfg = TypeAdapter(MethodConfig).validate_python({"name": "freeze", "top_blocks": 1})
    model = method.apply(method.load_base(tiny_model_dir, cfg), cfg)
    assert {n.split(".")[2] for n, p in model.named_parameters() if p.requires_grad} == {"1"}
    with pytest.raises(Exception, match="trains nothing"):
        TypeAdapter(MethodConfig).validate_python({"name": "freeze", "top_blocks": 0})


def test_adapter_kinds_and_identity_at_start(tiny_model_dir, batch):
    method = get_method("adapter")
    base = method.load_base(tiny_model_dir, default_config("adapter"))
    reference = outputs(TrainedTokenLoss(base), batch)
    for kind, per_block in (("houlsby", 2), ("pfeiffer", 1)):
        cfg = TypeAdapter(MethodConfig).validate_python({"name": "adapter", "kind": kind, "reduction_factor": 4})
        model = method.apply(method.load_base(tiny_model_dir, cfg), cfg)
        adapted = [n for n, _ in model.named_modules() if n.endswith(".adapter")]
        assert len(adapted) == per_block * 2  # two blocks in the tiny model
        assert model.model.layers[0].mlp.down_proj.adapter.down.out_features == 32 // 4
        torch.testing.assert_close(outputs(TrainedTokenLoss(model), batch), reference, rtol=0, atol=0)  # up = 0


def test_saved_tensors_the_model_lacks_are_refused(tiny_model_dir, tmp_path):
    """freeze/adapter/feature_extraction load what they saved onto a fresh base: a file from another model is an
    error naming the tensors, never a silent partial load."""
    from safetensors.torch import save_file

    from tunesmith.methods.base import load_trained_state
    from tunesmith.models.loading import load_model

    model = load_model(tiny_model_dir, device="cpu")
    name, param = next(iter(model.named_parameters()))
    save_file({name: torch.ones_like(param)}, tmp_path / "good.safetensors")
    load_trained_state(model, tmp_path / "good.safetensors")
    assert torch.equal(dict(model.named_parameters())[name], torch.ones_like(param))
    assert not any(p.requires_grad for p in model.parameters())
    save_file({"model.layers.99.mlp.up_proj.weight": torch.ones(2, 2)}, tmp_path / "other.safetensors")
    with pytest.raises(ValueError, match="holds tensors the model lacks: .*layers.99"):
        load_trained_state(load_model(tiny_model_dir, device="cpu"), tmp_path / "other.safetensors")
