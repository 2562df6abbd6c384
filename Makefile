# The two commands a newcomer needs: `make demo` and `make test`. Both set up .venv first.
VENV ?= .venv
PY := $(VENV)/bin/python
SETUP_INPUTS := pyproject.toml requirements/ros.txt requirements/sim-assets.txt scripts/setup.sh scripts/apt_missing.sh

.PHONY: setup demo test lint bench clean
setup: $(VENV)/.ready

$(VENV)/.ready: $(SETUP_INPUTS)
	bash scripts/setup.sh $(VENV)
	touch $@

demo: setup
	$(PY) -m apprentice demo

test: setup
	$(PY) -m ruff check .
	$(PY) -m pytest

lint: setup
	$(PY) -m ruff check .

clean:
	rm -rf $(VENV) .pytest_cache
