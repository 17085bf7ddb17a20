# Two commands on a fresh machine: `make demo` and `make test`. Everything else is set up on the way.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# torch is pinned and installed first so no later step pulls a multi-GB CUDA build. Elsewhere, pick the CPU
# build explicitly, e.g.  make demo TORCH_PIP_ARGS="--index-url https://download.pytorch.org/whl/cpu"
TORCH_VERSION ?= 2.13.0
TORCH_PIP_ARGS ?=

.PHONY: install demo test test-fast test-newest test-lowest lint bench devsets accuracy clean

$(VENV)/.installed: setup.py requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==$(TORCH_VERSION) $(TORCH_PIP_ARGS)
	$(PY) -m pip install -q -r requirements-dev.txt -e .
	# Only foolbox's bundled dev images are used, not its code: its own dependencies are not needed.
	$(PY) -m pip install -q --no-deps foolbox==3.3.4
	touch $@

install: $(VENV)/.installed

demo: install
	$(PY) -m pipelines.demo

test: install
	$(PY) -m pytest -q tests benchmarks/tests

# The tests that need no subprocess job, browser, portable runner, bucket server, clean venv or scale: minutes less.
test-fast: install
	$(PY) -m pytest -q -m "not slow" tests benchmarks/tests

# The two other ends of what setup.py allows, each in a clean venv (.venv-newest, .venv-lowest): the newest releases
# it allows today, and the lowest (uv's --resolution lowest-direct). Each installs the wheel with every extra, labels
# the sample photos with the installed command and runs the fast suite; a failure's last line names the release
# that breaks it. `make test` runs the pinned set above.
test-newest: install
	$(PY) -m tests.allowed_versions newest --venv $(VENV)-newest

test-lowest: install
	$(PY) -m tests.allowed_versions lowest --venv $(VENV)-lowest

lint: install
	$(PY) -m ruff check .

bench: install
	$(PY) -m benchmarks.run
	$(PY) -m benchmarks.reuse
	$(PY) -m benchmarks.nomic_api
	$(PY) -m benchmarks.buckets
	$(PY) -m benchmarks.resume
	$(PY) -m benchmarks.install
	$(PY) -m benchmarks.hf_real_size
	$(PY) -m benchmarks.hf_real_size --images 3000 --no_labels --models clip-vit-b32
	$(PY) -m benchmarks.index

# Three dev sources come from outside PyPI: Debian's openclipart-png (as root), Debian's opencv-doc (fetched once
# with `apt-get download` into devsets/.cache, no root) and the npm package emoji-datasource-google (fetched once
# with `npm pack` into devsets/.cache).
devsets: install
	@test -d /usr/share/openclipart/png || apt-get install -y -q openclipart-png || \
		{ echo "error: install Debian's openclipart-png (sudo apt-get install openclipart-png)"; exit 2; }
	$(PY) -m testbed.devsets

accuracy: devsets
	$(PY) -m benchmarks.accuracy
	$(PY) -m benchmarks.class_mass
	$(PY) -m benchmarks.topics
	$(PY) -m benchmarks.examples
	$(PY) -m benchmarks.weak_evidence
	$(PY) -m benchmarks.held_out

clean:
	rm -rf $(VENV) $(VENV)-newest $(VENV)-lowest demo-output bench-output devsets eval-output *.egg-info build dist
