# Two entry points, both from a fresh clone: `make demo` (the main job on the bundled sample)
# and `make test` (the test suite). Both install everything they need into .venv first.
VENV ?= .venv
PY := $(VENV)/bin/python
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip "setuptools>=77"
	# the CPU build first: an unpinned torch would pull several GB of CUDA wheels
	$(VENV)/bin/pip install -q torch==2.13.0
	$(VENV)/bin/pip install -q -e '.[test,ray]'  # ray: tests/test_ray_engine.py
	touch $@

install: $(VENV)/.installed

demo: $(VENV)/.installed
	$(VENV)/bin/nvdata build --recipe stage2 --sample --out nvdata-out/stage2

test: $(VENV)/.installed
	$(PY) -m pytest -q

.PHONY: install demo test
