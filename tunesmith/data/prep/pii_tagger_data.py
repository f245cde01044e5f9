"""The PII tagger's training data, as rows `tunesmith train` reads (configs/pii-tagger.yaml):

    python -m tunesmith.data.prep.pii_tagger_data OUT_DIR [--sentences 60000] [--context-noise 0.5] [--hold-out-real N]
        [--renamed-repeats 4] [--word-names RATE] [--other-entities]

writes OUT_DIR/train.jsonl and OUT_DIR/valid.jsonl, one `{"text", "spans": [{start, end, label}]}` per line (the
token_classification objective's `spans` form). Deterministic from its seed. Training: the synthetic training split
(pii_synth: templates, identities and locales that never occur in the evaluation split), WikiGold's training
sentences as they are and with new names, some joined, some lower-cased. Validation: training-split templates with
new fills (the evaluation split stays untouched for bench/anonymize_quality.py); with `--hold-out-real N` also
OUT_DIR/valid_real.jsonl, N WikiGold training sentences kept out of training (tune on them with
bench/pii_tagger_tune.py).
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

from tunesmith.data.prep.pii_eval import LabelledText
from tunesmith.data.prep.pii_synth import (
    SyntheticPii, cased, context_noised, entity_mentions, joined, persons_only, vocabulary_of, wikigold, with_new_names,
)


def training_examples(n_synthetic: int, seed: int, wikigold_repeats: int = 2, renamed_repeats: int = 4,
                      context_noise: float = 0.0, swap_entities: bool = True, hold_out_real: int = 0,
                      word_name_rate: float = 0.0, other_entities: bool = False) -> list[LabelledText]:
    """Synthetic sentences (training split; a share `context_noise` with random words swapped into their
    context), WikiGold's training sentences as they are and with new names (and, with `swap_entities`, their
    organisations, places and other names swapped among themselves, unlabelled), some joined, some lower-cased;
    shuffled. The first `hold_out_real` WikiGold training sentences are left out (see `real_validation`). A share
    `word_name_rate` of the new names take a surname that is a common word of the real text (`word_surnames`).
    With `other_entities`, WikiGold's organisations, places and other names stay labelled (ORG, LOC, MISC; never
    PII): the tagger learns to tell them from people, and can judge the other models' names (anonymize.py).
    Deterministic from `seed`."""
    rng = random.Random(seed)
    source = SyntheticPii("train", seed=seed)
    tagged = wikigold("train", others=True)[hold_out_real:]
    real = persons_only(tagged)
    examples = source.generate(n_synthetic)
    if context_noise:
        examples = context_noised(examples, vocabulary_of(real), rng, rate=context_noise)
    examples += (tagged if other_entities else real) * wikigold_repeats
    mentions = entity_mentions(tagged) if swap_entities else None
    words = word_surnames(real) if word_name_rate else []
    for _ in range(renamed_repeats):
        examples += with_new_names(tagged if swap_entities else real, source, mentions, words, word_name_rate,
                                   label_mentions=other_entities)
    rng.shuffle(examples)
    return cased(joined(examples, rng), rng)


def word_surnames(examples: list[LabelledText]) -> list[str]:
    """Lower-case words of real text that could be surnames ("player", "baker", "rice"), capitalised: at least
    four letters, no stop word, no adverb in -ly. Sorted, so draws are deterministic."""
    from spacy.lang.en.stop_words import STOP_WORDS

    return [w.capitalize() for w in vocabulary_of(examples)
            if len(w) >= 4 and w.isalpha() and w not in STOP_WORDS and not w.endswith("ly")]


def real_validation(hold_out_real: int) -> list[LabelledText]:
    """The WikiGold training sentences `training_examples(hold_out_real=...)` leaves out, people labelled: real
    text for choosing a threshold or a detector combination (WikiGold's evaluation sentences stay untouched)."""
    return wikigold("train")[:hold_out_real]


def rows(examples: list[LabelledText]) -> list[dict]:
    """Labelled texts → the token_classification objective's rows."""
    return [{"text": e.text, "spans": [{"start": s.start, "end": s.end, "label": s.type} for s in e.spans]}
            for e in examples]


def main(argv: list[str] | None = None) -> None:
    from tunesmith.files import atomic_write_jsonl

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--sentences", type=int, default=60000, help="synthetic training sentences")
    parser.add_argument("--validation", type=int, default=400, help="validation sentences (training templates, new fills)")
    parser.add_argument("--context-noise", type=float, default=0.5,
                        help="share of synthetic sentences with random words swapped into their context")
    parser.add_argument("--hold-out-real", type=int, default=0, metavar="N",
                        help="leave the first N WikiGold training sentences out of training and write them to "
                             "valid_real.jsonl (real text for tuning thresholds; 0: train on all of them)")
    parser.add_argument("--renamed-repeats", type=int, default=4, help="copies of WikiGold's training sentences with new names")
    parser.add_argument("--word-names", type=float, default=0.0, metavar="RATE",
                        help="share of those new names whose surname is a common word of the real text (0: none)")
    parser.add_argument("--other-entities", action="store_true",
                        help="keep WikiGold's ORG, LOC and MISC spans labelled (train with objective.labels including them)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    train = training_examples(args.sentences, args.seed, context_noise=args.context_noise, hold_out_real=args.hold_out_real,
                              renamed_repeats=args.renamed_repeats, word_name_rate=args.word_names,
                              other_entities=args.other_entities)
    valid = SyntheticPii("train", seed=args.seed + 1).generate(args.validation)
    atomic_write_jsonl(args.out_dir / "train.jsonl", rows(train))
    atomic_write_jsonl(args.out_dir / "valid.jsonl", rows(valid))
    if args.hold_out_real:
        atomic_write_jsonl(args.out_dir / "valid_real.jsonl", rows(real_validation(args.hold_out_real)))
    print(f"wrote {len(train)} training and {len(valid)} validation texts to {args.out_dir}", file=sys.stderr)


if __name__ == "__main__":
    main()
