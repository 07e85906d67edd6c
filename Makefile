# charnn developer commands. Everything installs into .venv; torch's CPU wheel is pinned
# first because an unpinned torch pulls a multi-GB CUDA build.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
TORCH  ?= torch==2.13.0
STAMP  := $(VENV)/.installed

.PHONY: setup demo test wheel-check lint readme bench bench-quality clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install --quiet "$(TORCH)"
	$(PY) -m pip install --quiet -e ".[dev,plot]"
	@touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/charnn train --time 60s --out checkpoints/demo --force
	$(VENV)/bin/charnn sample -c checkpoints/demo --temp 0.8 --length 600 --seed 1 --prime "The "
	@echo

test: $(STAMP)
	@sh tests/ensure_chromium.sh
	$(PY) -m pytest -q

# The wheel as users get it: built, installed (not editable) into a fresh venv, smoke-tested.
wheel-check: $(STAMP)
	PYTHON=$(PYTHON) TORCH="$(TORCH)" BUILD_PY=$(PY) sh -c .ci/wheel-smoke

lint: $(STAMP)
	$(VENV)/bin/ruff check charnn tests benchmarks
	$(VENV)/bin/ruff format --check charnn tests benchmarks
	$(VENV)/bin/mypy

# The option tables of docs/usage.md are generated from the commands (see charnn/docs.py).
readme: $(STAMP)
	$(PY) -m charnn.docs docs/usage.md docs/environment.md

bench: $(STAMP)
	$(PY) benchmarks/sample_speed.py
	$(PY) benchmarks/train_speed.py
	$(PY) benchmarks/memory.py

# Minutes per budget and contender: not part of `make bench`.
bench-quality: $(STAMP)
	$(PY) benchmarks/quality.py --budgets 85s,5m,20m --json quality.json

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache .hypothesis
