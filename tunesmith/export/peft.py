"""`--to peft`: the trained adapter alone, in peft's own format, checked against what multi-adapter servers load.

vLLM (`vllm serve BASE --enable-lora --lora-modules name=FOLDER`) and Ray Serve LLM (which runs vLLM) load plain
LoRA adapters. Their loader rejects adapters that save whole modules (`modules_to_save`: vllm#9280), DoRA, LoRA
bias, and ranks above `--max-lora-rank` (16 unless raised); pickled `.bin` weights are never exported here.
`serving_problems` lists each such thing so that the user learns it at export time, not at deploy time.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from tunesmith.files import read_json
from tunesmith.records import TunesmithError

VLLM_DEFAULT_MAX_LORA_RANK = 16


def adapter_dir(run: Path) -> Path:
    final = run / "final"
    if not (final / "adapter_config.json").is_file():
        from tunesmith.config import load_config
        from tunesmith.methods.base import get_method

        method = get_method(load_config(run / "config.yaml").method.name)
        if not method.mergeable:
            raise TunesmithError(f"{final} holds no peft adapter: the run's method {method.name!r} keeps layers of its own "
                                 "(not a peft format) and does not merge; serve the run as it is "
                                 "(`tunesmith generate --run RUN`)")
        raise TunesmithError(f"{final} holds no peft adapter (no adapter_config.json): the run's method "
                             f"{method.name!r} changes the model's own weights; export it with --to hf or --to gguf")
    if not (final / "adapter_model.safetensors").is_file():
        raise TunesmithError(f"{final} has no adapter_model.safetensors (pickled .bin adapters are not exported)")
    return final


def serving_problems(directory: Path) -> tuple[list[str], list[str]]:
    """(problems that vLLM / Ray Serve LLM reject, notes on flags they need) for a peft adapter folder."""
    from safetensors import safe_open

    config = read_json(directory / "adapter_config.json")
    problems, notes = [], []
    if config.get("peft_type") != "LORA":
        problems.append(f"peft_type {config.get('peft_type')!r}: vLLM and Ray Serve LLM serve LoRA adapters only")
    if config.get("modules_to_save"):
        problems.append(f"modules_to_save={config['modules_to_save']}: vLLM only loads adapters whose "
                        "modules_to_save is empty (whole saved modules are not LoRA weights)")
    if config.get("trainable_token_indices"):
        problems.append("trainable_token_indices: vLLM cannot load trained token embeddings")
    if config.get("use_dora"):
        problems.append("use_dora: vLLM does not serve DoRA adapters (merge them: --to hf)")
    if config.get("bias", "none") != "none":
        problems.append(f"bias={config['bias']!r}: vLLM rejects LoRA adapters with biases")
    rank = max([int(config.get("r") or 0), *map(int, (config.get("rank_pattern") or {}).values())])
    if rank > VLLM_DEFAULT_MAX_LORA_RANK:
        notes.append(f"rank {rank} > 16: start vLLM with --max-lora-rank {rank}")
    path = directory / "adapter_model.safetensors"
    with safe_open(path, framework="pt") as f:
        foreign = sorted(k for k in f.keys() if not any(p in k for p in ("lora_A", "lora_B", "lora_embedding_A",
                                                                            "lora_embedding_B", "lora_magnitude")))
    if foreign:
        problems.append(f"{path.name} holds non-LoRA tensors ({', '.join(foreign[:3])}"
                        f"{', ...' if len(foreign) > 3 else ''}): vLLM rejects them")
    return problems, notes


def copy_adapter(source: Path, out: Path) -> list[Path]:
    """The adapter and the run's tokenizer files (chat template included); never pickled weights."""
    files = []
    for path in sorted(source.iterdir()):
        if path.is_file() and path.suffix not in (".bin", ".pt", ".pth", ".pkl"):
            shutil.copy2(path, out / path.name)
            files.append(out / path.name)
    return files
