"""Distillation: the loss is zero when student == teacher, equals a plain reference for every divergence (full
vocabulary and top-k + tail), counts trained positions only, keeps gradient accumulation exact; the offline store
round-trips and refuses other data; a vocabulary mismatch is a clear error; `tunesmith student` keeps the blocks
asked for and loads and generates like any model."""

import json
import math

import pytest
import torch
from accelerate import Accelerator

from tunesmith.config import load_config
from tunesmith.data.batching import collate
from tunesmith.objectives.base import get_objective
from tunesmith.objectives.distill import TopKStore, batch_segments
from tunesmith.records import IGNORE_INDEX, TunesmithError
from tunesmith.train.distill_loss import DistillLoss
from tunesmith.train.run import accumulate_gradients

from conftest import build_tiny_model, write_config

DIVERGENCES = ["forward_kl", "reverse_kl", "jsd"]


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory, tiny_model_dir):
    """Another tiny Llama with the same tokenizer (a different seed: a different distribution)."""
    from tunesmith.models.loading import load_tokenizer

    return build_tiny_model(tmp_path_factory.mktemp("teacher"), seed=1, tokenizer=load_tokenizer(tiny_model_dir))


def online_source(teacher):
    teacher.eval()

    def source(batch, temperature):
        with torch.no_grad():
            logits = teacher(input_ids=batch.input_ids, position_ids=batch.position_ids,
                             attention_mask=batch.attention_mask, use_cache=False).logits[batch.targets != IGNORE_INDEX]
        return torch.log_softmax(logits.float() / temperature, -1), None

    return source


def topk_source(teacher, k):
    full = online_source(teacher)

    def source(batch, temperature):
        values, ids = full(batch, temperature)[0].topk(k, -1)
        return values, ids

    return source


def reference(student, teacher, batch, *, alpha, temperature, kind, beta=0.5, k=None):
    """Position by position, in float64, from the models' own forward: α·CE + (1 − α)·τ²·D."""
    with torch.no_grad():
        args = dict(input_ids=batch.input_ids, position_ids=batch.position_ids, attention_mask=batch.attention_mask,
                    use_cache=False)
        s_logits, t_logits = student(**args).logits.double(), teacher(**args).logits.double()
    total, count = 0.0, 0
    for r in range(batch.targets.shape[0]):
        for t in range(batch.targets.shape[1]):
            target = int(batch.targets[r, t])
            if target == IGNORE_INDEX:
                continue
            count += 1
            ce = -torch.log_softmax(s_logits[r, t], -1)[target]
            q = torch.softmax(s_logits[r, t] / temperature, -1)
            p = torch.softmax(t_logits[r, t] / temperature, -1)
            if k is not None:  # k teacher ids + one tail bucket, on both sides
                top = p.topk(k).indices
                rest = torch.ones_like(p, dtype=torch.bool)
                rest[top] = False
                p = torch.cat([p[top], p[rest].sum()[None]])
                q = torch.cat([q[top], q[rest].sum()[None]])
            kl = lambda a, b: float((a * (a / b).log()).sum())  # noqa: E731
            if kind == "forward_kl":
                d = kl(p, q)
            elif kind == "reverse_kl":
                d = kl(q, p)
            else:
                m = beta * p + (1 - beta) * q
                d = beta * kl(p, m) + (1 - beta) * kl(q, m)
            total += alpha * float(ce) + (1 - alpha) * temperature ** 2 * d
    return total, count


@pytest.fixture()
def batch(make_examples, tiny_model):
    examples = make_examples(5, tiny_model.config.vocab_size, seed=1, lo=6, hi=25)
    return collate(examples, [[0, 1], [2, 3, 4]], pad_id=2, pack=True)


def loss_of(model, source, **settings):
    defaults = dict(alpha=0.0, temperature=1.0, divergence="forward_kl", beta=0.5)
    return DistillLoss(model, **{**defaults, **settings}, source=source)


@pytest.mark.parametrize("kind", DIVERGENCES)
@pytest.mark.parametrize("k", [None, 5])
def test_zero_when_the_student_is_the_teacher(kind, k, tiny_model, batch):
    tiny_model.eval()
    source = online_source(tiny_model) if k is None else topk_source(tiny_model, k)
    with torch.no_grad():
        total, n = loss_of(tiny_model, source, divergence=kind, temperature=2.0)(batch)
    assert n == batch.n_trained and abs(float(total)) < 1e-5 * n


