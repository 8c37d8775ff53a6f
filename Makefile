# agentwatch — the two commands a newcomer needs:
#   make up     install everything into .venv and start the embedded stack with a simulated fleet
#   make test   install everything into .venv and run the whole test suite
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
BIN    := $(VENV)/bin

.PHONY: install compile up test bench lint clean browser

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

# The project's modules byte-compiled ahead: with PYTHONDONTWRITEBYTECODE=1 in the environment
# (usual in containers) every process would compile them again at each start, ~70 ms of the
# dataflow's start. A module edited since is compiled from its source, as always (timestamps).
compile: install
	$(BIN)/python -m compileall -q agentwatch api dataflows schemas sinks infra

up: compile
	$(BIN)/agentwatch up --simulate

test: compile browser
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/pytest -n 2 --dist loadfile

# The console's browser test (tests/test_console_browser.py) drives Debian's chromium: install
# it when it is missing (root, as here and in CI). If it cannot be, that test fails saying so.
browser:
	@test -x /usr/bin/chromium || (apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) || \
		echo "chromium could not be installed: tests/test_console_browser.py will fail" >&2

bench: compile
	$(BIN)/python bench/throughput.py

lint: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean:
	rm -rf $(VENV) var
