"""Train the PII tagger (prototype loop, plain torch): `python -m tunesmith.data.prep.pii_tagger_train OUT_DIR`.

Deterministic from its seed: the data is generated (pii_synth, training split + WikiGold's training
sentences), the model starts from the wheel's MiniLM. This loop is deliberately small; the shipped
training path is tunesmith's own loop once it has a token-classification objective (methods issue).
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

from tunesmith.data.prep.pii_eval import score
from tunesmith.data.prep.pii_synth import SyntheticPii, cased, context_noised, joined, vocabulary_of, wikigold, with_new_names
from tunesmith.data.prep.pii_tagger import IGNORE, TaggerConfig, build_model, decode, encode, load_tokenizer, save


def training_examples(n_synthetic: int, seed: int, wikigold_repeats: int = 2, renamed_repeats: int = 3, context_noise: float = 0.0):
    """Synthetic sentences (training split; a share `context_noise` with random words swapped into their
    context), WikiGold's training sentences as they are and with new names, some joined, some lower-cased;
    shuffled. Deterministic from `seed`."""
    rng = random.Random(seed)
    source = SyntheticPii("train", seed=seed)
    real = wikigold("train")
    examples = source.generate(n_synthetic)
    if context_noise:
        examples = context_noised(examples, vocabulary_of(real), rng, rate=context_noise)
    examples += real * wikigold_repeats
    for _ in range(renamed_repeats):
        examples += with_new_names(real, source)
    rng.shuffle(examples)
    return cased(joined(examples, rng), rng)


def batches(encoded, batch_size: int, max_tokens: int, rng: random.Random):
    """Padded batches of similar length ([CLS] ... [SEP]); order shuffled by batch."""
    import torch

    order = sorted(range(len(encoded)), key=lambda i: (len(encoded[i].ids), rng.random()))
    groups = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    rng.shuffle(groups)
    for group in groups:
        rows = [encoded[i] for i in group]
        width = min(max_tokens, max(len(r.ids) for r in rows) + 2)
        ids = torch.zeros(len(rows), width, dtype=torch.long)
        shapes = torch.zeros_like(ids)
        labels = torch.full_like(ids, IGNORE)
        mask = torch.zeros_like(ids)
        for k, r in enumerate(rows):
            n = min(len(r.ids), width - 2)
            ids[k, : n + 2] = torch.tensor([101, *r.ids[:n], 102])
            shapes[k, 1 : n + 1] = torch.tensor(r.shapes[:n])
            labels[k, 1 : n + 1] = torch.tensor(r.labels[:n])
            mask[k, : n + 2] = 1
        yield ids, mask, shapes, labels


def predict(model, tokenizer, examples, threshold: float):
    import torch

    model.eval()
    predictions = []
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        for e in examples:
            enc = encode(tokenizer, e.text)
            ids = torch.tensor([[101, *enc.ids[:510], 102]])
            shapes = torch.tensor([[0, *enc.shapes[:510], 0]])
            probs = model(ids, torch.ones_like(ids), shapes)[0, 1:-1].float().softmax(-1).tolist()
            predictions.append(decode(e.text, enc.offsets[:510], probs, threshold))
    model.train()
    return predictions


def main(argv: list[str] | None = None) -> None:
    import torch

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--sentences", type=int, default=16000, help="synthetic training sentences")
    parser.add_argument("--epochs", type=float, default=2.0)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--lora-r", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--validation", type=int, default=400, help="validation sentences (training templates, new fills)")
    parser.add_argument("--context-noise", type=float, default=0.0, help="share of synthetic sentences with random words swapped into their context")
    args = parser.parse_args(argv)

    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)
    config = TaggerConfig(lora_r=args.lora_r, lora_alpha=2 * args.lora_r)
    tokenizer = load_tokenizer()
    examples = training_examples(args.sentences, args.seed, context_noise=args.context_noise)
    encoded = [encode(tokenizer, e.text, e.spans) for e in examples]
    validation = SyntheticPii("train", seed=args.seed + 1).generate(args.validation)
    model = build_model(config)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.01)
    steps_per_epoch = -(-len(encoded) // args.batch_size)
    total = max(1, int(steps_per_epoch * args.epochs))
    warmup = max(1, total // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min((s + 1) / warmup, max(0.0, (total - s) / (total - warmup))))
    print(f"{len(encoded)} training sentences, {sum(len(e.ids) for e in encoded)} tokens, {total} steps, "
          f"{sum(p.numel() for p in params)} trainable parameters", file=sys.stderr)
    step, started, running = 0, time.perf_counter(), 0.0
    while step < total:
        for ids, mask, shapes, labels in batches(encoded, args.batch_size, config.max_tokens, rng):
            with torch.autocast("cpu", dtype=torch.bfloat16):
                logits = model(ids, mask, shapes)
            loss = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), ignore_index=IGNORE)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            running = 0.98 * running + 0.02 * loss.item() if step > 1 else loss.item()
            if step % 50 == 0 or step == total:
                elapsed = time.perf_counter() - started
                print(f"step {step}/{total} loss {running:.4f} · {elapsed / step:.2f} s/step · ETA {(total - step) * elapsed / step / 60:.1f} min", file=sys.stderr, flush=True)
            if step >= total:
                break
    figures = {}
    for threshold in (0.3, 0.5):
        any_type = score(validation, predict(model, tokenizer, validation, threshold))["ANY"]
        figures[str(threshold)] = {"left_whole": any_type.left_whole_rate, "token_left": any_type.token_left_rate, "precision": any_type.precision}
        print(f"validation, threshold {threshold}: left whole {any_type.left_whole_rate:.4f} · word left {any_type.token_left_rate:.4f} · precision {any_type.precision:.4f}", file=sys.stderr)
    config.trained = {
        "synthetic_sentences": args.sentences, "wikigold_train_sentences": len(wikigold("train")), "epochs": args.epochs,
        "texts": len(encoded), "context_noise": args.context_noise,
        "steps": total, "batch_size": args.batch_size, "lr": args.lr, "seed": args.seed,
        "minutes": round((time.perf_counter() - started) / 60, 1), "validation": figures,
        "command": "python -m tunesmith.data.prep.pii_tagger_train " + " ".join(sys.argv[1:] if argv is None else argv),
    }
    save(model, config, args.out_dir)
    print(f"saved {args.out_dir}", file=sys.stderr)


if __name__ == "__main__":
    main()
