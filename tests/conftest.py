"""Shared fixtures: a tiny randomly initialised Llama with a real (small, BPE) tokenizer, built in-process.

The tokenizer mirrors the traps of the real embedded model: ChatML template, pad == eos == <|im_end|>.
Tiers come from the folder: tests/unit (seconds, no training runs), tests/integration (whole commands and training
runs; marked `integration` here so `-m "not integration"` works too), tests/chaos (kill -9 and random inputs; marked
`chaos`; a short mode in `make test`, the long one in `make chaos`). `smollm2` marks tests on the real model.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def pytest_collection_modifyitems(config, items):
    for item in items:
        parts = Path(str(item.fspath)).parts
        if "integration" in parts:
            item.add_marker(pytest.mark.integration)
        if "chaos" in parts:
            item.add_marker(pytest.mark.chaos)

CHATML = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
CORPUS = [
    "SELECT DISTINCT ?answer WHERE { ?answer <https://dblp.org/rdf/schema#authoredBy> <https://dblp.org/pid/1> }",
    "What are the papers written by the person Ada Lovelace? Which venue did Alan Turing publish in?",
    "ASK { ?x <https://dblp.org/rdf/schema#publishedIn> 'ICML' } the quick brown fox jumps over the lazy dog 0123456789",
]


def build_tiny_model(directory: Path, seed: int = 0, tokenizer=None) -> Path:
    """A tiny random Llama; with the in-process BPE tokenizer, or with `tokenizer` (e.g. SmolLM2's own)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    if tokenizer is not None:
        fast = tokenizer
    else:
        specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        tok.train_from_iterator(CORPUS * 4, trainers.BpeTrainer(vocab_size=400, special_tokens=specials,
                                                                 initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
        fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                       pad_token="<|im_end|>", unk_token="<|endoftext|>")
        fast.chat_template = CHATML
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(fast), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         bos_token_id=fast.bos_token_id, eos_token_id=fast.eos_token_id,
                         pad_token_id=fast.pad_token_id, tie_word_embeddings=True,
                         initializer_range=0.3)  # large init: a random model that says varied things
    model = LlamaForCausalLM(config)
    model.generation_config.eos_token_id = fast.eos_token_id
    model.save_pretrained(directory)
    fast.save_pretrained(directory)
    return directory


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    return build_tiny_model(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def tiny_smol_dir(tmp_path_factory) -> Path:
    """A tiny random Llama with SmolLM2's real tokenizer (GGUF export: llama.cpp's converter only accepts BPE
    tokenizers it recognises, by a hash of their output, so the in-process toy tokenizer cannot be converted)."""
    from tunesmith.models.loading import load_tokenizer, resolve_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny-smol"), tokenizer=load_tokenizer(resolve_model("smollm2-135m-instruct")))


@pytest.fixture(scope="session")
def tiny_tokenizer(tiny_model_dir):
    from tunesmith.models.loading import load_tokenizer

    return load_tokenizer(tiny_model_dir)


@pytest.fixture()
def tiny_model(tiny_model_dir):
    from tunesmith.models.loading import load_model

    return load_model(tiny_model_dir, device="cpu")


DBLP_ROWS = [
    {"question": f"What are the papers written by the person Author {i}?", "entities": [f"<https://dblp.org/pid/{i}>"],
     "sparql": f"SELECT DISTINCT ?answer WHERE {{ ?answer <https://dblp.org/rdf/schema#authoredBy> <https://dblp.org/pid/{i}> }}",
     "query_type": "SINGLE_FACT"}
    for i in range(24)
] + [
    {"question": f"Did Author {i} publish in ICML?", "entities": [f"<https://dblp.org/pid/{i}>"],
     "sparql": f"ASK {{ ?x <https://dblp.org/rdf/schema#authoredBy> <https://dblp.org/pid/{i}> . "
               f"?x <https://dblp.org/rdf/schema#publishedIn> 'ICML' }}",
     "query_type": "BOOLEAN"}
    for i in range(8)
]


@pytest.fixture()
def dblp_file(tmp_path) -> Path:
    path = tmp_path / "dblp.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in DBLP_ROWS))
    return path


def write_config(tmp_path: Path, model_dir: Path, data: Path, **sections) -> Path:
    import yaml

    cfg = {
        "model": {"name": str(model_dir), "device": "cpu"},
        "data": {"train": str(data), "format": "template", "max_seq_len": 128,
                 "template": {"prompt": "{question}\nEntities: {entities}", "completion": "{sparql}"}},
        "method": {"name": "lora", "r": 4, "alpha": 8},
        "train": {"batch_size": 2, "lr": 5e-3, "max_steps": 4, "log_every": 1, "precision": "fp32"},
        "output": {"dir": str(tmp_path / "run")},
    }
    for section, values in sections.items():
        cfg.setdefault(section, {}).update(values)
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _make_examples(n, vocab, seed=0, lo=5, hi=30):
    """Random token sequences with a masked prompt part and a trained answer part."""
    import random

    from tunesmith.records import IGNORE_INDEX, SourceRef, TokenizedExample

    rng = random.Random(seed)
    out = []
    for i in range(n):
        length = rng.randint(lo, hi)
        ids = [rng.randrange(3, vocab) for _ in range(length)]
        prompt = rng.randint(1, length - 2)
        out.append(TokenizedExample(ids, [IGNORE_INDEX] * prompt + ids[prompt:], SourceRef("x", line=i + 1)))
    return out


@pytest.fixture()
def make_examples():
    return _make_examples


TEMPLATE = {"prompt": "{question}\nEntities: {entities}", "completion": "{sparql}"}


def make_ui_project(root: Path, model_dir: Path) -> Path:
    """A small project as `tunesmith ui` sees one: a model, data (with one bad line), a train, an eval and a
    guardrails config, every path relative to the project folder."""
    import shutil

    import yaml

    shutil.copytree(model_dir, root / "models" / "tiny")
    (root / "data").mkdir(parents=True)
    train_rows = DBLP_ROWS[:20] + DBLP_ROWS[24:30]
    (root / "data" / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in train_rows) + "{not json\n")
    (root / "data" / "pool.jsonl").write_text("".join(json.dumps(r) + "\n" for r in train_rows))  # eval reads it whole
    (root / "data" / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in DBLP_ROWS[20:24] + DBLP_ROWS[30:32]))
    (root / "configs").mkdir()
    data = {"format": "template", "max_seq_len": 128, "template": TEMPLATE, "on_bad_rows": "skip"}
    (root / "configs" / "train.yaml").write_text(yaml.safe_dump({
        # one thread: a tiny model's ops are microseconds, and OpenMP threads on a busy machine make them crawl
        "model": {"name": "models/tiny", "device": "cpu", "threads": 1}, "data": {"train": "data/train.jsonl", **data},
        "method": {"name": "lora", "r": 4, "alpha": 8},
        "train": {"batch_size": 2, "lr": 5e-3, "max_steps": 40, "log_every": 1, "save_every": 10, "precision": "fp32"},
    }, sort_keys=False))
    (root / "configs" / "eval.yaml").write_text(yaml.safe_dump({
        "model": {"name": "models/tiny", "device": "cpu", "threads": 1},
        "data": {"test": "data/test.jsonl", "train": "data/pool.jsonl", **data},
        "variants": [{"kind": "base"}], "generation": {"max_new_tokens": 8, "batch_size": 8, "precision": "fp32"},
        "metrics": {"use": ["exact_match", "token_f1"], "headline": "token_f1", "bootstrap": {"samples": 100}},
        "forgetting": {"enabled": False},
    }, sort_keys=False))
    (root / "configs" / "guardrails.yaml").write_text(yaml.safe_dump({
        "input": {"pii": None, "blocked_topics": [{"name": "weapons", "terms": ["bomb"]}]}, "refusal": "Sorry, not that."}))
    return root
