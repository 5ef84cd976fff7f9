# Two commands on a fresh machine: `make run` and `make test`. Each sets itself up.
.PHONY: setup run test bench soak clean firmware flash unix32 test32

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

# The ESP32 firmware (docs/technician.md). `make firmware` needs ESP-IDF and the
# MicroPython source, and says what to install when they are missing.
BOARD ?= IRONCLAD_ESP32
VARIANT ?= production
firmware: setup
	$(PY) -m ictl firmware build --board $(BOARD) --variant $(VARIANT) --trust "$(TRUST)" $(if $(MICROPY_DIR),--micropython $(MICROPY_DIR)) $(if $(KEY),--key $(KEY))

flash: setup
	@test -n "$(PORT)" || { echo "usage: make flash PORT=/dev/ttyUSB0 [BOARD=...] [VARIANT=...] [APP=image.bin]" >&2; exit 2; }
	$(PY) -m ictl firmware flash --board $(BOARD) --variant $(VARIANT) --port $(PORT) $(if $(APP),--app $(APP))

# Optional (docs/unix32.md): the unix port built 32-bit with the ESP32's number
# formats, from the MicroPython source in MICROPY_DIR, and the tests run on it
# (IRONCLAD_MICROPYTHON). Says what to install when something is missing.
# `make test` never needs either.
unix32:
	@firmware/unix32/build.sh "$(MICROPY_DIR)"

test32: setup unix32
	IRONCLAD_MICROPYTHON=$(CURDIR)/build/unix32/micropython $(PY) -m pytest $(PYTEST_ARGS) $(or $(TESTS),tests)

clean:
	rm -rf build .pytest_cache
