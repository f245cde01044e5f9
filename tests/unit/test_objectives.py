"""Objectives: the data transforms put labels where the heads read them, the head loss agrees with transformers'
own classifier forward, mean pooling is the same packed and padded, and the metrics are right."""

import json

import pytest
import torch

from tunesmith.config import load_config
from tunesmith.data.batching import collate
from tunesmith.objectives.base import get_objective, registry
from tunesmith.objectives.classification import classification_report
from tunesmith.objectives.token_classification import entities, row_spans
from tunesmith.records import IGNORE_INDEX, DataError
from tunesmith.train.loss import HeadLoss

from conftest import write_config


def config(tmp_path, model_dir, data, objective, **sections):
    import yaml

    path = write_config(tmp_path, model_dir, data, **sections)
    cfg = yaml.safe_load(path.read_text())
    cfg["objective"] = objective
    cfg["data"] = {"train": str(data), "max_seq_len": 64}
    path.write_text(yaml.safe_dump(cfg))
    return load_config(path)


def test_every_objective_has_a_config_and_the_default_is_causal_lm(tmp_path, tiny_model_dir, dblp_file):
    assert {"causal_lm", "classification", "token_classification"} <= set(registry())
    assert load_config(write_config(tmp_path, tiny_model_dir, dblp_file)).objective.name == "causal_lm"


def test_classification_puts_the_label_on_the_last_token_and_reports_bad_rows(tmp_path, tiny_model_dir, tiny_tokenizer):
    data = tmp_path / "q.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in [
        {"question": "Who wrote it?", "type": "B"}, {"question": "How many?", "type": "A"},
        {"question": "No label here"}, {"type": "A"}]))
    cfg = config(tmp_path, tiny_model_dir, data, {"name": "classification", "text": "{question}", "label": "type"})
    objective = get_objective("classification")
    with pytest.raises(DataError) as err:
        objective.prepare(str(data), cfg, tiny_tokenizer)
    assert f"{data}:3" in str(err.value) and f"{data}:4" in str(err.value) and "objective.text" in str(err.value)
    cfg.data.on_bad_rows = "skip"
    prepared = objective.prepare(str(data), cfg, tiny_tokenizer)
    assert prepared.label_names == ["A", "B"]
    first = prepared.tokenized[0]
    assert first.labels[-1] == 1 and all(label == IGNORE_INDEX for label in first.labels[:-1])
    batch = collate(prepared.tokenized, [[0, 1]], pad_id=2, pack=True, shift=False)
    assert batch.n_trained == 2  # the loss counts examples


def test_head_loss_last_pooling_equals_the_transformers_classifier(tiny_model_dir, make_examples):
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir, num_labels=3, pad_token_id=0).eval()
    examples = make_examples(3, 300)
    for e in examples:  # a label at the last token of each example
        e.labels = [IGNORE_INDEX] * (len(e) - 1) + [1]
    batch = collate(examples, [[0], [1], [2]], pad_id=0, pack=False, shift=False)
    with torch.no_grad():
        ours = HeadLoss(model, "token").logits(batch)
        theirs = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("pooling", ["token", "mean"])
def test_head_loss_is_the_same_packed_and_padded(pooling, tiny_model_dir, make_examples):
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir, num_labels=3).eval()
    examples = make_examples(4, 300)
    for i, e in enumerate(examples):
        e.labels = [IGNORE_INDEX] * (len(e) - 1) + [i % 3]
    loss = HeadLoss(model, pooling)
    with torch.no_grad():
        packed = loss(collate(examples, [[0, 1], [2, 3]], pad_id=2, pack=True, shift=False))
        padded = loss(collate(examples, [[0], [1], [2], [3]], pad_id=2, pack=False, shift=False))
    assert packed[1] == padded[1] == 4
    assert float(packed[0]) == pytest.approx(float(padded[0]), rel=1e-5)


def test_token_classification_labels_bio_from_spans_and_from_conll(tmp_path, tiny_model_dir, tiny_tokenizer):
    data = tmp_path / "ner.jsonl"
    data.write_text(json.dumps({"text": "Ada Lovelace wrote to Alan Turing", "spans": [
        {"start": 0, "end": 12, "label": "PERSON"}, {"start": 22, "end": 33, "label": "PERSON"}]}) + "\n")
    cfg = config(tmp_path, tiny_model_dir, data, {"name": "token_classification"})
    objective = get_objective("token_classification")
    prepared = objective.prepare(str(data), cfg, tiny_tokenizer)
    assert prepared.label_names == ["O", "B-PERSON", "I-PERSON"]
    tags = [prepared.label_names[t] for t in prepared.tokenized[0].labels if t != IGNORE_INDEX]
    assert entities(tags) and len(entities(tags)) == 2 and tags[0] == "B-PERSON"
    assert "O" in tags

    text, spans = row_spans({"tokens": ["Ada", "Lovelace", "met", "Babbage"], "tags": ["B-PER", "I-PER", "O", "B-PER"]},
                            objective.config(tokens="tokens", tags="tags"))
    assert text == "Ada Lovelace met Babbage" and spans == [(0, 12, "PER"), (17, 24, "PER")]


def test_entities_and_classification_report():
    assert entities(["B-P", "I-P", "O", "I-L", "I-L", "B-P"]) == {(0, 1, "P"), (3, 4, "L"), (5, 5, "P")}
    report = classification_report([0, 1, 1, 2], [0, 1, 2, 2], ["a", "b", "c"])
    assert report["accuracy"] == 0.75
    assert report["confusion_matrix"]["rows_gold_columns_predicted"] == [[1, 0, 0], [0, 1, 0], [0, 1, 1]]
    assert report["macro_f1"] == pytest.approx((1 + 2 / 3 + 2 / 3) / 3, abs=1e-4)


