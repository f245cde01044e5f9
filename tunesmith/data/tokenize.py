"""Step two of the data path: chat `Example` → token ids + labels, through the model's own chat template.

The same `render_prompt` is used for generation, so training and inference can never disagree on the
template. Labels are derived from character spans of the rendered text, never by comparing token ids with
pad/eos ids: with pad == eos (SmolLM2, Llama 3, ...) id-based masking silently stops EOS from being trained.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from tunesmith.records import IGNORE_INDEX, DataIssue, Example, Message, TokenizedExample, TunesmithError


def render_prompt(tokenizer, messages: list[Message]) -> str:
    """The text a model is given at inference: the conversation so far plus the assistant header."""
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def _render(tokenizer, messages: list[Message], add_generation_prompt: bool = False) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)


def assistant_spans(tokenizer, messages: list[Message], train_on: str) -> tuple[str, list[tuple[int, int]]]:
    """Render the conversation and return the character spans the loss trains on.

    Each assistant turn is located by rendering the conversation up to it (with the assistant header) and
    through it: the difference is exactly the turn's content plus its end-of-turn token. Trailing whitespace
    after the end-of-turn token is not trained: generation stops at that token.
    """
    full = _render(tokenizer, messages)
    spans = []
    positions = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
    if train_on == "last_assistant":
        positions = positions[-1:]
    for i in positions:
        before = _render(tokenizer, messages[:i], add_generation_prompt=True)
        through = _render(tokenizer, messages[: i + 1])
        if not (full.startswith(before) and full.startswith(through) and len(through) > len(before)):
            raise TunesmithError(
                "this model's chat template does not render conversations prefix-by-prefix, so assistant turns "
                "cannot be located; set data.train_on=all or use a model whose template does"
            )
        spans.append((len(before), len(through.rstrip())))
    return full, spans


@dataclass
class TokenizeReport:
    n_examples: int = 0
    n_truncated: int = 0
    n_dropped: int = 0
    issues: list[DataIssue] = field(default_factory=list)


def tokenize_example(tokenizer, example: Example, train_on: str = "assistant") -> TokenizedExample | DataIssue:
    """Token ids and labels for one example, before any length policy is applied.

    train_on: "assistant" (every assistant turn), "last_assistant" (only the last one; earlier turns are context,
    e.g. few-shot examples) or "all" (every token)."""
    if not example.is_chat:
        ids = tokenizer(example.text, add_special_tokens=True)["input_ids"]
        if tokenizer.eos_token_id is not None:
            ids = ids + [tokenizer.eos_token_id]  # documents end: the model should learn where text stops
        return TokenizedExample(input_ids=ids, labels=list(ids), source=example.source)

    text, spans = assistant_spans(tokenizer, example.messages, train_on)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = enc["input_ids"], enc["offset_mapping"]
    if train_on == "all":
        labels = list(ids)
    else:
        labels = [
            tok if any(start <= s < end for start, end in spans) else IGNORE_INDEX
            for tok, (s, _e) in zip(ids, offsets)
        ]
    if all(label == IGNORE_INDEX for label in labels):
        return DataIssue(example.source, "all labels are masked: no assistant token to train on")
    return TokenizedExample(input_ids=ids, labels=labels, source=example.source)


def split_text(tok: TokenizedExample, max_len: int) -> list[TokenizedExample]:
    """Raw text (continued pretraining) is cut into max_len windows instead of truncated: nothing is lost."""
    return [
        TokenizedExample(tok.input_ids[i : i + max_len], tok.labels[i : i + max_len], tok.source)
        for i in range(0, len(tok.input_ids), max_len)
        if len(tok.input_ids[i : i + max_len]) > 1
    ]


def tokenize_examples(tokenizer, examples: list[Example], *, max_seq_len: int, truncation: str = "error",
                      train_on: str = "assistant") -> tuple[list[TokenizedExample], TokenizeReport]:
    """Tokenize everything and apply the explicit length policy; every decision lands in the report.

    truncation (examples longer than max_seq_len): "error" (reported), "drop", or "right" (cut the end)."""
    report = TokenizeReport(n_examples=len(examples))
    out: list[TokenizedExample] = []
    for example in examples:
        tok = tokenize_example(tokenizer, example, train_on)
        if isinstance(tok, DataIssue):
            report.issues.append(tok)
            continue
        if not example.is_chat:
            out.extend(split_text(tok, max_seq_len))
            continue
        if len(tok) <= max_seq_len:
            out.append(tok)
            continue
        if truncation == "error":
            report.issues.append(DataIssue(
                tok.source, f"{len(tok)} tokens is longer than data.max_seq_len={max_seq_len}"))
        elif truncation == "drop":
            report.n_dropped += 1
        else:
            cut = TokenizedExample(tok.input_ids[: max_seq_len], tok.labels[: max_seq_len], tok.source, truncated=True)
            if cut.n_trained == 0:
                report.issues.append(DataIssue(tok.source, f"truncation to {max_seq_len} tokens cuts the target away entirely"))
                continue
            report.n_truncated += 1
            out.append(cut)
    return out, report
