"""`tunesmith export` end to end on a tiny trained run (tiny random Llama with SmolLM2's tokenizer, which
llama.cpp's converter recognises): every format written, parity checked, GGUF tensors and tying inspected."""

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from conftest import DBLP_ROWS, write_config
from test_cli import tunesmith

pytestmark = pytest.mark.integration
FAST = ["-n", "4", "--max-new-tokens", "12", "--precision", "fp32"]


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_smol_dir):
    base = tmp_path_factory.mktemp("export-run")
    data = base / "dblp.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in DBLP_ROWS))
    config = write_config(base, tiny_smol_dir, data, train={"max_steps": 3, "lr": 1e-2})
    tunesmith("train", config, "--set", f"data.valid={data}")
    return base / "run"


def gguf_tensors(path):
    import gguf

    return {t.name: t for t in gguf.GGUFReader(path).tensors}


def test_gguf_export_answers_like_the_run_and_keeps_embeddings_tied(run, tmp_path):
    import gguf

    out = tmp_path / "gguf"
    # a ladder: 4 bits changes the tiny random model's answers, f16 does not; the first level that passes is kept
    tunesmith("export", run, "--to", "gguf", "--quant", "q4_0,f16", "--out", out, *FAST)
    assert sorted(p.name for p in out.iterdir()) == ["adapter.f16.gguf", "export.json", "model.f16.gguf", "parity.json"]
    parity = json.loads((out / "parity.json").read_text())
    assert parity["passed"] and parity["chosen"] == "f16" and "data.valid" in parity["prompts"]
    q4, f16 = parity["results"]
    assert q4["quant"] == "q4_0" and not q4["passed"] and q4["divergences"][0]["reference"] != q4["divergences"][0]["exported"]
    assert f16["identical"] == f16["n"] == 4 and f16["backend"] == "transformers-gguf"

    tensors = gguf_tensors(out / "model.f16.gguf")
    assert "output.weight" not in tensors  # tied in, tied out: llama.cpp reuses token_embd as the LM head
    merged = json.loads((out / "export.json").read_text())
    assert merged["tie_word_embeddings"] is True and merged["quant"] == "f16"

    # the GGUF LoRA holds the run's adapter, tensor for tensor
    adapter = load_file(run / "final" / "adapter_model.safetensors")
    lora = gguf_tensors(out / "adapter.f16.gguf")
    a = adapter["base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"]
    np.testing.assert_allclose(np.asarray(lora["blk.0.attn_q.weight.lora_a"].data, dtype=np.float32), a.numpy(), atol=1e-3)
    reader = gguf.GGUFReader(out / "adapter.f16.gguf")
    assert reader.get_field("adapter.type").contents() == "lora"


def test_ollama_export_writes_a_modelfile_beside_a_4bit_gguf(run, tmp_path):
    import gguf

    out = tmp_path / "ollama"
    tunesmith("export", run, "--to", "ollama", "--quant", "q4_1", "--out", out, "--no-parity")
    assert sorted(p.name for p in out.iterdir()) == ["Modelfile", "export.json", "model.q4_1.gguf"]
    text = (out / "Modelfile").read_text()
    assert "FROM ./model.q4_1.gguf" in text and 'PARAMETER stop "<|im_end|>"' in text
    assert '{{ else if eq .Role "user" }}<|im_start|>user\n{{ .Content }}<|im_end|>\n' in text
    tensors = gguf_tensors(out / "model.q4_1.gguf")
    kinds = {name: t.tensor_type for name, t in tensors.items()}
    assert kinds["blk.0.attn_q.weight"] == gguf.GGMLQuantizationType.Q4_1
    assert kinds["blk.0.ffn_down.weight"] == gguf.GGMLQuantizationType.Q4_1
    assert kinds["token_embd.weight"] == gguf.GGMLQuantizationType.Q8_0  # the tied LM head keeps 8 bits
    assert kinds["blk.0.attn_norm.weight"] == gguf.GGMLQuantizationType.F32
    reader = gguf.GGUFReader(out / "model.q4_1.gguf")
    assert reader.get_field("general.file_type").contents() == gguf.LlamaFileType.MOSTLY_Q4_1
    assert "im_start" in reader.get_field("tokenizer.chat_template").contents()
    # the quantized weights are the merged weights, rounded
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(out, gguf_file="model.q4_1.gguf", dtype=torch.float32)
    assert model.config.tie_word_embeddings and model.lm_head.weight is model.model.embed_tokens.weight


def test_hf_and_peft_exports_pass_parity(run, tmp_path):
    tunesmith("export", run, "--to", "hf", "--quant", "f32", "--out", tmp_path / "hf", *FAST)
    hf = json.loads((tmp_path / "hf" / "parity.json").read_text())
    assert hf["passed"] and hf["results"][0]["identical"] == 4
    assert (tmp_path / "hf" / "model.safetensors").exists() and (tmp_path / "hf" / "chat_template.jinja").exists()

    tunesmith("export", run, "--to", "peft", "--out", tmp_path / "peft", *FAST)
    manifest = json.loads((tmp_path / "peft" / "export.json").read_text())
    assert manifest["vllm_ray_problems"] == [] and manifest["peft_type"] == "LORA"
    assert json.loads((tmp_path / "peft" / "parity.json").read_text())["passed"]
    assert not any(p.suffix == ".bin" for p in (tmp_path / "peft").iterdir())


def test_export_refuses_clearly(run, tmp_path):
    bad = tunesmith("export", run, "--to", "gguf", "--quant", "q3_weird", check=False)
    assert bad.returncode == 2 and "unknown GGUF quantization q3_weird" in bad.stderr and "Traceback" not in bad.stderr
    bad = tunesmith("export", run, "--to", "onnx", check=False)
    assert bad.returncode == 2 and "--to must be one of hf, peft, gguf, ollama" in bad.stderr


@pytest.mark.skipif(__import__("importlib").util.find_spec("llama_cpp") is None,
                    reason="llama-cpp-python not installed (make llamacpp)")
def test_gguf_parity_through_llama_cpp(run, tmp_path):
    out = tmp_path / "gguf"
    proc = tunesmith("export", run, "--to", "gguf", "--quant", "f16", "--out", out, "--backend", "llama.cpp", *FAST,
                     check=False)
    parity = json.loads((out / "parity.json").read_text())
    assert parity["results"][0]["backend"] == "llama.cpp" and proc.returncode in (0, 1)