@pytest.mark.parametrize("kind", DIVERGENCES)
@pytest.mark.parametrize("k", [None, 7])
def test_matches_the_reference(kind, k, tiny_model, teacher_dir, batch):
    from tunesmith.models.loading import load_model

    teacher = load_model(teacher_dir, device="cpu").eval()
    tiny_model.eval()
    settings = dict(alpha=0.3, temperature=2.0, divergence=kind, beta=0.3)
    source = online_source(teacher) if k is None else topk_source(teacher, k)
    with torch.no_grad():
        total, n = loss_of(tiny_model, source, **settings)(batch)
    expected, count = reference(tiny_model, teacher, batch, alpha=0.3, temperature=2.0, kind=kind, beta=0.3, k=k)
    assert n == count
    assert float(total) == pytest.approx(expected, rel=1e-4)
    assert expected > 0.1 * n  # two different models: the divergence is far from 0


def test_only_trained_positions_count(tiny_model, teacher_dir, make_examples):
    """Masking the prompt changes the sum exactly by the masked positions' terms (the reference, position by
    position), and the count is the trained tokens."""
    from tunesmith.models.loading import load_model

    teacher = load_model(teacher_dir, device="cpu").eval()
    tiny_model.eval()
    examples = make_examples(3, tiny_model.config.vocab_size, seed=2, lo=10, hi=20)
    everything = [type(e)(e.input_ids, list(e.input_ids), e.source) for e in examples]
    masked_batch = collate(examples, [[0, 1, 2]], pad_id=2, pack=True)
    full_batch = collate(everything, [[0, 1, 2]], pad_id=2, pack=True)
    loss = loss_of(tiny_model, online_source(teacher), alpha=0.5)
    with torch.no_grad():
        (masked, n_masked), (full, n_full) = loss(masked_batch), loss(full_batch)
    assert n_masked == masked_batch.n_trained < n_full == full_batch.n_trained
    assert float(masked) == pytest.approx(reference(tiny_model, teacher, masked_batch, alpha=0.5, temperature=1.0,
                                                    kind="forward_kl")[0], rel=1e-4)
    assert float(masked) < float(full)


@pytest.mark.parametrize("pack", [True, False])
def test_gradient_accumulation_still_holds(pack, tiny_model, teacher_dir, make_examples):
    """1 micro-batch of 4 rows == 2 micro-batches of 2 rows, accumulated (per trained token over the window)."""
    from tunesmith.models.loading import load_model

    teacher = load_model(teacher_dir, device="cpu").eval()
    tiny_model.config.use_cache = False
    examples = make_examples(4, tiny_model.config.vocab_size, seed=3, lo=4, hi=60)

    def grads(groups):
        tiny_model.zero_grad(set_to_none=True)
        loss = loss_of(tiny_model, online_source(teacher), alpha=0.4, divergence="jsd", temperature=1.5)
        window = [collate(examples, rows, pad_id=2, pack=pack) for rows in groups]
        summed, tokens = accumulate_gradients(loss, window, Accelerator(cpu=True))
        return summed / tokens, {n: p.grad.clone() for n, p in tiny_model.named_parameters() if p.grad is not None}

    one = [[[0, 1], [2, 3]]] if pack else [[[0], [1], [2], [3]]]
    two = [[[0], [1]], [[2], [3]]]
    (loss_a, grads_a), (loss_b, grads_b) = grads(one), grads(two)
    assert loss_a == pytest.approx(loss_b, rel=1e-5)
    assert grads_a.keys() == grads_b.keys() and grads_a
    for name in grads_a:
        torch.testing.assert_close(grads_a[name], grads_b[name], rtol=1e-4, atol=1e-6)


def distill_config(tmp_path, student_dir, data, **objective):
    import yaml

    path = write_config(tmp_path, student_dir, data)
    cfg = yaml.safe_load(path.read_text())
    cfg["objective"] = {"name": "distill", "alpha": 0.5, "teacher_precision": "fp32", **objective}
    path.write_text(yaml.safe_dump(cfg))
    return load_config(path)


