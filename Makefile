# Every target creates .venv itself (make install), so a fresh machine needs only Python 3.11+.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install verify test figures bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

verify: install
	$(BIN)/nondecoupling verify --out results

test: install
	$(BIN)/python -m pytest -q

figures: install
	$(BIN)/nondecoupling figures --out figures/out

bench: install
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) results figures/out
