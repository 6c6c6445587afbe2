# Two commands for a new user: `make serve` and `make test`. Both start from a fresh clone.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
HOST ?= 127.0.0.1
PORT ?= 8000
STORE ?= store
DEFAULT_MODEL ?= efficientnet-lite0
PYTEST_ARGS ?=
# Test workers: the suite takes ~36 min in one process on 2 cores, ~20 min on two.
PYTEST_WORKERS ?= 2

.PHONY: serve test lint typecheck store bench gallery clean

$(PY):
	@echo "creating $(VENV) (first time only)"
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

# The service plus the zoo extra (torch, only to export the pretrained default model once).
$(VENV)/.installed-serve: pyproject.toml | $(PY)
	@echo "installing cnnvis and the zoo extra into $(VENV) (a few minutes, first time only)"
	$(PY) -m pip install --quiet -e '.[zoo]'
	touch $@

# Everything for the test suite: reference libraries (pytorch-grad-cam, captum, onnx-ad), torchvision.
$(VENV)/.installed-dev: pyproject.toml | $(PY)
	@echo "installing cnnvis and the test dependencies into $(VENV) (first time only)"
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@ $(VENV)/.installed-serve

$(STORE)/$(DEFAULT_MODEL): | $(VENV)/.installed-serve
	$(VENV)/bin/cnnvis --store $(STORE) zoo add $(DEFAULT_MODEL)

store: $(VENV)/.installed-serve $(STORE)/$(DEFAULT_MODEL)

serve: store
	@echo "serving $(STORE) on http://$(HOST):$(PORT) (try: curl $(HOST):$(PORT)/v1/models)"
	$(VENV)/bin/cnnvis serve --host $(HOST) --port $(PORT) --store $(STORE)

# tests/ui drive Debian's Chromium through Playwright (Playwright's own browsers are never
# downloaded); installed once, when it is missing.
/usr/bin/chromium:
	apt-get install -y --no-install-recommends chromium || \
	  (apt-get update && apt-get install -y --no-install-recommends chromium)

test: $(VENV)/.installed-dev /usr/bin/chromium
	$(PY) -m pytest -n $(PYTEST_WORKERS) --dist loadfile $(PYTEST_ARGS)

lint: $(VENV)/.installed-dev
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: $(VENV)/.installed-dev
	$(VENV)/bin/mypy service schemas models_store

bench: $(VENV)/.installed-dev
	$(PY) bench/companion_bench.py

# docs/gallery.md and docs/gallery/: every method's default rendering on the sample photos
gallery: store
	$(PY) bench/gallery.py --store $(STORE)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache
