# Two entry points for a fresh clone with only python3 and make: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# the extras a user can install, all of them; what only contributors need is pyproject's `dev` group
EXTRAS := pytest,prometheus,otel
# a venv made by another Python, in another directory (its scripts start the Python there: a moved or
# copied clone) or whose Python is gone is recreated, not left failing until `make clean`
PY_VERSION := import sys; print("%d.%d" % sys.version_info[:2])
WANT_PY := $(shell $(PYTHON) -c '$(PY_VERSION)' 2>/dev/null)
VENV_PY := $(shell $(BIN)/python -c '$(PY_VERSION)' 2>/dev/null)
MADE_IN := $(filter-out $(CURDIR),$(shell cat $(STAMP) 2>/dev/null))
comma := ,
STALE_WHY := $(if $(VENV_PY),$(if $(filter-out $(WANT_PY),$(VENV_PY)),was made by Python $(VENV_PY)$(comma) \
	not $(PYTHON) ($(WANT_PY)),$(if $(MADE_IN),was made in $(MADE_IN))),$(if $(wildcard $(VENV)),has no working Python))
STALE_VENV := $(and $(WANT_PY),$(STALE_WHY))

.PHONY: demo test test-python test-compat test-min lint typecheck unit bench clean FORCE

$(STAMP): pyproject.toml $(if $(STALE_VENV),FORCE)
	@case "$(WANT_PY)" in 3.1[1-9]|3.[2-9][0-9]) ;; *) \
		echo "llm-ledger needs Python 3.11 or newer; $(PYTHON) is $(or $(WANT_PY),not found):" \
			"run make PYTHON=python3.12 (or another python3 of 3.11 or newer)"; exit 1;; esac
	@if [ -n "$(STALE_VENV)" ]; then \
		echo "$(VENV) $(STALE_WHY): recreating it"; \
		rm -rf $(VENV); fi
	@# a venv whose making was interrupted (Ctrl-C while venv installs pip) has a Python and no pip
	$(BIN)/python -m pip --version >/dev/null 2>&1 || $(PYTHON) -m venv --clear $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[$(EXTRAS)]' --group dev
	echo '$(CURDIR)' > $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m examples.lens_app $(DEMO_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

# three workers on two cores: many tests wait on a server, a subprocess or a scrape, not on a core, and
# a third worker fills those waits (docs/DEVELOPMENT.md says how long make test takes).
# Bytecode is written even where PYTHONDONTWRITEBYTECODE is set (the files are git-ignored): without
# it every worker and every Python a test starts compiles llm_ledger and rewrites the test modules
# again
unit: $(STAMP)
	PYTHONDONTWRITEBYTECODE= $(BIN)/pytest -n 3 --dist worksteal --llm-budget --llm-strict

# mypy runs beside the tests: they leave the cores idle now and then (servers starting, processes
# waiting on each other), which mypy's cold run on a fresh clone fills; either failing fails the target
test: lint
	$(MAKE) --no-print-directory -j2 typecheck unit

# The whole of make test on the other Pythons that requires-python accepts, one venv each (.venv-python/3.N),
# for whoever changes what a Python version may change (run before a release; not in .ci/run, whose time
# it would double): PYTHONS names them, e.g. make test-python PYTHONS=~/.pyenv/versions/3.13.0/bin/python3.13;
# one that does not run is skipped, saying so, and none at all is an error. mypy checks there as that
# Python too (pyproject's python_version, the oldest accepted, leaves the branches for newer ones unchecked)
PYTHONS ?= python3.12 python3.13
test-python:
	@ran=; for py in $(PYTHONS); do \
		v=$$($$py -c '$(PY_VERSION)' 2>/dev/null) || { echo "test-python: $$py does not run: skipped"; continue; }; \
		echo "test-python: Python $$v ($$py)"; \
		$(MAKE) --no-print-directory test PYTHON=$$py VENV=.venv-python/$$v || exit 1; ran=1; \
		.venv-python/$$v/bin/mypy --python-version $$v || exit 1; done; \
		[ -n "$$ran" ] || { echo "test-python: none of $(PYTHONS) runs; name them: make test-python PYTHONS=..."; exit 1; }

# The SDK majors besides the one `make test` runs on (the latest 3.x): one venv each, pinned to the
# latest release of that major, running the core and plugin suites (tests marked sdk3 need openai 3.x
# and are deselected there, those marked sdk2 on 1.x, each says why; tests marked sdk_independent never touch the SDK and run
# once, in `make test`). The integration tests with the libraries people build on
# (tests/integration/test_<name>.py) run in the venv of a major each library installs with.
COMPAT := .venv-compat
OPENAI_1 := 1.109.1
OPENAI_2 := 2.54.0
OPENAI_3 := 3.63.0
LIBS_1 := llama_index
LIBS_2 := langchain_openai litellm instructor llama_index
LIBS_3 := langchain_openai openai_agents pydantic_ai litellm

$(COMPAT)/openai%/.installed: pyproject.toml
	$(COMPAT)/openai$*/bin/python -m pip --version >/dev/null 2>&1 || $(PYTHON) -m venv --clear $(COMPAT)/openai$*
	$(COMPAT)/openai$*/bin/python -m pip install --quiet --upgrade pip
	$(COMPAT)/openai$*/bin/python -m pip install --quiet -e '.[$(EXTRAS)]' --group dev --group compat-openai$* \
		'openai==$(OPENAI_$*)'
	touch $@

test-compat: $(COMPAT)/openai1/.installed $(COMPAT)/openai2/.installed $(COMPAT)/openai3/.installed
	LEDGER_INTEGRATION='$(LIBS_1)' $(COMPAT)/openai1/bin/pytest -n 2 --dist worksteal -q -m 'not sdk2 and not sdk3 and not sdk_independent'
	LEDGER_INTEGRATION='$(LIBS_2)' $(COMPAT)/openai2/bin/pytest -n 2 --dist worksteal -q -m 'not sdk3 and not sdk_independent'
	LEDGER_INTEGRATION='$(LIBS_3)' $(COMPAT)/openai3/bin/pytest -n 2 --dist worksteal -q tests/integration

# The oldest versions pyproject.toml allows, as a lock file pinning them gets: every dependency and
# extra at its floor (each `>=X` installed as `==X`, openai 1.109.1 among them; what they bring in at its
# newest), with the dev group's test tools at versions that go with them, in .venv-min; then the whole
# suite but the tests that need openai 2.x or 3.x (sdk2, sdk3) and OpenTelemetry's openai-v2 instrumentation (it
# needs a newer OpenTelemetry than the floor). Run it after raising a floor or using something new of
# a dependency; not in .ci/run (the suite again: 2.5 minutes on two cores, the venv made).
MIN := .venv-min
define FLOORS
import re, tomllib
toml = tomllib.load(open("pyproject.toml", "rb"))
needs = toml["project"]["dependencies"] + sum(toml["project"]["optional-dependencies"].values(), [])
for need in needs:
    name, floor = re.fullmatch(r"([\w.-]+)(?:\[.*\])?>=([\w.]+).*", need.split(";")[0].strip()).groups()
    print(f"{name}=={floor}")
newer = ("opentelemetry-instrumentation-openai-v2", "opentelemetry-util-genai", "ruff", "mypy", "types-")
print(*(tool for tool in toml["dependency-groups"]["dev"] if not tool.startswith(newer)), sep="\n")
endef
export FLOORS

$(MIN)/.installed: pyproject.toml
	$(MIN)/bin/python -m pip --version >/dev/null 2>&1 || $(PYTHON) -m venv --clear $(MIN)
	$(MIN)/bin/python -m pip install --quiet --upgrade pip
	$(MIN)/bin/python -c "$$FLOORS" > $(MIN)/floors.txt
	$(MIN)/bin/python -m pip install --quiet -e '.[$(EXTRAS)]' -r $(MIN)/floors.txt
	touch $@

test-min: $(MIN)/.installed
	$(MIN)/bin/pytest -n 2 --dist worksteal -q -m 'not sdk2 and not sdk3' --ignore tests/test_exporters_openai_v2.py

bench: $(STAMP)
	# peers get a venv of their own (git-ignored bench/out/venv): they must never reach the test venv
	bench/out/venv/bin/python -m pip --version >/dev/null 2>&1 || $(PYTHON) -m venv --clear bench/out/venv
	bench/out/venv/bin/python -m pip install --quiet --upgrade pip
	bench/out/venv/bin/python -m pip install --quiet -e '.[$(EXTRAS)]' -r bench/requirements.txt
	bench/out/venv/bin/python -m bench $(BENCH_ARGS)

# the demo's database goes with its log: `--costs` then still sums what `llm-ledger report logs` does
clean:
	rm -rf $(VENV) $(COMPAT) $(MIN) .venv-python logs lens_app.sqlite3 .mypy_cache .pytest_cache .ruff_cache
