# Two commands on a fresh machine: `make demo` and `make test`. Everything else is set up on the way.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# torch is pinned and installed first so no later step pulls a multi-GB CUDA build. Elsewhere, pick the CPU
# build explicitly, e.g.  make demo TORCH_PIP_ARGS="--index-url https://download.pytorch.org/whl/cpu"
TORCH_VERSION ?= 2.13.0
TORCH_PIP_ARGS ?=

.PHONY: install demo test bench clean

$(VENV)/.installed: setup.py requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==$(TORCH_VERSION) $(TORCH_PIP_ARGS)
	$(PY) -m pip install -q -r requirements-dev.txt -e .
	touch $@

install: $(VENV)/.installed

demo: install
	$(PY) -m pipelines.demo

test: install
	$(PY) -m pytest -q tests

bench: install
	$(PY) -m benchmarks.run
	$(PY) -m benchmarks.nomic_api

clean:
	rm -rf $(VENV) demo-output *.egg-info
