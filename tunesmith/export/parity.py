"""Does the exported artifact answer like the run? Greedy answers on N prompts from the run's own data.

The reference is tunesmith's one generation path (`generate_chat` on the run, as `tunesmith generate --run`
answers); the exported artifact answers the same conversations greedily, through the loader a user would use
(transformers for hf/peft, transformers' GGUF loader or llama.cpp itself for GGUF). `parity.json` records how many
answers are identical, where each other answer first diverges, and exact match against the data's own answers
(so that a lost trained fact shows as a number, not only as a diff).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from tunesmith.records import Message, TunesmithError

DEFAULT_N = 32
DEFAULT_MAX_NEW_TOKENS = 128
DEFAULT_MIN_IDENTICAL = 0.9  # share of identical answers an artifact needs to pass


@dataclass
class ParityPrompts:
    source: str  # the file the prompts come from, and why that one
    conversations: list[list[Message]]
    golds: list[str]  # the data's own answer of each


def parity_prompts(cfg, n: int = DEFAULT_N, path: str | Path | None = None) -> ParityPrompts:
    """The first N chat items of `path`, else of the run's validation file, else of its training file."""
    from tunesmith.data.formats import load_examples
    from tunesmith.eval.prompts import prompt_of, reference_of

    if path is not None:
        source, why = str(path), "--prompts"
    elif cfg.data.valid:
        source, why = cfg.data.valid, "data.valid"
    else:
        source, why = cfg.data.train, "data.train (the run has no data.valid)"
    examples, issues = load_examples(source, cfg.data.model_copy(update={"limit": None}))
    chats = [ex for ex in examples if ex.is_chat and ex.messages and ex.messages[-1]["role"] == "assistant"][:n]
    if not chats:
        problems = "; ".join(str(i) for i in issues[:3])
        raise TunesmithError(f"no chat items to check parity on in {source} ({why}){': ' + problems if problems else ''}; "
                             "give --prompts FILE or --no-parity")
    return ParityPrompts(f"{source} ({why})", [prompt_of(ex) for ex in chats], [reference_of(ex) for ex in chats])


@dataclass
class Divergence:
    item: int
    prompt: str  # the last user message
    at_char: int  # first character where the answers differ
    reference: str
    exported: str


@dataclass
class ParityResult:
    artifact: str
    backend: str  # what answered for the artifact: transformers, transformers-gguf, llama.cpp
    n: int
    identical: int
    passed: bool
    exact_match_reference: float  # % of answers equal to the data's own answer (whitespace-normalised)
    exact_match_exported: float
    divergences: list[Divergence] = field(default_factory=list)
    quant: str | None = None
    size_bytes: int | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    def line(self) -> str:
        what = f"{self.artifact}" + (f" [{self.quant}]" if self.quant else "")
        return (f"{what}: {self.identical}/{self.n} answers identical to the run's "
                f"(exact match {self.exact_match_exported:.0f}% vs {self.exact_match_reference:.0f}%) — "
                f"{'passed' if self.passed else 'FAILED'}")


def first_difference(a: str, b: str) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def compare(prompts: ParityPrompts, reference: list[str], exported: list[str], artifact: str, backend: str,
            min_identical: float = DEFAULT_MIN_IDENTICAL, quant: str | None = None,
            size_bytes: int | None = None) -> ParityResult:
    from tunesmith.eval.metrics import Normalizer, exact_match

    em = exact_match(Normalizer())
    divergences = []
    for i, (ref, exp) in enumerate(zip(reference, exported, strict=True)):
        if ref != exp:
            last_user = next((m["content"] for m in reversed(prompts.conversations[i]) if m["role"] == "user"), "")
            divergences.append(Divergence(i, last_user, first_difference(ref, exp), ref, exp))
    n = len(reference)
    identical = n - len(divergences)
    return ParityResult(
        artifact=artifact, backend=backend, n=n, identical=identical, passed=identical >= min_identical * n,
        exact_match_reference=sum(em(r, g) for r, g in zip(reference, prompts.golds)) / max(n, 1),
        exact_match_exported=sum(em(e, g) for e, g in zip(exported, prompts.golds)) / max(n, 1),
        divergences=divergences, quant=quant, size_bytes=size_bytes)


def answers(model, tokenizer, prompts: ParityPrompts, max_new_tokens: int, precision: str = "auto") -> list[str]:
    """Greedy answers through tunesmith's one generation path."""
    from tunesmith.generate import generate_chat

    return generate_chat(model, tokenizer, prompts.conversations, max_new_tokens=max_new_tokens, temperature=0.0,
                         precision=precision, show_progress=False)


def load_gguf_with_transformers(path: Path):
    """(model, tokenizer) from a GGUF file through transformers' own GGUF loader (dequantized to fp32)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    return model.eval(), tokenizer
