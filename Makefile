# m2ugen — `make demo` and `make test` work on a fresh machine (they run `setup` first).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.m2ugen-installed
export TOKENIZERS_PARALLELISM ?= false

.PHONY: setup test demo lint examples clean

setup: $(STAMP)

# Re-installs only when requirements.txt or pyproject.toml change.
$(STAMP): requirements.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.txt
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

# ruff, then the suite (STYLE.md §15: one entry point for checks)
test: setup
	$(BIN)/ruff check .
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q

examples: setup
	$(BIN)/python examples/make_examples.py

# the chat app on the tiny offline model at http://127.0.0.1:7860 (MODEL=DIR for real weights)
MODEL ?= tiny
demo: setup examples
	$(BIN)/python gradio_app.py --model $(MODEL)

lint: setup
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) ckpts/tiny ckpts/tiny-audioldm2 .pytest_cache
