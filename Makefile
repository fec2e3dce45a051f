# The two commands a new user needs: `make run` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
CONFIG ?= cas.toml
STAMP  := $(VENV)/.installed

.PHONY: run test lint typecheck unit integration install clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

## Run a self-provisioned development CAS (simulated platform) from ./cas.toml and ./.cas/,
## creating them if missing (scripts/dev-cas).
run: $(STAMP)
	@BIN=$(BIN) CONFIG=$(CONFIG) bash scripts/dev-cas

## Lint, format check, strict typing and the whole test suite (PostgreSQL started if need be).
test: $(STAMP)
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/mypy --strict src
	$(BIN)/mypy --strict benchmarks
	@bash scripts/ensure-postgres
	$(BIN)/pytest -n auto tests

clean:
	rm -rf $(VENV) build dist src/*.egg-info .mypy_cache .pytest_cache .ruff_cache
