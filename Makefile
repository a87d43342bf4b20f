# `make train` and `make test` are all a new user needs; each sets up .venv first.
# `make test-fast` is the quick subset for the edit-test loop; `make test` runs everything.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Offline machines: make train SOURCE=../shared/data/cifar10-jpeg.tar.gz
SOURCE ?=
ARGS ?=

.PHONY: venv data train test test-fast lint format clean

venv: $(VENV)/.installed

$(VENV)/.installed: requirements.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements-dev.txt
	touch $@

data: venv
	$(BIN)/python data/download_data.py $(if $(SOURCE),--source $(SOURCE))

train: data
	$(BIN)/python train.py $(ARGS)

test: venv
	$(BIN)/python -m pytest $(ARGS)

# The tests not marked slow (tests/conftest.py says which are): a couple of minutes on a CPU.
test-fast: venv
	$(BIN)/python -m pytest -m "not slow" $(ARGS)

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: venv
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

clean:
	rm -rf .pytest_cache .ruff_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
