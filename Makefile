# Two entry points for a fresh clone with only python3 and make: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint typecheck unit bench clean

$(STAMP): pyproject.toml
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
	bench/out/venv/bin/python -m pip install --quiet -e '.[fast]' -r bench/requirements.txt
	bench/out/venv/bin/python -m bench $(BENCH_ARGS)

clean:
	rm -rf $(VENV) logs .mypy_cache .pytest_cache .ruff_cache
