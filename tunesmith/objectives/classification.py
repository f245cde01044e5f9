"""Sequence classification: a text (a template over the row's columns) → one label (a column), through a new
head on the model's pooled hidden states. Validation reports accuracy, macro-F1 and the confusion matrix;
`tunesmith predict` labels new rows.

The label sits at one position of the example (its last token, or the first for pooling: first), so the same
batching, packing and normalisation as every other objective apply (the loss counts examples there).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from tunesmith.methods.base import Task
from tunesmith.objectives.base import Objective, ObjectiveSettings, labelled_logits, register
from tunesmith.records import IGNORE_INDEX, DataError, DataIssue, Example, SourceRef, TokenizedExample


class ClassificationSettings(ObjectiveSettings):
    name: Literal["classification"] = "classification"
    text: str = Field("{text}", description="The input: a template over the row's columns, e.g. '{question}'")
    label: str = Field("label", description="The column that holds each row's class")
    labels: list[str] | None = Field(None, description="The classes, in order (default: those in the training data, sorted)")
    pooling: Literal["last", "mean", "first"] = Field(
        "last", description="What the head sees: the last token (causal models), the mean of the tokens, or the first "
                            "(an encoder's [CLS])")


def read_head_rows(path: str, run_cfg) -> tuple[list[tuple[SourceRef, dict[str, Any]]], list[DataIssue]]:
    """The rows of a data file (up to data.limit), and the ones that cannot be parsed."""
    from tunesmith.data.formats import read_rows

    rows, issues = [], []
    for where, row in read_rows(path):
        if isinstance(row, DataIssue):
            issues.append(row)
        elif run_cfg.data.limit is None or len(rows) < run_cfg.data.limit:
            rows.append((where, row))
    return rows, issues


def fit_length(ids: list[int], labels: list[int], where: SourceRef, run_cfg, report: dict, issues: list[DataIssue]):
    """The data.truncation policy for examples longer than data.max_seq_len: (ids, labels, truncated) or None."""
    limit = run_cfg.data.max_seq_len
    if len(ids) <= limit:
        return ids, labels, False
    if run_cfg.data.truncation == "error":
        issues.append(DataIssue(where, f"{len(ids)} tokens is longer than data.max_seq_len={limit}"))
        return None
    if run_cfg.data.truncation == "drop":
        report["dropped"] += 1
        return None
    report["truncated"] += 1
    return ids[:limit], labels[:limit], True


def finish(path: str, run_cfg, examples, tokenized, issues, report, label_names):
    from tunesmith.data.dataset import PreparedData

    if issues and run_cfg.data.on_bad_rows == "error":
        raise DataError(issues, hint="Fix these rows, or set data.on_bad_rows=skip to train without them.")
    if not tokenized:
        raise DataError(issues, hint=f"{path}: no usable example left")
    return PreparedData(examples, tokenized, issues, report["truncated"], report["dropped"], label_names)


class HeadObjective(Objective):
    """What the objectives that train a head (one label per text, or one per token) share: no shifted labels,
    no generation, the same config checks."""

    shift = False
    generates = False

    def check(self, run_cfg) -> list[str]:
        return head_objective_problems(run_cfg)


@register
class Classification(HeadObjective):
    name = "classification"
    config = ClassificationSettings

    def prepare(self, path, run_cfg, tokenizer, label_names=None, require_labels=True):
        from tunesmith.data.formats import fill_template, template_fields

        cfg = run_cfg.objective
        rows, issues = read_head_rows(path, run_cfg)
        if label_names is None:
            label_names = list(cfg.labels) if cfg.labels else sorted({str(r[cfg.label]) for _, r in rows if cfg.label in r})
        index = {name: i for i, name in enumerate(label_names)}
        examples, tokenized, report = [], [], {"truncated": 0, "dropped": 0}
        for where, row in rows:
            missing = sorted(template_fields(cfg.text) - row.keys())
            if missing:
                issues.append(DataIssue(where, f"missing field(s) {', '.join(missing)} used by objective.text"))
                continue
            label = row.get(cfg.label)
            if label is None and require_labels:
                issues.append(DataIssue(where, f"no label: missing field {cfg.label!r} (objective.label)"))
                continue
            if label is not None and str(label) not in index:
                if require_labels:
                    issues.append(DataIssue(where, f"label {label!r} is not one of the classes {label_names}"))
                    continue
                label = None
            text = fill_template(cfg.text, row)
            ids = tokenizer(text, add_special_tokens=True)["input_ids"]
            if not ids:
                issues.append(DataIssue(where, "empty text"))
                continue
            labels = [IGNORE_INDEX] * len(ids)
            fitted = fit_length(ids, labels, where, run_cfg, report, issues)
            if fitted is None:
                continue
            ids, labels, truncated = fitted
            labels[0 if cfg.pooling == "first" else len(ids) - 1] = index[str(label)] if label is not None else 0
            examples.append(Example(messages=[], source=where, text=text,
                                    meta={"label": None if label is None else str(label)}))
            tokenized.append(TokenizedExample(ids, labels, where, truncated))
        return finish(path, run_cfg, examples, tokenized, issues, report, label_names)

    def task(self, run_cfg, label_names, model_path: Path, tokenizer) -> Task:
        return head_task("SEQ_CLS", "AutoModelForSequenceClassification", label_names, model_path, tokenizer)

    def loss_module(self, model, run_cfg):
        from tunesmith.train.loss import HeadLoss

        return HeadLoss(model, pooling="token" if run_cfg.objective.pooling == "last" else run_cfg.objective.pooling)

    def evaluate(self, model, data, run_cfg, tokenizer, precision):
        logits = labelled_logits(self.loss_module(model, run_cfg), data.tokenized, pad_id=tokenizer.pad_token_id,
                                 batch_size=run_cfg.train.batch_size, precision=precision)
        gold = [next(label for label in t.labels if label != IGNORE_INDEX) for t in data.tokenized]
        return classification_report([int(row[0].argmax()) for row in logits], gold, data.label_names)

    def predict(self, model, data, run_cfg, tokenizer, precision, batch_size: int = 16) -> list[dict]:
        logits = labelled_logits(self.loss_module(model, run_cfg), data.tokenized, pad_id=tokenizer.pad_token_id,
                                 batch_size=batch_size, precision=precision)
        out = []
        for example, row in zip(data.examples, logits):
            probs = row[0].softmax(-1).tolist()
            best = max(range(len(probs)), key=probs.__getitem__)
            out.append({"text": example.text, "label": data.label_names[best], "probability": round(probs[best], 4),
                        "probabilities": {n: round(p, 4) for n, p in zip(data.label_names, probs)},
                        **({"gold": example.meta["label"]} if example.meta.get("label") is not None else {})})
        return out


def head_objective_problems(run_cfg) -> list[str]:
    problems = []
    if run_cfg.probe is not None:
        problems.append(f"probe: generation-based evaluation needs objective causal_lm, not {run_cfg.objective.name} "
                        "(its validation metrics are computed at the end of training)")
    return problems


def head_task(peft_task: str, auto_class: str, label_names: list[str], model_path: Path, tokenizer,
              token_types: int = 0) -> Task:
    """The Task of a head objective; with `token_types`, the widened token-type table trains and is saved with the head."""
    from tunesmith.train.loss import HEAD_NAMES

    heads = HEAD_NAMES + (("token_type_embeddings",) if token_types else ())
    return Task(peft_task_type=peft_task, head_modules=heads, auto_class=auto_class, model_path=str(model_path),
                token_types=token_types,
                model_kwargs={"num_labels": len(label_names), "id2label": dict(enumerate(label_names)),
                              "label2id": {n: i for i, n in enumerate(label_names)},
                              "pad_token_id": tokenizer.pad_token_id})


def classification_report(predicted: list[int], gold: list[int], label_names: list[str]) -> dict:
    """Accuracy, macro-F1 over the classes, per-class precision/recall/F1 and the confusion matrix (gold × predicted)."""
    n = len(label_names)
    matrix = [[0] * n for _ in range(n)]
    for p, g in zip(predicted, gold):
        matrix[g][p] += 1
    per_class, f1s = {}, []
    for k, name in enumerate(label_names):
        tp = matrix[k][k]
        predicted_k = sum(matrix[g][k] for g in range(n))
        gold_k = sum(matrix[k])
        precision = tp / predicted_k if predicted_k else 0.0
        recall = tp / gold_k if gold_k else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class[name] = {"precision": round(precision, 4), "recall": round(recall, 4), "f1": round(f1, 4), "support": gold_k}
        if gold_k:
            f1s.append(f1)
    correct = sum(matrix[k][k] for k in range(n))
    return {"n": len(gold), "accuracy": round(correct / max(len(gold), 1), 4),
            "macro_f1": round(sum(f1s) / max(len(f1s), 1), 4), "per_class": per_class,
            "confusion_matrix": {"labels": label_names, "rows_gold_columns_predicted": matrix},
            "predicted_counts": dict(Counter(label_names[p] for p in predicted))}