def test_token_head_on_an_encoder_equals_the_transformers_forward(tmp_path):
    """The PII tagger's shape: a BERT-style encoder with a per-token head, through the same HeadLoss."""
    from transformers import BertConfig, BertModel

    from tunesmith.methods.base import get_method
    from tunesmith.objectives.classification import head_task

    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=200, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=64)).save_pretrained(tmp_path)  # a bare encoder, as MiniLM ships

    class Tok:
        pad_token_id = 0

    task = head_task("TOKEN_CLS", "AutoModelForTokenClassification", ["O", "B-P", "I-P"], tmp_path, Tok())
    from tunesmith.records import SourceRef, TokenizedExample

    examples = [TokenizedExample([101, 5, 6, 7, 102], [IGNORE_INDEX, 0, 1, 2, IGNORE_INDEX], SourceRef("x")),
                TokenizedExample([101, 8, 9, 102], [IGNORE_INDEX, 1, 0, IGNORE_INDEX], SourceRef("x"))]
    batch = collate(examples, [[0], [1]], pad_id=0, pack=False, shift=False)
    for name in ("feature_extraction", "lora"):
        method = get_method(name)
        cfg = method.config()
        model = method.apply(method.load_base(tmp_path, cfg, "cpu", task), cfg, task).eval()
        with torch.no_grad():
            ours = HeadLoss(model, "token").logits(batch)
            theirs = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask).logits
        torch.testing.assert_close(ours, theirs[batch.targets != IGNORE_INDEX], rtol=1e-5, atol=1e-5)
        assert any(getattr(m, "is_causal", None) is False for m in model.modules())  # so training refuses packing


def test_word_shapes_are_token_types_that_start_from_the_pretrained_encoder_and_survive_save_load(tmp_path):
    """word_shapes: each token's shape is its token type; the encoder's type table is widened to the shapes with every
    row a copy of type 0 (so the model starts exactly as pretrained), trains under every method, and is saved with
    the head."""
    from transformers import AutoTokenizer, BertConfig, BertModel

    from tunesmith.eval.retrieval import embedder_path
    from tunesmith.methods.base import get_method
    from tunesmith.objectives.token_classification import N_SHAPES, word_shape

    torch.manual_seed(0)
    model_dir = tmp_path / "bert"
    BertModel(BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=64)).save_pretrained(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(embedder_path())  # MiniLM's (lower-cased) tokenizer, offsets included
    text = "Ship to:\nAnna Berg\nUSA 12"
    data = tmp_path / "ner.jsonl"
    data.write_text(json.dumps({"text": text, "spans": [{"start": 9, "end": 18, "label": "PERSON"}]}) + "\n")
    cfg = config(tmp_path, model_dir, data, {"name": "token_classification", "word_shapes": True})
    objective = get_objective("token_classification")
    example = objective.prepare(str(data), cfg, tokenizer).tokenized[0]
    offsets = tokenizer(text, return_offsets_mapping=True)["offset_mapping"]
    assert example.token_types == [word_shape(text, a, b) for a, b in offsets]
    assert example.token_types[0] == example.token_types[-1] == 0  # [CLS], [SEP]: the pretrained type 0
    by_word = {text[a:b]: t for (a, b), t in zip(offsets, example.token_types) if b > a}
    # Capitalized mid-line, Capitalized at a line start, UPPER at a line start, digits; "to" lower-case
    assert [by_word[w] for w in ("Ship", "to", "Anna", "Berg", "USA", "12")] == [2, 1, 8, 2, 9, 4]
    batch = collate([example], [[0]], pad_id=0, pack=False, shift=False)
    assert batch.token_type_ids.tolist()[0][: len(example)] == example.token_types

    task = objective.task(cfg, ["O", "B-PERSON", "I-PERSON"], model_dir, tokenizer)
    assert task.token_types == N_SHAPES and "token_type_embeddings" in task.head_modules
    pretrained = BertModel.from_pretrained(model_dir).eval()
    with torch.no_grad():
        expected_hidden = pretrained(input_ids=batch.input_ids, attention_mask=batch.attention_mask).last_hidden_state
    for name in ("lora", "feature_extraction"):
        method = get_method(name)
        settings = method.config()
        model = method.apply(method.load_base(model_dir, settings, "cpu", task), settings, task).eval()
        inner = model.get_base_model() if hasattr(model, "get_base_model") else model
        assert inner.config.type_vocab_size == N_SHAPES
        tables = [p for n, p in model.named_parameters() if "token_type_embeddings" in n and p.requires_grad]
        assert tables and all(p.shape[0] == N_SHAPES for p in tables)  # peft trains a copy (modules_to_save)
        with torch.no_grad():
            hidden = inner.bert(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                                token_type_ids=batch.token_type_ids).last_hidden_state
            torch.testing.assert_close(hidden, expected_hidden, rtol=1e-5, atol=1e-5)  # starts unchanged
            for p in model.parameters():  # "train": every trained parameter moves, the type table included
                if p.requires_grad:
                    p.add_(torch.randn_like(p) * 0.1)
            ours = HeadLoss(model, "token").logits(batch)
            theirs = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                           token_type_ids=batch.token_type_ids).logits
        torch.testing.assert_close(ours, theirs[batch.targets != IGNORE_INDEX], rtol=1e-5, atol=1e-5)
        saved = tmp_path / f"saved-{name}"
        method.save(model, saved)
        reloaded = method.load(method.load_base(model_dir, settings, "cpu", task), saved, task).eval()
        with torch.no_grad():
            again = HeadLoss(reloaded, "token").logits(batch)
        torch.testing.assert_close(again, ours, rtol=1e-5, atol=1e-5)