def test_offline_store_round_trips_and_is_refused_for_other_data(tmp_path, tiny_model_dir, teacher_dir, tiny_tokenizer,
                                                                 dblp_file):
    cfg = distill_config(tmp_path, tiny_model_dir, dblp_file, teacher=str(teacher_dir), mode="offline", top_k=4)
    objective = get_objective("distill")
    data = objective.prepare(str(dblp_file), cfg, tiny_tokenizer)
    files = list(dblp_file.parent.glob("dblp.jsonl.teacher-top4-*.safetensors"))
    assert len(files) == 1
    made = cfg.objective._state["store"]
    fingerprint = made.meta["fingerprint"]
    loaded = TopKStore.load(files[0], fingerprint)
    assert loaded.index == made.index and torch.equal(loaded.ids, made.ids) and torch.equal(loaded.logprobs, made.logprobs)
    assert len(loaded.index) == len(data.tokenized) and loaded.ids.shape == (sum(e.n_trained for e in data.tokenized), 4)

    # the stored top-k are the teacher's, example by example, whatever batch the example is in later
    from tunesmith.models.loading import load_model

    teacher = load_model(teacher_dir, device="cpu").eval()
    batch = collate(data.tokenized, [[3], [0]], pad_id=tiny_tokenizer.pad_token_id, pack=False)
    logprobs, ids = loaded.targets(batch_segments(batch))
    expected, _ = topk_source(teacher, 4)(batch, 1.0)
    torch.testing.assert_close(logprobs, expected, atol=2e-2, rtol=1e-3)  # stored as fp16

    # a later run reuses the store (the teacher is not even loaded)
    again = distill_config(tmp_path / "again", tiny_model_dir, dblp_file, teacher=str(teacher_dir), mode="offline", top_k=4)
    objective.prepare(str(dblp_file), again, tiny_tokenizer)
    assert "teacher" not in again.objective._state and again.objective._state["store_files"] == [str(files[0])]

    # refused when the fingerprint is not the expected one (other data, teacher, k, τ)
    with pytest.raises(TunesmithError, match="other data, another teacher"):
        TopKStore.load(files[0], "0" * 64)
    # other data: another store; a store missing an example is refused at the batch
    with pytest.raises(TunesmithError, match="no entry for an example"):
        loaded.targets([(b"x" * 16, 3)])


def test_vocabulary_mismatch_points_to_sequence_level_distillation(tmp_path, tiny_model_dir, tiny_tokenizer, dblp_file):
    from transformers import AutoTokenizer

    other = AutoTokenizer.from_pretrained(tiny_model_dir)
    other.add_tokens(["<extra-token>"])
    teacher = build_tiny_model(tmp_path / "other-vocab", seed=1, tokenizer=other)
    cfg = distill_config(tmp_path, tiny_model_dir, dblp_file, teacher=str(teacher))
    with pytest.raises(TunesmithError, match="sequence-level distillation") as err:
        get_objective("distill").prepare(str(dblp_file), cfg, tiny_tokenizer)
    assert "data relabel" in str(err.value)


def test_student_keeps_the_chosen_blocks_and_generates(tmp_path):
    from transformers import AutoModelForCausalLM

    from tunesmith.generate import generate_chat, load_for_inference
    from tunesmith.models.student import make_student, parse_layers

    teacher_dir = tmp_path / "teacher"
    build_tiny_model(teacher_dir)
    config = json.loads((teacher_dir / "config.json").read_text())
    config["num_hidden_layers"] = 4
    teacher = AutoModelForCausalLM.from_config(type(AutoModelForCausalLM.from_pretrained(teacher_dir).config)(**config))
    teacher.save_pretrained(teacher_dir)
    assert parse_layers(None, 4) == [0, 2] and parse_layers("3,0-1", 4) == [0, 1, 3]
    with pytest.raises(TunesmithError, match="do not exist"):
        parse_layers("7", 4)

    lineage = make_student(str(teacher_dir), tmp_path / "student", "1,3")
    student, tokenizer = load_for_inference(model=str(tmp_path / "student"), device="cpu")
    assert student.config.num_hidden_layers == 2 and lineage["kept_blocks"] == [1, 3]
    assert json.loads((tmp_path / "student" / "student.json").read_text())["teacher"] == str(teacher_dir)
    assert lineage["parameters"]["student"] < lineage["parameters"]["teacher"]
    t_state, s_state = teacher.state_dict(), student.state_dict()
    for name, tensor in s_state.items():
        source = name.replace("layers.0.", "layers.1.") if "layers.0." in name else name.replace("layers.1.", "layers.3.")
        assert torch.equal(tensor, t_state[source]), name
    assert student.lm_head.weight.data_ptr() == student.model.embed_tokens.weight.data_ptr()  # still tied
    [answer] = generate_chat(student, tokenizer, [[{"role": "user", "content": "Who wrote it?"}]], max_new_tokens=5,
                             show_progress=False)
    assert isinstance(answer, str) and not math.isnan(len(answer))
