# Two entry points for a fresh clone with only python3 and make: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# a venv made by another Python (or whose Python is gone) is recreated, not left failing until `make clean`
PY_VERSION := import sys; print("%d.%d" % sys.version_info[:2])
WANT_PY := $(shell $(PYTHON) -c '$(PY_VERSION)' 2>/dev/null)
VENV_PY := $(shell $(BIN)/python -c '$(PY_VERSION)' 2>/dev/null)
STALE_VENV := $(and $(WANT_PY),$(if $(VENV_PY),$(filter-out $(WANT_PY),$(VENV_PY)),$(wildcard $(VENV))))
comma := ,
STALE_WHY := $(if $(VENV_PY),was made by Python $(VENV_PY)$(comma) not $(PYTHON) ($(WANT_PY)),has no working Python)

.PHONY: demo test lint typecheck unit bench clean FORCE

$(STAMP): pyproject.toml $(if $(STALE_VENV),FORCE)
	@if [ -n "$(STALE_VENV)" ]; then \
		echo "$(VENV) $(STALE_WHY): recreating it"; \
		rm -rf $(VENV); fi
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m examples.lens_app $(DEMO_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

unit: $(STAMP)
	$(BIN)/pytest -n 2 --llm-budget --llm-strict

test: lint typecheck unit

bench: $(STAMP)
	# peers get a venv of their own (git-ignored bench/out/venv): they must never reach the test venv
	test -x bench/out/venv/bin/python || $(PYTHON) -m venv bench/out/venv
	bench/out/venv/bin/python -m pip install --quiet --upgrade pip
	bench/out/venv/bin/python -m pip install --quiet -e . -r bench/requirements.txt
	bench/out/venv/bin/python -m bench $(BENCH_ARGS)

clean:
	rm -rf $(VENV) logs .mypy_cache .pytest_cache .ruff_cache
