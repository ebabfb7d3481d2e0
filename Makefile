# Two entry points, both from a fresh clone: `make demo` (the main job on the bundled sample)
# and `make test` (the test suite). Both install everything they need into .venv first.
VENV ?= .venv
PY := $(VENV)/bin/python
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

# torch's CPU build goes in first: an unpinned torch would pull several GB of CUDA wheels.
# Installs are quiet (-q, no pip version check); the build below prints its own progress.
PIP := $(VENV)/bin/pip --disable-pip-version-check
$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip "setuptools>=77"
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e '.[test,ray]'  # ray: tests/test_ray_engine.py
	@touch $@

install: $(VENV)/.installed

demo: $(VENV)/.installed
	$(VENV)/bin/nvdata build --recipe stage2 --sample --out nvdata-out/stage2

test: $(VENV)/.installed
	$(PY) -m pytest -q

.PHONY: install demo test
