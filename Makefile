# m2ugen — `make demo` and `make test` work on a fresh machine (they run `setup` first).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.m2ugen-installed
# the eval's melody transcriber; --no-deps: its requirements force tensorflow and numpy<2
# (requirements.txt holds what it needs instead: onnxruntime, mir_eval, pretty_midi, resampy)
BASIC_PITCH := basic-pitch==0.4.0
export TOKENIZERS_PARALLELISM ?= false
# built presets (tiny) live in the checkout's ckpts/ (elsewhere: ~/.cache/m2ugen/ckpts)
export M2UGEN_CKPTS ?= $(CURDIR)/ckpts

.PHONY: setup test demo lint examples clean

setup: $(STAMP)

# Re-installs only when requirements.txt or pyproject.toml change.
$(STAMP): requirements.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -r requirements.txt
	$(BIN)/python -m pip install --quiet --no-deps $(BASIC_PITCH)
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $(STAMP)

# ruff, then the suite (STYLE.md §15: one entry point for checks), one pytest-xdist worker
# per core (each with one torch thread, tests/conftest.py); a test file stays on one worker,
# so its module fixtures are built once. TEST_WORKERS=0 runs it in one process.
TEST_WORKERS ?= auto
test: setup
	$(BIN)/ruff check .
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile

examples: setup
	$(BIN)/python examples/make_examples.py

# the chat app at http://127.0.0.1:7860 on the tiny-trained preset (built into ckpts/ on
# first use: synthetic data + training, under 10 min on 2 CPU cores); MODEL=tiny for the instant
# random one, MODEL=DIR for real weights
MODEL ?= tiny-trained
demo: setup examples
	$(BIN)/python gradio_app.py --model $(MODEL)

lint: setup
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) ckpts/tiny ckpts/tiny-audioldm2 ckpts/tiny-trained .pytest_cache

# Mutation testing of the core modules with mutmut (tools/mutate.py; config in pyproject.toml
# [tool.mutmut]; work files in mutants/). Not part of `make test`: slow, run it on a quiet
# machine. MODULES="m2ugen/music.py m2ugen/modules/decoders/" for a subset; TESTS="tests/a.py ..."
# replaces the test selection for a quick trial; JOBS=N tests N mutants at once;
# MUTANTS="NAME ..." re-runs named mutants (e.g. survivors, after adding a test);
# SAMPLE=N runs N mutants per module drawn at random (SEED=S), with 95 % intervals.
# Results are cached in mutants/ (rm -rf mutants/ starts afresh). Measured: ~3400 mutants
# in the core modules, ~20 s each on 2 shared cores; a module takes minutes to hours.
MUTMUT_VERSION := 3.8.1
MUTMUT_STAMP := $(VENV)/.mutmut-$(MUTMUT_VERSION)
MODULES ?=
TESTS ?=
JOBS ?= 1
MUTANTS ?=
SAMPLE ?= 0
SEED ?= 0
.PHONY: mutate mutate-report

$(MUTMUT_STAMP): $(STAMP)
	$(BIN)/python -m pip install --quiet mutmut==$(MUTMUT_VERSION)
	touch $@

mutate: setup $(MUTMUT_STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python tools/mutate.py run --modules "$(MODULES)" \
		--tests "$(TESTS)" --jobs $(JOBS) --mutants "$(MUTANTS)" --sample $(SAMPLE) --seed $(SEED)

# the kill-rate table and survivors of the last run, without running anything
mutate-report: $(MUTMUT_STAMP)
	$(BIN)/python tools/mutate.py report --modules "$(MODULES)"
