PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
RUNTIME := $(VENV)/.installed-runtime
TESTDEPS := $(VENV)/.installed-test
FAST := $(VENV)/.installed-fast
BENCHDEPS := $(VENV)/.installed-bench

.PHONY: demo test bench lint install clean baseline

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# the demo needs only the package; the tests add pytest, hypothesis and the official SDKs
$(RUNTIME): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e .
	$(BIN)/python -m compileall -q runner
	touch $@

$(FAST): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e '.[fast]'
	$(BIN)/python -m compileall -q runner
	touch $@ $(RUNTIME)

$(BENCHDEPS): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e '.[bench]'
	$(BIN)/python -m compileall -q runner
	touch $@ $(RUNTIME) $(FAST)

$(TESTDEPS): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $@ $(RUNTIME) $(FAST)

install: $(RUNTIME)

# ends with the report table; the compare page of the four targets is written beside the run
demo: $(RUNTIME)
	id=demo-$$(date +%Y%m%d-%H%M%S); $(BIN)/dialogue-runner run scenarios/ \
	  -m mock -m mock-responses -m mock-gemini -m mock-anthropic --run-id $$id \
	  --html outputs/$$id/compare.html

test: $(TESTDEPS)
	$(BIN)/python -m pytest -q

bench: $(BENCHDEPS)
	$(BIN)/python -m compileall -q runner bench  # PYTHONDONTWRITEBYTECODE may be set: measure compiled code
	$(BIN)/python -m bench

lint: $(TESTDEPS)
	$(BIN)/ruff check runner tests bench
	$(BIN)/ruff format --check runner tests bench
	$(BIN)/mypy

# the stored run the CI workflow diffs against (.github/workflows/dialogue-regression.yml);
# refresh it, review `git diff .ci/baseline` and commit it when a change is meant.
# `make baseline TARGET=name` records another target; nothing of this machine is kept in it
TARGET ?= mock
baseline: $(RUNTIME)
	rm -rf .ci/baseline
	$(BIN)/dialogue-runner run scenarios/ -k tag:regression -m $(TARGET) -o .ci --run-id baseline --no-progress
	$(BIN)/python .ci/scrub_baseline.py .ci/baseline

clean:
	rm -rf $(VENV) build *.egg-info
