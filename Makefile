# One entry point for people and CI. `make test` and `make demo` install what they need first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: setup test demo conformance bench clean

setup: $(VENV)/.installed

# Reinstall when the dependencies change. torch comes from the CPU wheel pinned by the
# machine (pip install torch==2.13.0) before anything that depends on it is resolved.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev]'
	touch $@

test: setup
	$(BIN)/python -m pytest -q

demo: setup
	$(BIN)/rlvr example

conformance: setup
	$(BIN)/python benchmarks/conformance.py --data ../shared/data/math_equiv.jsonl

bench: setup
	$(BIN)/python benchmarks/score_math.py --data ../shared/data

clean:
	rm -rf $(VENV) outputs .pytest_cache
