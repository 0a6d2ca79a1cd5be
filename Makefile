# Every target creates .venv itself, so a fresh machine needs only Python 3.11+.
#   make verify   the main job (installs the runtime only)
#   make test     lint, doctests and the test suite (installs the test extra)
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
RUNTIME := $(VENV)/.runtime-installed
TESTING := $(VENV)/.test-installed
DOCS := $(VENV)/.docs-installed
TORCH := torch==2.13.0
TORCH_CPU_INDEX := https://download.pytorch.org/whl/cpu
LINTED := src theory verify figures tests bench examples

.PHONY: install install-test verify test lint figures bench docs clean

install: $(RUNTIME)

$(RUNTIME): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e .
	touch $@

# The test extra's torch is the CPU build: taken from the PyTorch CPU index when it answers,
# otherwise from whatever pip is configured with (see README, "Set-up").
install-test: $(TESTING)

$(TESTING): $(RUNTIME)
	@if $(BIN)/python -c "import urllib.request as u; u.urlopen('$(TORCH_CPU_INDEX)/torch/', timeout=5)" 2>/dev/null; then \
	  echo "installing $(TORCH) (CPU build) from $(TORCH_CPU_INDEX)"; \
	  $(BIN)/pip install -q $(TORCH) --index-url $(TORCH_CPU_INDEX); \
	else \
	  echo "PyTorch CPU index not reachable: installing $(TORCH) with pip's own configuration"; \
	  $(BIN)/pip install -q $(TORCH); \
	fi
	$(BIN)/pip install -q -e '.[test]'
	touch $@

verify: install
	$(BIN)/nondecoupling verify --out results

lint: install-test
	$(BIN)/ruff check --no-cache $(LINTED)

test: install-test lint
	$(BIN)/python -m pytest -q -n 2

figures: install
	$(BIN)/nondecoupling figures --out figures/out

bench: install-test
	$(BIN)/python -m bench

docs: $(DOCS)
	$(BIN)/mkdocs build --strict --site-dir site

$(DOCS): $(RUNTIME)
	$(BIN)/pip install -q -e '.[docs]'
	touch $@

clean:
	rm -rf $(VENV) results figures/out site
