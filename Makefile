# Two commands do all set-up on a fresh machine: `make serve` and `make test`.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: serve test check unit install bench clean

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade "pip==24.3.1"
	$(PY) -m pip install --quiet -e ".[dev]"
	@touch $(STAMP)

install: $(STAMP)

serve: $(STAMP)
	$(VENV)/bin/chat-engine serve

check: $(STAMP)
	$(VENV)/bin/ruff check engine gateway persistence bench tests
	$(VENV)/bin/ruff format --check engine gateway persistence bench tests
	$(VENV)/bin/mypy engine persistence gateway

unit: $(STAMP)
	$(PY) -m pytest

test: check unit

bench: $(STAMP)
	$(PY) -m bench http

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
