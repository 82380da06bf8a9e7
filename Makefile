# The two set-up commands of the README: `make demo` and `make test`.
# Each creates the virtual environment (.venv) and installs what it needs on first use.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint clean kustomize

# kustomize renders deploy/kubernetes in tests/test_kubernetes.py: built once from the Go
# module proxy with the machine's Go into ~/.cache/adstream/tools (a few minutes), then offline.
KUSTOMIZE_VERSION := v5.8.1
KUSTOMIZE := $(HOME)/.cache/adstream/tools/kustomize-$(KUSTOMIZE_VERSION)/kustomize
GO ?= $(or $(shell command -v go 2>/dev/null),/usr/local/go/bin/go)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/adstream demo

test: $(STAMP) $(KUSTOMIZE) lint
	scripts/debian-packages
	ADSTREAM_KUSTOMIZE=$(KUSTOMIZE) $(BIN)/python -m pytest -ra --durations=25

lint: $(STAMP)
	$(BIN)/ruff check pipeline workers schemas loadtest tools capacity clients/python tests
	$(BIN)/mypy --strict pipeline
	$(BIN)/mypy --strict --follow-imports=silent workers
	$(BIN)/mypy --strict --follow-imports=silent tools
	$(BIN)/mypy --strict --follow-imports=silent capacity
	$(BIN)/mypy --strict --follow-imports=silent loadtest
	$(BIN)/mypy --strict --follow-imports=silent clients/python/adstream_client
	$(BIN)/mypy --strict --follow-imports=silent schemas

$(KUSTOMIZE):
	@test -x $(GO) || { echo "make: kustomize is built with Go (go install), and there is no go on PATH or at $(GO)" >&2; exit 1; }
	GOTOOLCHAIN=local GOBIN=$(dir $(KUSTOMIZE)) $(GO) install sigs.k8s.io/kustomize/kustomize/v5@$(KUSTOMIZE_VERSION)

# prints the path of the kustomize binary, building it first when missing
kustomize: $(KUSTOMIZE)
	@echo $(KUSTOMIZE)

clean:
	rm -rf $(VENV) build *.egg-info
