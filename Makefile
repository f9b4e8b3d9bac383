# Two commands do all set-up on a fresh machine: `make serve` and `make test`.
PYTHON ?= python3.11
# The suite also runs under 3.12 (`make test-py312`, which .ci/run calls) when one is
# found: PY312, else the first of python3.12 and pyenv's 3.12 that runs.
PY312 ?=
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: serve test check unit install bench clean test-py312

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade "pip==24.3.1"
	$(PY) -m pip install --quiet -e ".[dev]"
	@touch $(STAMP)

install: $(STAMP)

serve: $(STAMP)
	$(VENV)/bin/chat-engine serve

check: $(STAMP)
	$(VENV)/bin/ruff check engine gateway persistence bench tests chat_engine_client
	$(VENV)/bin/ruff format --check engine gateway persistence bench tests chat_engine_client
	$(VENV)/bin/mypy engine persistence gateway chat_engine_client
	$(VENV)/bin/lint-imports

unit: $(STAMP)
	$(PY) -m pytest

test: check unit

# The whole suite in a venv of its own (.venv312), on Python 3.12; skipped, saying so,
# when there is none.
test-py312:
	@py="$(PY312)"; \
	if [ -z "$$py" ]; then \
	  for candidate in python3.12 $(HOME)/.pyenv/versions/3.12*/bin/python; do \
	    if "$$candidate" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 12))' 2>/dev/null; \
	    then py="$$candidate"; break; fi; \
	  done; \
	fi; \
	if [ -z "$$py" ]; then echo "test-py312: SKIPPED, no Python 3.12 found (set PY312=/path/to/python3.12)"; exit 0; fi; \
	echo "test-py312: $$py"; \
	set -e; \
	test -x .venv312/bin/python || "$$py" -m venv .venv312; \
	.venv312/bin/python -m pip install --quiet --upgrade "pip==24.3.1"; \
	.venv312/bin/python -m pip install --quiet -e ".[dev]"; \
	.venv312/bin/python -m pytest

bench: $(STAMP)
	$(PY) -m bench http

clean:
	rm -rf $(VENV) .venv312 .pytest_cache .mypy_cache .ruff_cache
