# Two commands on a fresh machine: `make run` and `make test`. Each sets itself up.
.PHONY: setup run test bench soak clean firmware flash

VENV := .venv
PY := $(VENV)/bin/python
export PYTHONPATH := $(CURDIR)/tools
# pytest-xdist: two workers on CI's two cores
PYTEST_ARGS ?= -n 2

setup:
	@tools/setup.sh

run: setup
	$(PY) -m ictl run $(ARGS)

test: setup
	$(PY) -m pytest $(PYTEST_ARGS) tests

bench: setup
	$(PY) -m ictl bench --out build/bench.json

soak: setup
	$(PY) -m ictl soak --out build/soak.json

clean:
	rm -rf build .pytest_cache
