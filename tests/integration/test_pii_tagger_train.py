"""The PII tagger is a `tunesmith train` run: configs/pii-tagger.yaml on data from pii_tagger_data trains (a few
steps here), `ship` trims the run to what loading needs, and PiiTagger, loading it offline, computes the trained
model's own probabilities (LoRA merged, word shapes fed as token types, fp16 shipped weights)."""

import torch

from tunesmith.config import load_config
from tunesmith.data.prep.pii_tagger import LABELS_WITH_OTHERS, PiiTagger, encode, ship
from tunesmith.data.prep.pii_tagger_data import main as write_data
from tunesmith.generate import load_run
from tunesmith.objectives.base import labelled_logits
from tunesmith.train.run import train

CONFIG = "configs/pii-tagger.yaml"


def test_pii_tagger_trains_through_tunesmith_and_loads_as_the_detector(tmp_path):
    write_data([str(tmp_path / "data"), "--sentences", "40", "--validation", "8"])
    overrides = [f"data.train={tmp_path / 'data' / 'train.jsonl'}", f"data.valid={tmp_path / 'data' / 'valid.jsonl'}",
                 "data.limit=64", "train.max_steps=2", "train.batch_size=8", "train.precision=fp32",
                 f"output.dir={tmp_path / 'run'}"]
    cfg = load_config(CONFIG, overrides)
    train(cfg)
    assert (tmp_path / "run" / "valid_report.json").is_file()  # entity precision/recall on the validation rows

    ship(tmp_path / "run", tmp_path / "shipped")
    assert sorted(p.name for p in (tmp_path / "shipped").iterdir()) == ["config.yaml", "final", "train_summary.json",
                                                                       "valid_report.json"]
    tagger = PiiTagger(tmp_path / "shipped", threshold=0.0)
    text = "Thanks,\nSatu Elomo\n12 Rue de la Paix, PARIS"
    ours = torch.tensor(tagger.probabilities(encode(tagger.tokenizer, text)))
    assert ours.shape == (len(encode(tagger.tokenizer, text).ids), len(LABELS_WITH_OTHERS))  # the config also labels ORG, LOC, MISC

    # the same text through the objective on the unshipped run (fp32 adapter, not merged)
    run = load_run(tmp_path / "run", device="cpu", merge=False)
    row = tmp_path / "text.jsonl"
    row.write_text('{"text": ' + __import__("json").dumps(text) + ', "spans": []}\n')
    data = run.objective.prepare(str(row), run.cfg, run.tokenizer, run.label_names)
    logits = labelled_logits(run.objective.loss_module(run.model, run.cfg), data.tokenized,
                             pad_id=run.tokenizer.pad_token_id, batch_size=1, precision="fp32")[0]
    torch.testing.assert_close(ours, logits.softmax(-1), atol=2e-3, rtol=0)  # fp16 shipped weights
    assert tagger.find_spans("") == []
