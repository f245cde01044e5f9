"""On the real embedded SmolLM2-135M-Instruct (slower; still run in CI)."""

from pathlib import Path

import pytest

from tunesmith.config import load_config
from tunesmith.data.dataset import prepare_data
from tunesmith.data.tokenize import render_prompt
from tunesmith.models.loading import load_model, load_tokenizer, resolve_model
from tunesmith.records import IGNORE_INDEX
from tunesmith.train.loss import dataset_loss
from tunesmith.train.run import train

pytestmark = pytest.mark.smollm2
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def smol_path():
    return resolve_model("smollm2-135m-instruct")


def test_embedded_template_has_no_default_system_prompt_and_trains_eos(smol_path):
    tokenizer = load_tokenizer(smol_path)
    prompt = render_prompt(tokenizer, [{"role": "user", "content": "hi"}])
    assert prompt == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    assert tokenizer.pad_token_id == tokenizer.eos_token_id  # the trap the data path is built around
    cfg = load_config(ROOT / "configs/dblp-quad-lora.yaml", ["data.limit=4"])
    data = prepare_data(cfg.data.train, cfg.data, tokenizer)
    for example in data.tokenized:
        trained = [l for l in example.labels if l != IGNORE_INDEX]
        assert trained[-1] == tokenizer.eos_token_id


def test_few_lora_steps_lower_the_loss(tmp_path, smol_path):
    cfg = load_config(ROOT / "configs/dblp-quad-lora.yaml", [
        "data.limit=12", f"data.valid={ROOT / 'examples/dblp_quad/data/train.jsonl'}", "train.max_steps=6",
        "train.batch_size=1", "train.lr=2e-3", "train.warmup_ratio=0", f"output.dir={tmp_path / 'run'}"])
    tokenizer = load_tokenizer(smol_path)
    data = prepare_data(cfg.data.train, cfg.data, tokenizer)
    before = dataset_loss(load_model(smol_path, device="cpu"), data.tokenized, pad_id=tokenizer.pad_token_id,
                          batch_size=4, row_len=512, pack=True).loss
    result = train(cfg)
    assert result.valid_loss < 0.8 * before, (before, result.valid_loss)
