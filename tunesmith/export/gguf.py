"""`--to gguf`: the merged model as GGUF (llama.cpp, Ollama, LM Studio), and a LoRA as a GGUF adapter.

Who writes what:
* f32 / f16 / bf16 / q8_0: llama.cpp's own `convert_hf_to_gguf.py` (tunesmith/export/llamacpp.py).
* q4_0 / q4_1 / q5_0 / q5_1: the `gguf` package's pure-Python quantizers (`gguf.quants`), applied to the
  converter's f32 output. Which tensors are quantized is the converter's own decision (those it writes as Q8_0 in
  q8_0 mode; norms and other 1-D tensors stay F32), read back from its q8_0 file, not guessed here. The output
  head (token_embd when tied, as in SmolLM2) stays at Q8_0: llama.cpp's quantizer keeps it at Q6_K for these
  types, which `gguf.quants` cannot write. Hand-written because no published tool does this without llama.cpp's
  compiled `llama-quantize`.
* K-quants (q4_k_m, q5_k_m, q6_k, ...): llama.cpp's quantizer through llama-cpp-python, only where it is installed.
"""

from __future__ import annotations

from pathlib import Path

from tunesmith.export import llamacpp

CONVERTER_TYPES = ("f32", "f16", "bf16", "q8_0")
PURE_PYTHON_TYPES = ("q4_0", "q4_1", "q5_0", "q5_1")
LLAMACPP_TYPES = ("q2_k", "q3_k_s", "q3_k_m", "q3_k_l", "q4_k_s", "q4_k_m", "q5_k_s", "q5_k_m", "q6_k")
GGUF_TYPES = CONVERTER_TYPES + PURE_PYTHON_TYPES + LLAMACPP_TYPES
# `--quant auto`: tried smallest first; the first that passes parity is kept.
AUTO_LADDER = ("q4_0", "q4_1", "q8_0", "f16")


def gguf_name(quant: str) -> str:
    return f"model.{quant}.gguf"


class GgufBuilder:
    """Makes GGUF files of one merged HF folder at any level, converting only what each level needs (cached)."""

    def __init__(self, hf_dir: Path, work: Path):
        self.hf_dir, self.work = hf_dir, work
        self._converted: dict[str, Path] = {}

    def converted(self, outtype: str) -> Path:
        if outtype not in self._converted:
            self._converted[outtype] = llamacpp.convert_hf(self.hf_dir, self.work / f"converted.{outtype}.gguf", outtype)
        return self._converted[outtype]

    def build(self, quant: str, dst: Path) -> Path:
        if quant in CONVERTER_TYPES:
            self.converted(quant).replace(dst)
            self._converted.pop(quant)
        elif quant in PURE_PYTHON_TYPES:
            requantize(self.converted("f32"), self.converted("q8_0"), dst, quant)
        elif quant in LLAMACPP_TYPES:
            llamacpp.quantize_with_llamacpp(self.converted("f32"), dst, quant)
        else:
            raise ValueError(f"unknown GGUF type {quant!r}; known: {', '.join(GGUF_TYPES)}")
        return dst


def requantize(f32_file: Path, layout_file: Path, dst: Path, quant: str) -> Path:
    """Write `dst` with the tensors that `layout_file` holds as Q8_0 quantized to `quant` (values from `f32_file`)."""
    import gguf
    import numpy as np

    qtype = gguf.GGMLQuantizationType[quant.upper()]
    ftype = gguf.LlamaFileType[f"MOSTLY_{quant.upper()}"]
    src, layout = gguf.GGUFReader(f32_file), gguf.GGUFReader(layout_file)
    quantizable = {t.name for t in layout.tensors if t.tensor_type == gguf.GGMLQuantizationType.Q8_0}
    names = {t.name for t in src.tensors}
    head = "output.weight" if "output.weight" in names else "token_embd.weight"
    arch = src.get_field(gguf.Keys.General.ARCHITECTURE).contents()
    writer = gguf.GGUFWriter(dst, arch)
    for f in src.fields.values():
        if f.name == gguf.Keys.General.ARCHITECTURE or f.name.startswith("GGUF."):
            continue  # written by GGUFWriter itself
        value = int(ftype) if f.name == gguf.Keys.General.FILE_TYPE else f.contents()
        sub_type = f.types[-1] if f.types[0] == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(f.name, value, f.types[0], sub_type=sub_type)
    block = gguf.GGML_QUANT_SIZES[qtype][0]
    for t in src.tensors:
        data = np.asarray(t.data)
        if t.name in quantizable and data.shape[-1] % block == 0:
            target = gguf.GGMLQuantizationType.Q8_0 if t.name == head else qtype
            writer.add_tensor(t.name, gguf.quants.quantize(data.astype(np.float32), target), raw_dtype=target)
        else:
            writer.add_tensor(t.name, data, raw_dtype=t.tensor_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return dst


def tensor_names(path: Path) -> dict[str, str]:
    """{tensor name: GGML type name} of a GGUF file."""
    import gguf

    return {t.name: t.tensor_type.name for t in gguf.GGUFReader(path).tensors}
