"""Guardrails: input and output rails around a model call, and constrained decoding (tunesmith/guardrails/).

`Guard(load_guardrails(path), tokenizer)` is all a caller needs: `check_input` before generation, the `constraint`
factory during it (tunesmith.generate.RowRequest.constraint), `check_output` after it.
"""

from __future__ import annotations

from tunesmith.guardrails.config import GuardrailsConfig, load_guardrails
from tunesmith.guardrails.rails import Guard, GuardedInput, GuardedOutput, RailDecision


def generate_guarded(model, tokenizer, guard: Guard, conversations, max_new_tokens: int = 256, batch_size: int = 16,
                     temperature: float = 0.0, top_p: float = 1.0, seed: int = 0, precision: str = "auto",
                     show_progress: bool = True, iri_prefixes: dict[str, str] | None = None) -> list[GuardedOutput]:
    """`generate_chat` with rails: refused prompts never reach the model; answers are checked before they return.

    Each output carries every decision about its row, the input rails' first. With `iri_prefixes` (a run trained
    under data.iri_prefixes) the rails see the user's text and the answer written out; the model, its compact form."""
    from tunesmith.data.iris import compact_messages, expand
    from tunesmith.generate import RowRequest, encode_chat, generate_rows

    prefixes = iri_prefixes or {}

    checked = [guard.check_input(c) for c in conversations]
    for i, g in enumerate(checked):
        guard.audit.write(g.decisions, request=i)
    todo = [i for i, g in enumerate(checked) if not g.blocked]
    rows = [RowRequest(encode_chat(tokenizer, compact_messages(checked[i].messages, prefixes)),
                       max_new_tokens=max_new_tokens,
                       temperature=temperature, top_p=top_p, seed=seed + i,
                       constraint=guard.constraint() if guard.constraint else None) for i in todo]
    results = generate_rows(model, tokenizer, rows, batch_size=batch_size, precision=precision,
                            show_progress=show_progress)
    outputs: list[GuardedOutput] = [guard.refusal_output() for _ in conversations]
    for i, res in zip(todo, results):
        outputs[i] = guard.check_output(expand(res.text.strip(), prefixes), checked[i], res.finish_reason)
        guard.audit.write(outputs[i].decisions, request=i)
    for out, g in zip(outputs, checked):
        out.decisions[:0] = g.decisions
    return outputs


__all__ = ["Guard", "GuardedInput", "GuardedOutput", "GuardrailsConfig", "RailDecision", "generate_guarded",
           "load_guardrails"]
