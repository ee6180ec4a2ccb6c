# Everything bootstraps itself from the lock file: a machine needs only python3 (>= 3.11) and make.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
INSTALLED := $(VENV)/.installed
HOST ?= 127.0.0.1
PORT ?= 5006

.PHONY: install test test-fast app bench lock clean

install: $(INSTALLED)

$(INSTALLED): requirements.lock pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -r requirements.lock
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
	touch $(INSTALLED)

test: $(INSTALLED)
	$(BIN)/python -m pytest -q

test-fast: $(INSTALLED)
	$(BIN)/python -m pytest -q -m "not slow"

app: $(INSTALLED)
	$(BIN)/panel serve app/ --address $(HOST) --port $(PORT) \
		--allow-websocket-origin=$(HOST):$(PORT) --allow-websocket-origin=localhost:$(PORT)

bench: $(INSTALLED)
	$(BIN)/python bench/potential.py
	$(BIN)/python bench/md.py

# Re-pin every dependency (run after changing pyproject.toml; commit the result).
lock: $(INSTALLED)
	$(BIN)/python -m uv pip compile pyproject.toml --extra dev --python-version 3.11 \
		--output-file requirements.lock --no-header --quiet

clean:
	rm -rf $(VENV) .pytest_cache
