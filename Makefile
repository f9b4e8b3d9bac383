# Two commands do all set-up on a fresh machine: `make serve` and `make test`.
PYTHON ?= python3.11
# The suite also runs under 3.12 (`make test-py312`, which .ci/run calls) when one is
# found: PY312, else the first of python3.12 and pyenv's 3.12 that runs.
PY312 ?=
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: serve test check unit install bench clean test-py312 check-js test-js

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
	$(VENV)/bin/mypy engine persistence gateway chat_engine_client bench
	$(VENV)/bin/lint-imports

unit: $(STAMP)
	$(PY) -m pytest

test: check unit check-js test-js

# The JavaScript client (clients/js): typed with JSDoc, checked by TypeScript (pinned in
# clients/js/package-lock.json), and tested in Node >= 20 against a real server. Without
# node and npm (or with a Node older than 20) both say SKIPPED and pass, unless
# CHAT_ENGINE_REQUIRE_NODE=1 (CI sets it): then they fail.
NODE ?= node
NPM ?= npm
JS := clients/js
NODE_OK = $(NODE) -e 'process.exit(Number(process.versions.node.split(".")[0]) >= 20 ? 0 : 1)' 2>/dev/null
define js_missing
if [ "$$CHAT_ENGINE_REQUIRE_NODE" = 1 ]; then echo "$@: FAILED, $(1) and CHAT_ENGINE_REQUIRE_NODE=1"; exit 1; fi; \
echo "$@: SKIPPED, $(1)"; exit 0
endef

check-js:
	@if ! $(NODE_OK) || ! command -v $(NPM) >/dev/null 2>&1; then \
	  $(call js_missing,no node >= 20 and npm found); \
	fi; \
	set -e; cd $(JS); \
	if [ ! -f node_modules/.package-lock.json ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then \
	  $(NPM) ci --no-audit --no-fund --loglevel=error; \
	fi; \
	./node_modules/.bin/tsc -p tsconfig.json && echo "check-js: tsc --strict --checkJs clean"

test-js: $(STAMP)
	@if ! $(NODE_OK); then $(call js_missing,no node >= 20 found); fi; \
	$(NODE) --experimental-websocket --test $(JS)/test/*.test.js

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
