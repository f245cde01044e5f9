"""`--to hf`: the merged model as a plain transformers folder (safetensors in 16 bit, tokenizer, chat template).

This is what vLLM (`vllm serve FOLDER`), Ray Serve LLM, TGI-style servers and `from_pretrained` load.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn

HF_DTYPES = {"bf16": torch.bfloat16, "f16": torch.float16, "f32": torch.float32}
DEFAULT_HF_DTYPE = "bf16"  # the 16-bit type with fp32's range: no overflow in activations that fp16 can hit


def save_hf(model: nn.Module, tokenizer, directory: Path, dtype: str = DEFAULT_HF_DTYPE) -> None:
    """Save in `dtype` (a copy: the caller's model keeps its precision), safetensors only."""
    if dtype not in HF_DTYPES:
        raise ValueError(f"hf export dtype must be one of {', '.join(HF_DTYPES)}")
    original = next(model.parameters()).dtype
    model.to(HF_DTYPES[dtype])
    try:
        model.save_pretrained(directory, safe_serialization=True)
    finally:
        model.to(original)
    tokenizer.save_pretrained(directory)
