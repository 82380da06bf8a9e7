# The two set-up commands of the README: `make demo` and `make test`.
# Each creates the virtual environment (.venv) and installs what it needs on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/adstream demo

test: $(STAMP)
	$(BIN)/python -m pytest -ra

lint: $(STAMP)
	$(BIN)/ruff check pipeline workers schemas loadtest capacity clients/python tests
	$(BIN)/mypy --strict pipeline

clean:
	rm -rf $(VENV) build *.egg-info
