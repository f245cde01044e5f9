"""QLoRA: the frozen base held in 4-bit (nf4/fp4) or 8-bit by bitsandbytes, LoRA on top (peft format).

On CPUs with AVX512-BF16, bitsandbytes' `Linear4bit` repacks its weight in place into an inference-only layout
the first time it runs in eval mode without gradients (generation, validation loss); from then on no gradient
flows through the base, silently (the loss still falls). Every `Linear4bit` is told not to
(`support_avx512bf16_for_cpu = False`); tests/unit/test_qlora.py proves the gradient after `generate()` equals
the gradient before. The adapter is not merged into 4-bit weights (that rounds its delta away): `merge`/`export
--to hf` refuse, `--to peft` exports it, and generation runs on the quantized base as it trained.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from tunesmith.methods.base import CAUSAL_LM, Task, fit_to_task, register
from tunesmith.methods.lora import Lora, LoraSettings


class QloraSettings(LoraSettings):
    name: Literal["qlora"] = "qlora"  # type: ignore[assignment]
    bits: Literal[4, 8] = Field(4, description="4 (nf4/fp4 blocks) or 8 (LLM.int8)")
    quant_type: Literal["nf4", "fp4"] = "nf4"
    double_quant: bool = Field(True, description="Quantize the 4-bit block scales too (saves ~0.4 bit/weight)")


def keep_gradients_flowing(model) -> int:
    """Stop every bitsandbytes Linear4bit from repacking itself into the CPU inference layout (see above)."""
    n = 0
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False
            n += 1
    return n


@register
class Qlora(Lora):
    name = "qlora"
    config = QloraSettings
    mergeable = False

    def load_base(self, path: Path, cfg, device: str = "cpu", task: Task = CAUSAL_LM):
        import torch
        import transformers
        from transformers import BitsAndBytesConfig

        from tunesmith.models.loading import pick_device
        from tunesmith.models.precision import bf16_available

        where = pick_device(device)
        compute = torch.bfloat16 if bf16_available(where) else torch.float32
        if cfg.bits == 4:
            quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type=cfg.quant_type,
                                       bnb_4bit_use_double_quant=cfg.double_quant, bnb_4bit_compute_dtype=compute)
        else:
            quant = BitsAndBytesConfig(load_in_8bit=True)
        level = transformers.logging.get_verbosity()
        transformers.logging.set_verbosity_error()
        try:
            model = getattr(transformers, task.auto_class).from_pretrained(
                path, quantization_config=quant, dtype=torch.float32, device_map={"": str(where)}, **task.model_kwargs)
        finally:
            transformers.logging.set_verbosity(level)
        keep_gradients_flowing(model)
        return fit_to_task(model, task)

    def apply(self, model, cfg, task: Task = CAUSAL_LM):
        from peft import prepare_model_for_kbit_training

        # norms and the rest in fp32, inputs that require grad; no gradient checkpointing (it costs ~35% on CPU)
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
        return super().apply(model, cfg, task)

    def merge(self, model):
        raise NotImplementedError("qlora: the adapter is not merged into 4-bit weights")
