"""A run's adapter folded into its base weights, with the checks that make a merge safe to ship.

Refused, with a message saying what to do instead: methods that do not merge (`mergeable = False` on the method
plug-in, e.g. bottleneck adapters), a base held quantized (merging into 4/8-bit weights rounds the adapter's
small delta away), and an adapter that changes one side of tied embeddings (SmolLM2 ties lm_head to
embed_tokens: a merge writes the change into both, and the model answers differently) unless the user asks to
untie them. Every merge is then proven: the merged model's logits equal the unmerged model's on a probe batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn

from tunesmith.records import TunesmithError


@dataclass
class TrainedRun:
    run: Path
    cfg: object  # RunConfig
    method: object  # the method plug-in
    model: nn.Module  # base + what the run trained, not merged
    tokenizer: object


def load_trained(run: str | Path) -> TrainedRun:
    from tunesmith.generate import load_run

    loaded = load_run(run, device="cpu", merge=False)
    return TrainedRun(loaded.run, loaded.cfg, loaded.method, loaded.model, loaded.tokenizer)


def is_mergeable(method) -> bool:
    """The method hook: a plug-in whose trained layers stay separate sets `mergeable = False`."""
    return bool(getattr(method, "mergeable", True))


def quantization_of(model: nn.Module) -> str | None:
    """What holds the base in low precision (bitsandbytes, torchao, a transformers quantizer), or None."""
    config = getattr(model, "config", None)
    qcfg = getattr(config, "quantization_config", None)
    if getattr(model, "is_quantized", False) or getattr(model, "hf_quantizer", None) is not None or qcfg:
        method = qcfg.get("quant_method") if isinstance(qcfg, dict) else getattr(qcfg, "quant_method", None)
        return f"a transformers quantizer ({method or 'unknown'})"
    for name, module in model.named_modules():
        kind = type(module)
        if kind.__module__.split(".")[0] in ("bitsandbytes", "torchao") or kind.__name__ in ("Linear4bit", "Linear8bitLt"):
            return f"{kind.__module__}.{kind.__name__} at {name}"
        weight = getattr(module, "weight", None)
        if weight is not None and type(weight).__module__.split(".")[0] in ("bitsandbytes", "torchao"):
            return f"{type(weight).__name__} weights at {name}"
    return None


def _unwrapped(module: nn.Module) -> nn.Module:
    """The original layer inside a peft wrapper (LoRA layers keep it as base_layer, modules_to_save as original_module)."""
    for attr in ("base_layer", "original_module"):
        inner = getattr(module, attr, None)
        if isinstance(inner, nn.Module):
            return _unwrapped(inner)
    return module


@dataclass
class Tying:
    tied: bool  # input embeddings and LM head share one matrix
    touched: list[str]  # which side(s) of the tied pair the adapter wraps


def tying_of(model: nn.Module) -> Tying:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    emb, head = base.get_input_embeddings(), base.get_output_embeddings()
    if emb is None or head is None:
        return Tying(False, [])
    tied = _unwrapped(head).weight is _unwrapped(emb).weight
    touched = [n for n, m in (("embed_tokens", emb), ("lm_head", head)) if _unwrapped(m) is not m]
    return Tying(tied, touched if tied else [])


def untie_embeddings(model: nn.Module) -> None:
    """Give the LM head its own copy of the shared matrix, and say so in the config (tie_word_embeddings=false)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    head = _unwrapped(base.get_output_embeddings())
    head.weight = nn.Parameter(head.weight.detach().clone(), requires_grad=False)
    base.config.tie_word_embeddings = False
    text_config = getattr(base.config, "get_text_config", lambda: None)()
    if text_config is not None and text_config is not base.config:
        text_config.tie_word_embeddings = False


def _probe_logits(model: nn.Module, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    vocab = model.get_input_embeddings().weight.shape[0] if not hasattr(model, "get_base_model") \
        else model.get_base_model().get_input_embeddings().weight.shape[0]
    ids = torch.randint(3, vocab, (2, 24), generator=torch.Generator().manual_seed(seed))
    with torch.inference_mode():
        return ids, model(input_ids=ids).logits.float()


def merge_checked(trained: TrainedRun, untie: bool = False) -> nn.Module:
    """The merged model, or a clear refusal; the merged logits are checked against the unmerged ones."""
    method, model = trained.method, trained.model
    name = getattr(method, "name", type(method).__name__)
    if not is_mergeable(method):
        alone = "Export the trained part alone with --to peft, or" if getattr(method, "peft_format", False) else "Instead,"
        raise TunesmithError(f"the run's method {name!r} does not merge into the base weights (its layers stay "
                             f"separate), so there is no single merged model to export. {alone} serve the run as it "
                             "is: `tunesmith generate --run RUN` loads its trained layers beside the base.")
    quantized = quantization_of(model)
    if quantized:
        raise TunesmithError(f"the run's base model is quantized ({quantized}). Merging an adapter into 4/8-bit "
                             "weights rounds its small delta away, so tunesmith never does it. Export the adapter "
                             "alone with --to peft, or load the base in 16/32-bit for the export.")
    tying = tying_of(model)
    if tying.touched:
        if not untie:
            raise TunesmithError(
                f"the adapter changes {' and '.join(tying.touched)}, which this model ties together "
                "(tie_word_embeddings=true: one matrix for the input embeddings and the LM head). Merging would write "
                "the change into both, and the merged model would answer differently. Pass --untie-embeddings to "
                "export separate input and output matrices (a larger model), or export the adapter with --to peft.")
        untie_embeddings(model)
    ids, before = _probe_logits(model)
    merged = method.merge(model)
    if hasattr(merged, "peft_config"):
        raise TunesmithError(f"merging method {name!r} left peft wrappers in place; cannot export a plain model")
    _, after = _probe_logits(merged)
    scale = max(1.0, before.abs().max().item())
    diff = (after - before).abs().max().item()
    if diff > 1e-3 * scale:
        raise TunesmithError(f"the merged model computes a different function than the trained one (largest "
                             f"logit difference {diff:.3g} on a probe batch); not exported. This is a bug: please report it.")
    out = tying_of(merged)
    if tying.tied and not tying.touched and not (out.tied and merged.config.tie_word_embeddings):
        raise TunesmithError("the merge untied the model's tied embeddings; not exported. This is a bug: please report it.")
    return merged.eval()
